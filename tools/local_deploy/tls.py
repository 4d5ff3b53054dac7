"""pulumi-tls's PrivateKey and SelfSignedCert, made with `cryptography`."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools.local_deploy.inputs import TLS_PRIVATE_KEY, whole
from tools.local_deploy.session import Session
from tools.mocks import secret

# pulumi-tls's usage names -> cryptography's KeyUsage arguments.
_KEY_USAGES = {
    "digital_signature": "digital_signature", "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment", "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement", "cert_signing": "key_cert_sign", "crl_signing": "crl_sign",
    "encipher_only": "encipher_only", "decipher_only": "decipher_only",
}  # fmt: skip
_EXTENDED_USAGES = {"server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH}
_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1}


def tls_private_key(inputs: Mapping[str, Any]) -> dict[str, str]:
    """pulumi-tls PrivateKey: ECDSA (ecdsaCurve, default P224) or RSA (rsaBits, default 2048)."""
    algorithm = inputs.get("algorithm")
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ECDSA":
        curve = _CURVES.get(inputs.get("ecdsaCurve") or "P224")
        if curve is None:
            raise ValueError(f"ecdsaCurve {inputs.get('ecdsaCurve')!r} is not one of {sorted(_CURVES)}")
        key = ec.generate_private_key(curve())
        traditional = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    elif algorithm == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=whole(inputs, "rsaBits", 2048))
        traditional = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    else:
        raise ValueError(f"algorithm {algorithm!r} is not implemented here (ECDSA, RSA)")
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "privateKeyPem": traditional.decode(),
        "privateKeyPemPkcs8": pkcs8.decode(),
        "publicKeyPem": public.decode(),
    }


def tls_self_signed_cert(inputs: Mapping[str, Any]) -> dict[str, str]:
    """pulumi-tls SelfSignedCert: the subject, usages, CA flags and validity it declares."""
    key = serialization.load_pem_private_key(str(inputs["privateKeyPem"]).encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("privateKeyPem must be an ECDSA or RSA key")
    subject = inputs.get("subject") or {}
    attributes = [
        x509.NameAttribute(oid, str(subject[name]))
        for name, oid in (("organization", NameOID.ORGANIZATION_NAME), ("commonName", NameOID.COMMON_NAME))
        if subject.get(name)
    ]
    name = x509.Name(attributes)
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(hours=whole(inputs, "validityPeriodHours", 0))
    uses = set(inputs.get("allowedUses") or [])
    unknown = uses - set(_KEY_USAGES) - set(_EXTENDED_USAGES)
    if unknown:
        raise ValueError(f"allowedUses {sorted(unknown)} are not implemented here")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(end)
    )
    is_ca = bool(inputs.get("isCaCertificate"))
    path_length = whole(inputs, "maxPathLength", 0) if is_ca and inputs.get("maxPathLength") is not None else None
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
    if uses & set(_KEY_USAGES):
        flags = {argument: usage in uses for usage, argument in _KEY_USAGES.items()}
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    if uses & set(_EXTENDED_USAGES):
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([oid for usage, oid in _EXTENDED_USAGES.items() if usage in uses]), critical=False
        )
    names: list[x509.GeneralName] = [x509.DNSName(str(dns)) for dns in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(str(ip))) for ip in inputs.get("ipAddresses") or []]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    return {
        "certPem": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "validityStartTime": now.isoformat(),
        "validityEndTime": end.isoformat(),
    }


def realise_tls(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """pulumi-tls's PrivateKey and SelfSignedCert, made with `cryptography`; kept while the inputs stay."""
    options = session.options(args)
    key = options.get("urn") or f"{args.typ}::{args.name}"
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    recorded = session.state.setdefault("tls", {}).get(key)
    if recorded is not None and recorded.get("inputs") == digest:
        outputs = recorded["outputs"]
    else:
        outputs = tls_private_key(inputs) if args.typ == TLS_PRIVATE_KEY else tls_self_signed_cert(inputs)
        entry = {"inputs": digest, "outputs": outputs, "protected": bool(options.get("protect"))}
        session.update_state(lambda state: state.setdefault("tls", {}).__setitem__(key, entry))
        session.event("generated", args.name)
    # As pulumi-tls's schema: private keys are secret outputs.
    return digest[:16], {
        name: secret(value) if name.startswith("privateKey") else value for name, value in outputs.items()
    }
