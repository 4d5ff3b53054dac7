"""One large artifact through the production path, beside a direct boto3 transfer of the same bytes to the same store.

The production path is what a user's MLflow client does against a stack whose artifacts
are in a bucket: `log_artifact` and `download_artifacts` through the HTTPS front door with
basic auth, the client's settings left at their defaults (under MLflow's 500 MB multipart
threshold a file goes through the server, which spools it and sends it on). The direct
transfer is boto3's `upload_file`/`download_file` (its default transfer settings) with the
stack's own key pair: what the store gives a client that talks to it itself. Both take
turns, `rounds` times each, so a burst of someone else's work lands on both alike.

The same file also goes up a third way each round: the client's multipart threshold lowered
below its size (MULTIPART_THRESHOLD), as it is by default for files of 500 MB and more, so it
goes up in 10 MB parts PUT straight to URLs the server presigns. That is what a large model
takes; the proxied upload is what a smaller file takes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from bench.load import Target
from bench.memory import peak_memory

_MIB = 1024 * 1024
_DIRECT_PREFIX = "bench-direct"
# MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE for the multipart upload: below any --transfer-mib.
MULTIPART_THRESHOLD = _MIB


@dataclass(frozen=True)
class TransferResult:
    mib: int
    rounds: int
    production_up_seconds: float
    production_down_seconds: float
    direct_up_seconds: float
    direct_down_seconds: float
    """Each the sum over the rounds."""
    server_memory_peak_mib: float
    production_multipart_up_seconds: float = 0.0
    """The production path's upload with the client's multipart threshold below the file's size."""

    def _mb_per_second(self, seconds: float) -> float:
        return self.mib * _MIB * self.rounds / 1e6 / seconds if seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "mib": self.mib,
            "rounds": self.rounds,
            "production_up_mb_per_second": round(self._mb_per_second(self.production_up_seconds), 1),
            "production_down_mb_per_second": round(self._mb_per_second(self.production_down_seconds), 1),
            "production_multipart_up_mb_per_second": round(
                self._mb_per_second(self.production_multipart_up_seconds), 1
            ),
            "direct_up_mb_per_second": round(self._mb_per_second(self.direct_up_seconds), 1),
            "direct_down_mb_per_second": round(self._mb_per_second(self.direct_down_seconds), 1),
            "server_memory_peak_mib": round(self.server_memory_peak_mib),
        }


def line(transfer: dict[str, float]) -> str:
    return (
        f"artifact transfer, {transfer['mib']:g} MiB x {transfer['rounds']:g}: production path "
        f"up {transfer['production_up_mb_per_second']:.1f} MB/s, down {transfer['production_down_mb_per_second']:.1f} "
        f"MB/s, up in parts {transfer['production_multipart_up_mb_per_second']:.1f} MB/s; "
        f"direct boto3 up {transfer['direct_up_mb_per_second']:.1f} MB/s, "
        f"down {transfer['direct_down_mb_per_second']:.1f} MB/s; "
        f"server memory peak {transfer['server_memory_peak_mib']:g} MiB"
    )


def _client_environment(target: Target) -> dict[str, str]:
    """The MLflow client's login and CA for the target, as the README tells users to set them."""
    values: dict[str, str] = {}
    if target.auth:
        values |= {"MLFLOW_TRACKING_USERNAME": target.auth[0], "MLFLOW_TRACKING_PASSWORD": target.auth[1]}
    if isinstance(target.verify, str):
        values["MLFLOW_TRACKING_SERVER_CERT_PATH"] = target.verify
    return values


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _timed(action: Any, *args: Any) -> tuple[float, Any]:
    started = time.monotonic()
    value = action(*args)
    return time.monotonic() - started, value


def measure(target: Target, store: Any, server: Any, directory: Path, mib: int, rounds: int) -> TransferResult:
    """`rounds` turns of: the production path up and down, then the direct transfer up and down.

    `store` is a tests.s3_store.S3Store (the bucket the stack's artifacts are in), `server` the
    stack's MLflow container. Every download must equal the upload's sha256.
    """
    from mlflow.tracking import MlflowClient  # the client processes of bench.load need none of MLflow

    artifact = directory / "artifact.bin"
    s3 = store.client()
    seconds = {"production_up": 0.0, "production_down": 0.0, "direct_up": 0.0, "direct_down": 0.0, "multipart": 0.0}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with artifact.open("wb") as handle:
            for _ in range(mib):
                handle.write(os.urandom(_MIB))
        expected = _sha256(artifact)
        with mock.patch.dict(os.environ, _client_environment(target)), peak_memory(server, interval=0.25) as peak:
            client = MlflowClient(target.tracking_uri)
            experiment_id = client.create_experiment(f"bench-transfer-{time.time_ns()}")
            for turn in range(rounds):
                run_id = client.create_run(experiment_id).info.run_id
                up, _ = _timed(client.log_artifact, run_id, str(artifact))
                down, local = _timed(client.download_artifacts, run_id, artifact.name, str(directory / f"p{turn}"))
                _check(Path(local), expected)
                key = f"{_DIRECT_PREFIX}/{turn}/{artifact.name}"
                direct_up, _ = _timed(s3.upload_file, str(artifact), store.bucket, key)
                copy = directory / f"d{turn}.bin"
                direct_down, _ = _timed(s3.download_file, store.bucket, key, str(copy))
                _check(copy, expected)
                with mock.patch.dict(
                    os.environ, {"MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(MULTIPART_THRESHOLD)}
                ):
                    parts_run = client.create_run(experiment_id).info.run_id
                    multipart, _ = _timed(client.log_artifact, parts_run, str(artifact))
                for name, value in zip(seconds, (up, down, direct_up, direct_down, multipart), strict=True):
                    seconds[name] += value
                # Only one copy on the disk at a time beside the original.
                shutil.rmtree(directory / f"p{turn}")
                copy.unlink()
        return TransferResult(
            mib,
            rounds,
            seconds["production_up"],
            seconds["production_down"],
            seconds["direct_up"],
            seconds["direct_down"],
            peak["mib"],
            seconds["multipart"],
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _check(downloaded: Path, expected: str) -> None:
    actual = _sha256(downloaded)
    if actual != expected:
        raise RuntimeError(f"{downloaded.name}: sha256 {actual} after the round trip, {expected} sent")
