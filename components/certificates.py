"""Checks on certificates and keys from config, with `cryptography`, before any resource.

A certificate that does not match its key, has expired or names another host would
deploy fine and then fail every client's handshake; here it stops `pulumi up` with
the config key to fix instead.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization


class CertificateError(ValueError):
    """What is wrong, in SettingsError's terms: the key, what to show of the value, what is accepted."""

    def __init__(self, key: str, shown: str, accepted: str) -> None:
        self.key = key
        self.shown = shown
        self.accepted = accepted
        super().__init__(f"{key}: {shown}; {accepted}")


def parse_certificates(pem: str, key: str = "acmeCaCertificate") -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; at least one."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as error:
        raise CertificateError(key, "<not PEM>", f"accepted: PEM certificates ({error})") from None
    return certificates


def _describe(certificate: x509.Certificate) -> str:
    return f"<certificate for {', '.join(covered_names(certificate)) or certificate.subject.rfc4514_string()}>"


def covered_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses in the subject alternative names (what clients check)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [str(name) for name in names.get_values_for_type(x509.DNSName)]
    ips = [str(address) for address in names.get_values_for_type(x509.IPAddress)]
    return dns + ips


def covers(certificate: x509.Certificate, host: str) -> bool:
    """RFC 6125 matching as clients do it: SANs only, a wildcard for exactly one left-most label."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for name in covered_names(certificate):
        if address is not None:
            if name == str(address):
                return True
            continue
        name, wanted = name.lower().rstrip("."), host.lower().rstrip(".")
        if name == wanted:
            return True
        if name.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == name[2:]:
            return True
    return False


def check_key_pair(certificate_pem: str, key_pem: str, host: str, now: datetime.datetime) -> None:
    """Raises CertificateError unless the chain parses, its leaf matches the key, is valid now and covers host."""
    leaf = parse_certificates(certificate_pem, "tlsCertificate")[0]
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as error:
        # The key is a secret: its value is never shown, only why it was refused.
        reason = "it is encrypted" if isinstance(error, TypeError) else "it does not parse"
        raise CertificateError(
            "tlsPrivateKey", "<hidden>", f"accepted: an unencrypted PEM private key ({reason})"
        ) from None
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertificateError(
            "tlsPrivateKey",
            "<hidden>",
            f"accepted: the private key of tlsCertificate's first certificate, {_describe(leaf)}",
        )
    if leaf.not_valid_after_utc <= now:
        raise CertificateError(
            "tlsCertificate",
            f"{_describe(leaf)} expired {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            "accepted: a certificate valid now",
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            "tlsCertificate",
            f"{_describe(leaf)} not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "accepted: a certificate valid now",
        )
    if not covers(leaf, host):
        raise CertificateError(
            "tlsCertificate",
            _describe(leaf),
            f"accepted: a certificate whose subject alternative names cover publicHost '{host}'",
        )
