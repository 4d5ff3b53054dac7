"""mlflow/backup/offsite.py against moto's S3 (versioning, Object Lock, If-None-Match), and its
request files with mlflow-backup's `--from offsite`, the script run by sh with stub database tools.

The end-to-end test (test_e2e_offsite.py) runs both in a stack against SeaweedFS.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tools.stack_config import PROJECT_DIR

BUCKET = "ml-backups"
SCRIPT = PROJECT_DIR / "mlflow" / "backup" / "mlflow-backup"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mlflow_offsite_script", PROJECT_DIR / "mlflow" / "backup" / "offsite.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclass looks its own module up by name while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


offsite = _load()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 with a versioned bucket under a COMPLIANCE lock; credentials only in this process."""
    for variable in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_PROFILE", "OFFSITE_ENDPOINT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIABACKUP")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        client.put_object_lock_configuration(
            Bucket=BUCKET,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
            },
        )
        yield client


@pytest.fixture
def bucket() -> Any:
    return offsite.Bucket(name=BUCKET, prefix="stacks/prod", endpoint="")


def _backup(backup_dir: Path, backup_id: str, files: dict[str, bytes], *, holds_data: str = "yes") -> Path:
    """A backup directory as mlflow-backup writes it: the files and a manifest of their sha256."""
    directory = backup_dir / backup_id
    directory.mkdir(parents=True)
    listed = []
    for name, content in files.items():
        (directory / name).write_bytes(content)
        listed.append({"name": name, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()})
    manifest = {
        "id": backup_id,
        "created_utc": "2026-12-05T03:00:00Z",
        "reason": "scheduled",
        "schema_revision": "dc11669786a5",
        "holds_data": holds_data,
        "files": listed,
    }
    # As write_manifest prints it: one line per file, which json.dumps(indent=2) would not give back.
    entries = ",\n".join(f"    {json.dumps(entry)}" for entry in listed)
    head = "".join(f'  "{key}": "{value}",\n' for key, value in manifest.items() if key != "files")
    (directory / "manifest.json").write_text(f'{{\n{head}  "files": [\n{entries}\n  ]\n}}\n')
    return directory


def test_the_start_up_check_passes_a_compliance_locked_bucket(s3: Any, bucket: Any) -> None:
    offsite.check(bucket, s3)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "config key 'backupBucket' is 'ml-backups', which does not exist at AWS S3"),
        ("unlocked", "config key 'backupBucket' is 'ml-backups', which has no Object Lock in COMPLIANCE mode"),
        (
            "governance",
            "config key 'backupBucket' is 'ml-backups', which has no Object Lock in COMPLIANCE mode at AWS S3 "
            "(its default retention is GOVERNANCE)",
        ),
    ],
)
def test_the_start_up_check_refuses_a_bucket_that_could_lose_backups(
    monkeypatch: pytest.MonkeyPatch, setup: str, expected: str
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIABACKUP")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        if setup == "unlocked":
            client.create_bucket(Bucket=BUCKET)
        if setup == "governance":
            client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
            client.put_object_lock_configuration(
                Bucket=BUCKET,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
                },
            )
        with pytest.raises(SystemExit) as refused:
            offsite.check(offsite.Bucket(name=BUCKET, prefix="", endpoint=""), client)
    line = str(refused.value.code)
    assert "\n" not in line
    assert line.startswith(f"mlflow-offsite: {expected}"), line


def test_a_backup_goes_up_manifest_last_and_comes_back_checked(s3: Any, bucket: Any, tmp_path: Path) -> None:
    big = os.urandom(offsite.PART_BYTES + 1024)  # in two parts
    _backup(tmp_path, "20261205T030000Z", {"tracking.dump": b"dump", "artifacts.tar.gz": big})
    copied: set[str] = set()
    offsite.sync(bucket, s3, tmp_path, copied)
    assert copied == {"20261205T030000Z"}
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="stacks/prod/")["Contents"]]
    assert sorted(keys) == [
        "stacks/prod/20261205T030000Z/artifacts.tar.gz",
        "stacks/prod/20261205T030000Z/manifest.json",
        "stacks/prod/20261205T030000Z/tracking.dump",
    ]
    # A second pass finds it there and writes nothing (each key has one version).
    offsite.sync(bucket, s3, tmp_path, set())
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="stacks/prod/")["Versions"]
    assert len(versions) == 3
    assert offsite.fetch(bucket, s3, "latest", tmp_path) == "20261205T030000Z"
    fetched = tmp_path / ".offsite" / "fetched" / "20261205T030000Z"
    assert (fetched / "artifacts.tar.gz").read_bytes() == big
    assert (fetched / "tracking.dump").read_bytes() == b"dump"
    # The manifest byte for byte: mlflow-backup reads its lines with sed, so no re-encoding.
    written = (tmp_path / "20261205T030000Z" / "manifest.json").read_bytes()
    assert (fetched / "manifest.json").read_bytes() == written


def test_a_local_copy_that_no_longer_matches_its_manifest_is_not_shipped(s3: Any, bucket: Any, tmp_path: Path) -> None:
    directory = _backup(tmp_path, "20261205T030000Z", {"tracking.dump": b"dump"})
    (directory / "tracking.dump").write_bytes(b"damaged")
    with pytest.raises(offsite.OffsiteError, match=r"tracking\.dump no longer matches its manifest's sha256"):
        offsite.sync(bucket, s3, tmp_path, set())
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_an_overwrite_or_a_delete_marker_neither_changes_nor_hides_a_backup(
    s3: Any, bucket: Any, tmp_path: Path
) -> None:
    _backup(tmp_path / "local", "20261205T030000Z", {"tracking.dump": b"the real dump"})
    offsite.sync(bucket, s3, tmp_path / "local", set())
    key = "stacks/prod/20261205T030000Z/tracking.dump"
    # What the stack's own key pair may still do to a locked bucket: add versions and markers.
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"planted")
    s3.delete_object(Bucket=BUCKET, Key="stacks/prod/20261205T030000Z/manifest.json")
    # What it may not: delete the version the backup wrote.
    first = s3.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"][-1]["VersionId"]
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=first)
    assert offsite.offsite_ids(bucket, s3) == ["20261205T030000Z"]
    offsite.fetch(bucket, s3, "20261205T030000Z", tmp_path)
    assert (tmp_path / ".offsite" / "fetched" / "20261205T030000Z" / "tracking.dump").read_bytes() == b"the real dump"


def test_fetch_refuses_a_file_that_does_not_match_the_manifest(s3: Any, bucket: Any, tmp_path: Path) -> None:
    _backup(tmp_path / "local", "20261205T030000Z", {"tracking.dump": b"dump"})
    manifest = json.loads((tmp_path / "local" / "20261205T030000Z" / "manifest.json").read_text())
    # Written straight to the bucket: a dump whose bytes are not the ones the manifest names.
    s3.put_object(Bucket=BUCKET, Key="stacks/prod/20261205T030000Z/tracking.dump", Body=b"other bytes")
    s3.put_object(Bucket=BUCKET, Key="stacks/prod/20261205T030000Z/manifest.json", Body=json.dumps(manifest))
    with pytest.raises(offsite.OffsiteError, match=r"tracking\.dump has sha256 [0-9a-f]{64}, the manifest says"):
        offsite.fetch(bucket, s3, "20261205T030000Z", tmp_path)
    assert not (tmp_path / ".offsite" / "fetched" / "20261205T030000Z").exists()


def test_latest_passes_over_backups_of_an_empty_database(s3: Any, bucket: Any, tmp_path: Path) -> None:
    _backup(tmp_path, "20261205T030000Z", {"tracking.dump": b"the team's data"})
    # A new stack after a lost host: its first backups are newer, and empty.
    _backup(tmp_path, "20261206T030000Z", {"tracking.dump": b"empty"}, holds_data="no")
    offsite.sync(bucket, s3, tmp_path, set())
    assert offsite.resolve(bucket, s3, "latest") == "20261205T030000Z"
    lines = offsite.listing(bucket, s3)
    assert [line.split()[0] for line in lines] == ["20261206T030000Z", "20261205T030000Z"]
    assert lines[0].endswith("(empty)")
    assert not lines[1].endswith("(empty)")


def test_mlflow_backup_from_offsite_asks_the_offsite_container_through_request_files(
    s3: Any, bucket: Any, tmp_path: Path
) -> None:
    backup_dir = tmp_path / "backups"
    _backup(backup_dir, "20261205T030000Z", {"tracking.dump": b"dump"})
    offsite.sync(bucket, s3, backup_dir, set())
    config = tmp_path / "backup.conf"
    settings = {
        "PGHOST": "postgres",
        "PGPORT": "5432",
        "PGUSER": "mlflow",
        "PGPASSFILE": str(tmp_path / "pgpass"),
        "TRACKING_DB": "mlflow",
        "AUTH_DB": "mlflow_auth",
        "BACKUP_DIR": str(backup_dir),
        "ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "INTERVAL_SECONDS": "60",
        "KEEP": "2",
        "MLFLOW_VERSION": "3.17.2",
        "OFFSITE": "1",
        "OFFSITE_CONTAINER": "mlflow-platform-prod-backup-offsite",
    }
    config.write_text("".join(f"{key}='{value}'\n" for key, value in settings.items()))
    stop = threading.Event()

    def offsite_container() -> None:
        while not stop.is_set():
            offsite.serve_requests(bucket, s3, backup_dir)
            time.sleep(0.1)

    server = threading.Thread(target=offsite_container)
    server.start()
    try:
        env = {**os.environ, "MLFLOW_BACKUP_CONFIG": str(config), "TMPDIR": str(tmp_path)}
        listed = subprocess.run(
            ["sh", str(SCRIPT), "list", "--from", "offsite"], env=env, capture_output=True, text=True, timeout=30
        )
        missing = subprocess.run(
            ["sh", str(SCRIPT), "verify", "--from", "offsite", "20991231T000000Z"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        stop.set()
        server.join()
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("20261205T030000Z  2026-12-05T03:00:00Z  scheduled")
    assert missing.returncode == 1
    assert "error: no backup 20991231T000000Z in s3://ml-backups/stacks/prod/" in missing.stderr
    # Every request was answered and every answer read: nothing left behind.
    assert list((backup_dir / ".offsite" / "requests").iterdir()) == []


def test_from_offsite_without_a_backup_bucket_says_which_key_to_set(tmp_path: Path) -> None:
    config = tmp_path / "backup.conf"
    config.write_text(
        "PGHOST=p\nPGPORT=5432\nPGUSER=m\nPGPASSFILE=/x\nTRACKING_DB=m\nAUTH_DB=a\n"
        f"BACKUP_DIR={tmp_path}\nARTIFACTS_DIR={tmp_path}\nINTERVAL_SECONDS=60\nKEEP=1\nMLFLOW_VERSION=3.17.2\n"
    )
    result = subprocess.run(
        ["sh", str(SCRIPT), "restore", "--from", "offsite", "latest"],
        env={**os.environ, "MLFLOW_BACKUP_CONFIG": str(config), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "error: no off-host copies: config key backupBucket is empty" in result.stderr


def test_a_key_is_written_once_a_rerun_with_the_same_bytes_adds_no_version_and_other_bytes_are_refused(
    s3: Any, bucket: Any, tmp_path: Path
) -> None:
    """A pass cut off before its manifest is run again: If-None-Match keeps the store from taking a second copy."""
    path = tmp_path / "tracking.dump"
    path.write_bytes(b"dump")
    key = "stacks/prod/20261205T030000Z/tracking.dump"
    offsite._put_once(bucket, s3, key, path)
    offsite._put_once(bucket, s3, key, path)
    assert len(s3.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]) == 1
    path.write_bytes(b"other bytes")
    with pytest.raises(offsite.OffsiteError, match="is already in the bucket with sha256"):
        offsite._put_once(bucket, s3, key, path)
    assert len(s3.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]) == 1
