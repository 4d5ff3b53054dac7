"""mlflow/move_artifacts.py against moto's S3: same keys, reruns skip, every object verified by sha256.

The end-to-end test (tests/test_e2e_move.py) runs it in the stack's image against SeaweedFS,
through scripts/move-artifacts.sh; here each promise is checked on its own, in milliseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.test_artifact_store_scripts import _load

# In the image the two files sit side by side and move_artifacts imports prepare_db by that name.
_load("prepare_db", "prepare_db.py", register=True)
move_artifacts = _load("move_artifacts", "move_artifacts.py", register=True)

BUCKET = "ml-artifacts"
PREFIX = "teams/prod"
# The server's layout in the volume: <experiment>/<run>/artifacts/<path>.
FILES = {
    "1/aaa/artifacts/model/weights.bin": b"w" * (3 * 1024 * 1024 + 17),
    "1/aaa/artifacts/model/MLmodel": b"flavors: {}\n",
    "1/bbb/artifacts/eval/predictions.csv": b"id,label\n1,0\n",
    "2/ccc/artifacts/notes.json": b"{}",
}


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """moto's S3 with one bucket; the key pair only in a shared-credentials file, as in the container."""
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(variable, raising=False)
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", f"s3://{BUCKET}/{PREFIX}")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def volume(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    for relative, content in FILES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    monkeypatch.setenv("ARTIFACTS_DIR", str(root))
    return root


def _bucket(store: Any) -> dict[str, str]:
    listed = store.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {item["Key"]: _sha256(store.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()) for item in listed}


def _totals(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line of totals, without its duration."""
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    return lines[0].rsplit(" in ", 1)[0]


def test_every_file_goes_to_the_same_relative_key_under_the_prefix(
    store: Any, volume: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert move_artifacts.main() == 0
    assert _bucket(store) == {f"{PREFIX}/{relative}": _sha256(content) for relative, content in FILES.items()}
    head = store.head_object(Bucket=BUCKET, Key=f"{PREFIX}/1/aaa/artifacts/model/weights.bin")
    assert head["Metadata"] == {"sha256": _sha256(FILES["1/aaa/artifacts/model/weights.bin"])}
    csv = store.head_object(Bucket=BUCKET, Key=f"{PREFIX}/1/bbb/artifacts/eval/predictions.csv")
    assert csv["ContentType"] == "text/csv"
    size = sum(len(content) for content in FILES.values()) / 2**20
    assert _totals(capsys) == (
        f"move-artifacts: 4 files ({size:.1f} MiB) in s3://{BUCKET}/{PREFIX}: 4 uploaded ({size:.1f} MiB), "
        "0 already there; 4 verified by sha256"
    )


def test_a_rerun_uploads_only_what_changed_or_is_new(
    store: Any, volume: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert move_artifacts.main() == 0
    capsys.readouterr()
    (volume / "2/ddd/artifacts/late.txt").parent.mkdir(parents=True)
    (volume / "2/ddd/artifacts/late.txt").write_bytes(b"logged between the passes")
    (volume / "2/ccc/artifacts/notes.json").write_bytes(b'{"rewritten": true}')
    uploaded: list[str] = []
    real_upload = move_artifacts.upload

    def recording(client: Any, bucket: str, artifact: Any) -> None:
        uploaded.append(artifact.key)
        real_upload(client, bucket, artifact)

    monkeypatch.setattr(move_artifacts, "upload", recording)
    assert move_artifacts.main() == 0
    assert sorted(uploaded) == [f"{PREFIX}/2/ccc/artifacts/notes.json", f"{PREFIX}/2/ddd/artifacts/late.txt"]
    assert _bucket(store)[f"{PREFIX}/2/ccc/artifacts/notes.json"] == _sha256(b'{"rewritten": true}')
    assert "5 files" in _totals(capsys)


def test_an_object_whose_bytes_differ_from_the_file_fails_the_move(
    store: Any, volume: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Recorded as the file's sha256, but other bytes (a damaged transfer, a tampered object): the rerun
    # skips the upload on the metadata, and only reading it back catches it.
    relative = "1/bbb/artifacts/eval/predictions.csv"
    damaged = b"id,label\n1,1\n"
    store.put_object(
        Bucket=BUCKET, Key=f"{PREFIX}/{relative}", Body=damaged, Metadata={"sha256": _sha256(FILES[relative])}
    )
    assert move_artifacts.main() == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"move-artifacts: verification failed: s3://{BUCKET}/{PREFIX}/{relative} has sha256 "
        f"{_sha256(damaged)}, but {volume / relative} has {_sha256(FILES[relative])}"
    )


def test_a_corrupted_upload_fails_the_move(
    store: Any, volume: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def corrupting(client: Any, bucket: str, artifact: Any) -> None:
        client.put_object(Bucket=bucket, Key=artifact.key, Body=b"x", Metadata={"sha256": artifact.sha256})

    monkeypatch.setattr(move_artifacts, "upload", corrupting)
    assert move_artifacts.main() == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("move-artifacts: verification failed: s3://")


def test_a_missing_bucket_is_one_line_naming_artifact_bucket(
    store: Any, volume: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "s3://no-such-bucket/p")
    assert move_artifacts.main() == 1
    assert capsys.readouterr().err.splitlines() == [
        "move-artifacts: config key 'artifactBucket' is 'no-such-bucket', which does not exist at AWS S3; "
        "create it first (the stack never creates or deletes buckets)"
    ]


def test_no_mounted_volume_is_one_line(
    store: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "absent"))
    assert move_artifacts.main() == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"move-artifacts: {tmp_path / 'absent'} is not a directory: is the artifacts volume mounted there?"
    )
    assert _bucket(store) == {}


def test_a_link_in_the_volume_stops_the_move_before_any_upload(
    store: Any, volume: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (volume / "1/aaa/artifacts/link").symlink_to("/etc/passwd")
    assert move_artifacts.main() == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"move-artifacts: {volume / '1/aaa/artifacts/link'} is not a regular file; move it out of the volume "
        "or remove it, then rerun"
    )
    assert _bucket(store) == {}
