"""pulumi-tls's PrivateKey, SelfSignedCert, CertRequest and LocallySignedCert, made with `cryptography`.

Each follows the hashicorp tls provider (which pulumi-tls wraps) for the inputs it handles:
a certificate takes its subject and names from its own inputs (self-signed) or from the
request (locally signed), its usages from `allowedUses`, a random 128-bit serial, and,
below a CA with a subject key id, that id as its authority key id (as Go's x509 does).
"""

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

from tools.local_deploy.inputs import (
    TLS_CERT_REQUEST,
    TLS_LOCALLY_SIGNED_CERT,
    TLS_PRIVATE_KEY,
    TLS_SELF_SIGNED_CERT,
    whole,
)
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
_SUBJECT = (("organization", NameOID.ORGANIZATION_NAME), ("commonName", NameOID.COMMON_NAME))

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _now() -> datetime.datetime:
    """Whole seconds, as a certificate's validity holds them."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _rfc3339(moment: datetime.datetime) -> str:
    """The provider's validityStartTime and validityEndTime (Go's time.RFC3339, UTC)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(value: x509.Certificate | x509.CertificateSigningRequest) -> str:
    return value.public_bytes(serialization.Encoding.PEM).decode()


def tls_private_key(inputs: Mapping[str, Any]) -> dict[str, str]:
    """pulumi-tls PrivateKey: ECDSA (ecdsaCurve, default P224) or RSA (rsaBits, default 2048)."""
    algorithm = inputs.get("algorithm")
    key: PrivateKey
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


def _private_key(inputs: Mapping[str, Any], name: str) -> PrivateKey:
    key = serialization.load_pem_private_key(str(inputs[name]).encode(), password=None)
    if not isinstance(key, PrivateKey):
        raise ValueError(f"{name} must be an ECDSA or RSA key")
    return key


def _algorithm(key: PrivateKey) -> str:
    """The provider's keyAlgorithm / caKeyAlgorithm."""
    return "ECDSA" if isinstance(key, ec.EllipticCurvePrivateKey) else "RSA"


def _subject(inputs: Mapping[str, Any]) -> x509.Name:
    subject = inputs.get("subject") or {}
    return x509.Name([x509.NameAttribute(oid, str(subject[name])) for name, oid in _SUBJECT if subject.get(name)])


def _alt_names(inputs: Mapping[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(str(dns)) for dns in inputs.get("dnsNames") or []]
    return names + [x509.IPAddress(ipaddress.ip_address(str(ip))) for ip in inputs.get("ipAddresses") or []]


def _issue(
    inputs: Mapping[str, Any],
    subject: x509.Name,
    names: list[x509.GeneralName],
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Certificate | None,
    signer: PrivateKey,
) -> dict[str, Any]:
    """A certificate with the usages, CA flags and validity the inputs declare, signed by
    `signer`: self-signed without `issuer`, below it otherwise."""
    now = _now()
    end = now + datetime.timedelta(hours=whole(inputs, "validityPeriodHours", 0))
    uses = set(inputs.get("allowedUses") or [])
    unknown = uses - set(_KEY_USAGES) - set(_EXTENDED_USAGES)
    if unknown:
        raise ValueError(f"allowedUses {sorted(unknown)} are not implemented here")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)
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
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer is not None:
        try:
            issuer_key_id = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            pass
        else:
            authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key_id)
            builder = builder.add_extension(authority, critical=False)
    certificate = builder.sign(signer, hashes.SHA256())
    early = datetime.timedelta(hours=whole(inputs, "earlyRenewalHours", 0))
    return {
        "certPem": _pem(certificate),
        "validityStartTime": _rfc3339(now),
        "validityEndTime": _rfc3339(end),
        "readyForRenewal": now >= end - early,
    }


def tls_self_signed_cert(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """pulumi-tls SelfSignedCert: the subject, names, usages, CA flags and validity it declares."""
    key = _private_key(inputs, "privateKeyPem")
    return {
        **_issue(inputs, _subject(inputs), _alt_names(inputs), key.public_key(), None, key),
        "keyAlgorithm": _algorithm(key),
    }


def tls_cert_request(inputs: Mapping[str, Any]) -> dict[str, str]:
    """pulumi-tls CertRequest: a PKCS#10 request for the subject and names, signed by the key."""
    key = _private_key(inputs, "privateKeyPem")
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(inputs))
    names = _alt_names(inputs)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return {"certRequestPem": _pem(builder.sign(key, hashes.SHA256())), "keyAlgorithm": _algorithm(key)}


def tls_locally_signed_cert(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """pulumi-tls LocallySignedCert: the request's subject, names and public key, certified by the CA.

    As the provider: the CA's key must match its certificate; the request's own signature
    must hold; usages, CA flags and validity come from these inputs, never from the request.
    """
    request = x509.load_pem_x509_csr(str(inputs["certRequestPem"]).encode())
    if not request.is_signature_valid:
        raise ValueError("certRequestPem: the request's signature does not verify")
    ca_key = _private_key(inputs, "caPrivateKeyPem")
    ca_certificate = x509.load_pem_x509_certificate(str(inputs["caCertPem"]).encode())
    if ca_certificate.public_key() != ca_key.public_key():
        raise ValueError("caPrivateKeyPem and caCertPem do not match")
    public_key = request.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("certRequestPem must hold an ECDSA or RSA public key")
    try:
        names = list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    return {
        **_issue(inputs, request.subject, names, public_key, ca_certificate, ca_key),
        "caKeyAlgorithm": _algorithm(ca_key),
    }


_GENERATE: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    TLS_PRIVATE_KEY: tls_private_key,
    TLS_SELF_SIGNED_CERT: tls_self_signed_cert,
    TLS_CERT_REQUEST: tls_cert_request,
    TLS_LOCALLY_SIGNED_CERT: tls_locally_signed_cert,
}


def due_for_renewal(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """The provider's readyForRenewal at plan time: a certificate within `earlyRenewalHours` of its
    end (or past it) is replaced by the next `up`."""
    end = outputs.get("validityEndTime")
    if end is None:
        return False
    early = datetime.timedelta(hours=whole(inputs, "earlyRenewalHours", 0))
    return _now() >= datetime.datetime.fromisoformat(str(end)) - early


def realise_tls(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A pulumi-tls resource, made with `cryptography`; kept while the inputs stay and, for a
    certificate, until it is due for renewal."""
    options = session.options(args)
    key = options.get("urn") or f"{args.typ}::{args.name}"
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    recorded = session.state.setdefault("tls", {}).get(key)
    if recorded is not None and recorded.get("inputs") == digest and not due_for_renewal(recorded["outputs"], inputs):
        outputs = recorded["outputs"]
    else:
        outputs = _GENERATE[args.typ](inputs)
        entry = {"inputs": digest, "outputs": outputs, "protected": bool(options.get("protect"))}
        session.update_state(lambda state: state.setdefault("tls", {}).__setitem__(key, entry))
        session.event(
            "renewed" if recorded is not None and recorded.get("inputs") == digest else "generated", args.name
        )
    # As pulumi-tls's schema: private keys are secret outputs.
    return digest[:16], {
        name: secret(value) if name.startswith("privateKey") else value for name, value in outputs.items()
    }
