"""tests/load.py, the end-to-end tests' load tool, against an MLflow store in a local SQLite file (no server)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests import load


def test_the_retry_budgets_are_what_the_client_sleeps_between_retries() -> None:
    # urllib3 2.x: nothing before the first retry, then factor * 2**(n-1) capped at 120 s, plus up to `jitter` each.
    assert load.DEFAULT_RETRIES.budget() == 0 + 2 + 4 + 8 + 16 + 32 + 6 * 0.5
    assert load.MLFLOW_DEFAULTS.budget() == 0 + 4 + 8 + 16 + 32 + 64 + 120 + 7 * 1.0
    assert load.Retries(max_retries=3, backoff_factor=1, jitter=0.5, timeout=10).environment() == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }


def test_a_failed_write_is_failed_not_lost_and_an_acknowledged_write_not_stored_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = MlflowClient.log_metric

    def flaky(self: MlflowClient, run_id: str, key: str, value: float, **kwargs: Any) -> Any:
        if kwargs["step"] % 7 == 3:  # refused after the retries: an exception, nothing stored
            raise MlflowException("refused")
        if kwargs["step"] % 7 == 5:  # answered, yet not stored: what the tool exists to catch
            return None
        return original(self, run_id, key, value, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_metric", flaky)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    traffic = load.Load(f"sqlite:///{tmp_path}/mlflow.db", clients=2, pause=0.0, params_every=4)
    with traffic:
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "6"
        time.sleep(1.5)
    # The environment and urllib3's logger are as they were.
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert logging.getLogger("urllib3.connectionpool").propagate
    result = traffic.verify()

    assert (result.clients, result.retries, len(result.latencies)) == (2, 0, result.sent)
    assert result.seconds >= 1.5
    assert result.sent == result.acknowledged + len(result.failed)
    assert {error for _, _, error in result.failed} == {"MlflowException: refused"}
    for client in (0, 1):
        # Each client's metric steps run from 0 without a gap: exactly every 3 mod 7 failed, every 5 mod 7 lost.
        failed = [write for index, write, _ in result.failed if index == client]
        lost = [write for index, write in result.lost if index == client]
        assert {write.kind for write in failed + lost} == {"metric"}
        last = max(write.step for write in failed + lost)
        assert [write.step for write in failed] == [step for step in range(last + 1) if step % 7 == 3]
        assert [write.step for write in lost] == [step for step in range(last + 1) if step % 7 == 5]
        assert len(failed) >= 3


def test_the_release_probe_reports_the_order_of_releases_and_the_longest_outage() -> None:
    probe = load.ReleaseProbe("https://mlflow.example")
    assert probe.url == "https://mlflow.example/version"
    probe.answers = [
        load.Answer(0.0, "3.12.0"),
        load.Answer(0.25, "3.12.0"),
        load.Answer(0.5, None),
        load.Answer(3.0, None),
        load.Answer(7.5, "3.17.2"),
        load.Answer(7.75, None),
        load.Answer(8.5, "3.17.2"),
    ]
    assert probe.releases() == ["3.12.0", "3.17.2"]
    # From the last answer before the stop (0.25 s) to the first after it (7.5 s).
    assert probe.longest_outage() == 7.25
    probe.answers.append(load.Answer(9.0, "3.12.0"))
    # An old server answering again after the new one: the releases were not one after the other.
    assert probe.releases() == ["3.12.0", "3.17.2", "3.12.0"]
