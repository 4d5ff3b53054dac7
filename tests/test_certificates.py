"""components/certificates.py at the edges of a certificate's validity."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from components.certificates import CertificateError, check_key_pair, covered_names, covers
from tests.certs import self_signed

# Whole seconds: certificates carry no fractions, so the boundary is exact.
NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)


def test_a_certificate_valid_from_this_very_second_is_accepted() -> None:
    pair = self_signed(["mlflow.example.com"], valid_from=NOW)
    check_key_pair(pair.certificate, pair.key, "mlflow.example.com", NOW)


def test_a_certificate_not_valid_yet_is_refused_saying_from_when() -> None:
    pair = self_signed(["mlflow.example.com"], valid_from=NOW + datetime.timedelta(minutes=1))
    with pytest.raises(CertificateError) as refused:
        check_key_pair(pair.certificate, pair.key, "mlflow.example.com", NOW)
    assert (refused.value.key, refused.value.shown, refused.value.accepted) == (
        "tlsCertificate",
        "<certificate for mlflow.example.com> not valid before 2026-11-27 12:01 UTC",
        "accepted: a certificate valid now",
    )


def _certificate(names: list[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(self_signed(names).certificate.encode())


@pytest.mark.parametrize(
    ("names", "host", "covered"),
    [
        (["mlflow.example.com"], "mlflow.example.com", True),
        (["MLflow.Example.com"], "mlflow.example.COM", True),  # names compare case-insensitively
        (["mlflow.example.com."], "mlflow.example.com", True),  # a trailing dot is the same name
        (["mlflow.example.com"], "mlflow.example.com.", True),
        (["other.example.com", "mlflow.example.com"], "mlflow.example.com", True),  # any SAN
        (["*.example.com"], "mlflow.example.com", True),  # a wildcard covers one label
        (["*.example.com"], "a.mlflow.example.com", False),  # not two
        (["*.example.com"], "example.com", False),  # nor none
        (["mlflow.example.com"], "example.com", False),
        (["10.0.0.5"], "10.0.0.5", True),  # an IP SAN covers its address
        (["10.0.0.5", "10.0.0.6"], "10.0.0.6", True),  # not only the first
        (["::1"], "0:0:0:0:0:0:0:1", True),  # in any spelling
        (["10.0.0.5"], "10.0.0.6", False),
        (["10.0.0.5.example.com"], "10.0.0.5", False),  # an address is never matched as a name
    ],
)
def test_covers_matches_as_clients_do(names: list[str], host: str, covered: bool) -> None:
    assert covers(_certificate(names), host) is covered


def test_the_names_of_a_certificate_without_alternative_names() -> None:
    certificate = _certificate([])
    assert covered_names(certificate) == []
    assert not covers(certificate, "test")  # the subject's common name is not enough


def test_an_expired_certificate_is_refused_saying_when() -> None:
    pair = self_signed(["a.example.com", "10.0.0.5"], valid_from=NOW - datetime.timedelta(days=30))
    with pytest.raises(CertificateError) as refused:
        check_key_pair(pair.certificate, pair.key, "a.example.com", NOW)
    assert str(refused.value) == (
        "tlsCertificate: <certificate for a.example.com, 10.0.0.5> expired 2026-11-27 12:00 UTC; "
        "accepted: a certificate valid now"
    )


def test_a_certificate_valid_until_a_second_later_is_accepted() -> None:
    pair = self_signed(["a.example.com"], valid_from=NOW - datetime.timedelta(days=30, seconds=-1))
    check_key_pair(pair.certificate, pair.key, "a.example.com", NOW)


_NOT_A_KEY = "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"


def test_a_key_that_does_not_parse_is_refused_without_showing_it() -> None:
    pair = self_signed(["a.example.com"])
    with pytest.raises(CertificateError) as refused:
        check_key_pair(
            pair.certificate, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", "a", NOW
        )
    assert str(refused.value) == (
        "tlsPrivateKey: <hidden>; accepted: an unencrypted PEM private key (it does not parse)"
    )


def test_an_encrypted_key_is_refused_saying_so() -> None:
    pair = self_signed(["a.example.com"])
    key = serialization.load_pem_private_key(pair.key.encode(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
    with pytest.raises(CertificateError) as refused:
        check_key_pair(pair.certificate, encrypted, "a.example.com", NOW)
    assert str(refused.value) == "tlsPrivateKey: <hidden>; accepted: an unencrypted PEM private key (it is encrypted)"
