"""components/certificates.py at the edges of a certificate's validity."""

from __future__ import annotations

import datetime

import pytest

from components.certificates import CertificateError, check_key_pair
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
