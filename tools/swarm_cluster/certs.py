"""The registry's TLS: a CA made for one cluster's life, and the registry's certificate for its IP address.

TLS rather than `--insecure-registry`: the program's `imageRegistryCaCertificate` is exactly
this case (a private registry signed by its own CA), so the cluster exercises the path a
real deployment takes; and an insecure registry would also have to be added to the host
engine's daemon.json, which needs a restart of an engine other work shares. A CA in
/etc/docker/certs.d/<registry>/ca.crt is read by dockerd on every pull and push, no restart.
The CA's key is never written down: nobody can issue another certificate under it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for any test session, short enough that a forgotten CA is soon worthless.
_VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class RegistryTls:
    ca_certificate: str
    """PEM: what every engine that pulls or pushes trusts (and `imageRegistryCaCertificate`)."""
    certificate: str
    """PEM: the registry's certificate, for its IP address."""
    key: str
    """PEM (PKCS#8): the registry's private key."""


def registry_tls(registry_ip: str, *, now: datetime.datetime | None = None) -> RegistryTls:
    """A fresh CA and a server certificate signed by it for `registry_ip` (as an IP SAN: the
    nodes and the host reach the registry by address, so no name would verify)."""
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlflow-cluster registry CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registry_ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(registry_ip))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return RegistryTls(
        ca_certificate=ca.public_bytes(serialization.Encoding.PEM).decode(),
        certificate=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )
