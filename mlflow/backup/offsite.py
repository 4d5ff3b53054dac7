#!/opt/mlflow/bin/python
"""mlflow-offsite: the stack's backups, copied to a bucket off this host, and brought back.

    mlflow-offsite serve              the backup-offsite container's main process: the start-up
                                      check, then every few seconds copy each new backup of the
                                      backups volume to the bucket and answer mlflow-backup's requests
    mlflow-offsite check              the start-up check alone
    mlflow-offsite list               the bucket's backups, newest first
    mlflow-offsite fetch <id|latest>  one backup into BACKUP_DIR/.offsite/fetched/<id>, every file
                                      checked against its manifest's sha256
    mlflow-offsite health             the health check: the last pass copied everything

Why a container of its own: the backup container runs the stack's Postgres image (pg_dump
must match the server), which has no S3 client; this one runs the MLflow image, which has
boto3, as the same uid, with the backups volume and the backup bucket's key pair (a 0400
shared-credentials file), and on no network that reaches Postgres. mlflow-backup's
`--from offsite` asks it for a listing or a copy through files in the backups volume
(BACKUP_DIR/.offsite/requests), the one thing both containers share.

Write-once: the bucket must have versioning and Object Lock with a COMPLIANCE default
retention (checked at start). Every object is written with `If-None-Match: *`, so this
program never replaces one; whatever the key pair does later, a locked version cannot
be deleted before its retention ends, not even by the store's admin. An overwrite or a
delete marker only adds a version: everything here reads the *first* version of each
key, the one written by the backup, so neither can change or hide a backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ID = re.compile(r"^\d{8}T\d{6}Z$")
_STATUS_FILE = Path(os.environ.get("TMPDIR", "/tmp")) / "mlflow-offsite.status"  # noqa: S108 - private tmpfs
_STORE_TIMEOUT_SECONDS = 10
# Above this a file goes up in parts, each held in memory once: a multi-GB artifacts archive
# never sits whole in the container's memory.
PART_BYTES = 64 * 1024 * 1024
# The container turns unhealthy when no pass has succeeded for this long (passes run every few seconds).
_HEALTHY_WITHIN_SECONDS = 300


class OffsiteError(Exception):
    """A backup could not be copied or brought back: one line saying which and why."""


class StoreRefused(SystemExit):
    """The start-up check failed: one line naming the config key and what is wrong."""


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} mlflow-offsite: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Bucket:
    """The backup bucket, from the container's environment (no secret is in it)."""

    name: str
    prefix: str
    endpoint: str

    @classmethod
    def from_environment(cls) -> Bucket:
        return cls(
            name=os.environ["OFFSITE_BUCKET"],
            prefix=os.environ.get("OFFSITE_PREFIX", "").strip("/"),
            endpoint=os.environ.get("OFFSITE_ENDPOINT", ""),
        )

    @property
    def where(self) -> str:
        return self.endpoint or "AWS S3"

    @property
    def root(self) -> str:
        """The key prefix every backup's objects are under: '<prefix>/' or ''."""
        return f"{self.prefix}/" if self.prefix else ""

    def key(self, backup_id: str, name: str) -> str:
        return f"{self.root}{backup_id}/{name}"

    def client(self) -> Any:
        import boto3
        import botocore.config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint or None,
            config=botocore.config.Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if os.environ.get("OFFSITE_PATH_STYLE") == "true" else "auto"},
                connect_timeout=_STORE_TIMEOUT_SECONDS,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _error_code(error: Any) -> tuple[str, object]:
    response = getattr(error, "response", {}) or {}
    return response.get("Error", {}).get("Code", ""), response.get("ResponseMetadata", {}).get("HTTPStatusCode")


# --- The start-up check ----------------------------------------------------------------------


def check(bucket: Bucket, client: Any) -> None:
    """Before anything is copied: the store answers, the bucket is there and the key pair reaches it,
    and the bucket keeps what is written (versioning and a COMPLIANCE Object Lock default)."""
    import boto3
    import botocore.exceptions

    # The key id names the key, and is no secret; the secret key is never shown.
    credentials = boto3.Session().get_credentials()
    key_id = credentials.access_key if credentials is not None else ""
    try:
        client.list_objects_v2(Bucket=bucket.name, Prefix=bucket.root, MaxKeys=1)
        lock = client.get_object_lock_configuration(Bucket=bucket.name)["ObjectLockConfiguration"]
    except botocore.exceptions.SSLError as error:
        raise StoreRefused(
            f"mlflow-offsite: config key 'backupEndpoint' is {bucket.where!r}, whose TLS certificate is not "
            f"trusted ({type(error).__name__}); give its CA in backupCaCertificate"
        ) from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as error:
        raise StoreRefused(
            f"mlflow-offsite: config key 'backupEndpoint' is {bucket.where!r}, which does not answer "
            f"({type(error).__name__}); check the URL and that this container has a route to it"
        ) from None
    except botocore.exceptions.NoCredentialsError:
        raise StoreRefused(
            "mlflow-offsite: config keys 'backupAccessKeyId' and 'backupSecretAccessKey' are empty and no "
            "other credentials (an instance role) were found; set both"
        ) from None
    except botocore.exceptions.ClientError as error:
        raise StoreRefused(_refusal(*_error_code(error), bucket, key_id)) from None
    retention = lock.get("Rule", {}).get("DefaultRetention", {})
    if lock.get("ObjectLockEnabled") != "Enabled" or retention.get("Mode") != "COMPLIANCE":
        raise StoreRefused(_no_lock(bucket, f"its default retention is {retention.get('Mode') or 'not set'}"))
    days = retention.get("Days") or f"{retention.get('Years')} years"
    _log(f"backup bucket s3://{bucket.name}/{bucket.prefix} at {bucket.where}: reachable, COMPLIANCE lock {days} days")


def _no_lock(bucket: Bucket, why: str) -> str:
    return (
        f"mlflow-offsite: config key 'backupBucket' is {bucket.name!r}, which has no Object Lock in COMPLIANCE mode "
        f"at {bucket.where} ({why}): the stack's own credentials could erase backups there; create the bucket with "
        "Object Lock and a COMPLIANCE default retention (README: Off-host backups)"
    )


def _refusal(code: str, status: object, bucket: Bucket, key_id: str) -> str:
    if code == "ObjectLockConfigurationNotFoundError":
        return _no_lock(bucket, "no Object Lock configuration")
    if code == "NoSuchBucket" or status == 404:
        return (
            f"mlflow-offsite: config key 'backupBucket' is {bucket.name!r}, which does not exist at {bucket.where}; "
            "create it first, with Object Lock (the stack never creates or deletes buckets)"
        )
    if code == "InvalidAccessKeyId":
        return f"mlflow-offsite: config key 'backupAccessKeyId' is {key_id!r}, which {bucket.where} does not know"
    if code == "SignatureDoesNotMatch":
        return (
            "mlflow-offsite: config key 'backupSecretAccessKey' is not the secret of backupAccessKeyId "
            f"{key_id!r} ({bucket.where} refused the signature)"
        )
    if code == "AccessDenied" or status == 403:
        return (
            f"mlflow-offsite: config key 'backupBucket' is {bucket.name!r}, which {bucket.where} does not let "
            f"backupAccessKeyId {key_id!r} list or read the Object Lock settings of (the bucket is missing, or its "
            "policy does not grant ListBucket, GetBucketObjectLockConfiguration, GetObject, GetObjectVersion and "
            "PutObject: README's write-once policy)"
        )
    return f"mlflow-offsite: config key 'backupBucket' is {bucket.name!r}: {bucket.where} answered HTTP {status} {code}"


# --- Reading: always the first version of each key --------------------------------------------


def first_versions(bucket: Bucket, client: Any, prefix: str) -> dict[str, str]:
    """Each key under `prefix` -> the version id of its oldest version (what the backup wrote).

    S3 lists a key's versions newest first, so the last one seen is the oldest; delete
    markers are not versions and are passed over, so a deleted key still reads back.
    """
    oldest: dict[str, str] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket.name, Prefix=prefix):
        for version in page.get("Versions", []):
            oldest[version["Key"]] = version["VersionId"]
    return oldest


def offsite_ids(bucket: Bucket, client: Any) -> list[str]:
    """The ids of the backups whose manifest (written last) is in the bucket, newest first."""
    ids = set()
    for key in first_versions(bucket, client, bucket.root):
        backup_id, _, name = key.removeprefix(bucket.root).partition("/")
        if name == "manifest.json" and _ID.match(backup_id):
            ids.add(backup_id)
    return sorted(ids, reverse=True)


def _read(bucket: Bucket, client: Any, key: str, version: str) -> bytes:
    body: bytes = client.get_object(Bucket=bucket.name, Key=key, VersionId=version)["Body"].read()
    return body


def read_manifest(bucket: Bucket, client: Any, backup_id: str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(_manifest_bytes(bucket, client, backup_id))
    return manifest


def _manifest_bytes(bucket: Bucket, client: Any, backup_id: str) -> bytes:
    """The manifest as mlflow-backup wrote it (its shell reads it line by line: the bytes, not a re-encoding)."""
    key = bucket.key(backup_id, "manifest.json")
    versions = first_versions(bucket, client, key)
    if key not in versions:
        raise OffsiteError(
            f"no backup {backup_id} in s3://{bucket.name}/{bucket.root} (see: mlflow-backup list --from offsite)"
        )
    return _read(bucket, client, key, versions[key])


def resolve(bucket: Bucket, client: Any, wanted: str) -> str:
    """`latest`: the newest backup that holds data. A new stack's first backups are of its empty
    databases; after a lost host they are the newest in the bucket and never what is wanted."""
    if wanted != "latest":
        if not _ID.match(wanted):
            raise OffsiteError(f"'{wanted}' is not a backup id or 'latest' (see: mlflow-backup list --from offsite)")
        return wanted
    for backup_id in offsite_ids(bucket, client):
        if read_manifest(bucket, client, backup_id).get("holds_data") != "no":
            return backup_id
        _log(f"latest: passed over {backup_id}, a backup of an empty tracking database")
    raise OffsiteError(f"no backup that holds data in s3://{bucket.name}/{bucket.root}")


def listing(bucket: Bucket, client: Any) -> list[str]:
    lines = []
    for backup_id in offsite_ids(bucket, client):
        manifest = read_manifest(bucket, client, backup_id)
        kib = sum(int(entry["bytes"]) for entry in manifest["files"]) // 1024
        empty = "  (empty)" if manifest.get("holds_data") == "no" else ""
        lines.append(
            f"{backup_id}  {manifest['created_utc']}  {manifest['reason']:<12} {kib:8d} KiB  "
            f"schema {manifest['schema_revision']}{empty}"
        )
    return lines


def fetch(bucket: Bucket, client: Any, wanted: str, backup_dir: Path) -> str:
    """Brings one backup into backup_dir/.offsite/fetched/<id>; every file must match the manifest's sha256."""
    backup_id = resolve(bucket, client, wanted)
    written = _manifest_bytes(bucket, client, backup_id)
    manifest = json.loads(written)
    fetched = backup_dir / ".offsite" / "fetched"
    # One fetched copy at a time: the previous one (a whole backup) is not kept on disk.
    shutil.rmtree(fetched, ignore_errors=True)
    partial = fetched / f".partial-{backup_id}"
    partial.mkdir(parents=True, mode=0o700)
    versions = first_versions(bucket, client, bucket.key(backup_id, ""))
    for entry in manifest["files"]:
        name = entry["name"]
        if "/" in name or name.startswith("."):
            raise OffsiteError(f"backup {backup_id}: the manifest names {name!r}, not a file of a backup")
        key = bucket.key(backup_id, name)
        if key not in versions:
            raise OffsiteError(f"backup {backup_id}: {name} is missing from the bucket")
        client.download_file(bucket.name, key, str(partial / name), ExtraArgs={"VersionId": versions[key]})
        actual = _sha256(partial / name)
        if actual != entry["sha256"]:
            raise OffsiteError(f"backup {backup_id}: {name} has sha256 {actual}, the manifest says {entry['sha256']}")
    (partial / "manifest.json").write_bytes(written)
    partial.rename(fetched / backup_id)
    _log(f"fetched backup {backup_id}: {len(manifest['files'])} files, each matching the manifest's sha256")
    return backup_id


# --- Writing: each object once -----------------------------------------------------------------


def _put_once(bucket: Bucket, client: Any, key: str, path: Path) -> None:
    """Writes `path` to `key` unless the key exists (If-None-Match: *); an existing key must hold the same bytes."""
    import botocore.exceptions

    try:
        if path.stat().st_size <= PART_BYTES:
            client.put_object(Bucket=bucket.name, Key=key, Body=path.read_bytes(), IfNoneMatch="*")
        else:
            _put_parts_once(bucket, client, key, path)
    except botocore.exceptions.ClientError as error:
        code, status = _error_code(error)
        if code != "PreconditionFailed" and status != 412:
            raise
        # Written by an earlier pass that stopped before the manifest: the same bytes, or an error.
        versions = first_versions(bucket, client, key)
        local, stored = _sha256(path), hashlib.sha256(_read(bucket, client, key, versions[key])).hexdigest()
        if stored != local:
            raise OffsiteError(
                f"{key} is already in the bucket with sha256 {stored}, not this backup's {local}"
            ) from None


def _put_parts_once(bucket: Bucket, client: Any, key: str, path: Path) -> None:
    upload = client.create_multipart_upload(Bucket=bucket.name, Key=key)["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        with path.open("rb") as stream:
            while chunk := stream.read(PART_BYTES):
                number = len(parts) + 1
                answer = client.upload_part(Bucket=bucket.name, Key=key, UploadId=upload, PartNumber=number, Body=chunk)
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket.name, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
        )
    except BaseException:
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket.name, Key=key, UploadId=upload)
        raise


def upload(bucket: Bucket, client: Any, backup_dir: Path, backup_id: str) -> None:
    """One local backup to the bucket: each file checked against the manifest, the manifest last."""
    local = backup_dir / backup_id
    manifest = json.loads((local / "manifest.json").read_text(encoding="utf-8"))
    started = time.monotonic()
    for entry in manifest["files"]:
        path = local / entry["name"]
        # A local copy that no longer matches its manifest is not shipped as a backup.
        if _sha256(path) != entry["sha256"]:
            raise OffsiteError(f"backup {backup_id}: {entry['name']} no longer matches its manifest's sha256")
        _put_once(bucket, client, bucket.key(backup_id, entry["name"]), path)
    _put_once(bucket, client, bucket.key(backup_id, "manifest.json"), local / "manifest.json")
    size = sum(int(entry["bytes"]) for entry in manifest["files"])
    seconds = time.monotonic() - started
    _log(f"copied backup {backup_id} ({size // 1024} KiB) to s3://{bucket.name}/{bucket.root} in {seconds:.1f}s")


def local_ids(backup_dir: Path) -> list[str]:
    """Complete local backups (a backup directory appears whole, by rename, with its manifest)."""
    return sorted(p.name for p in backup_dir.iterdir() if _ID.match(p.name) and (p / "manifest.json").is_file())


# --- The container's main process ----------------------------------------------------------------


def _write_status(ok: bool, message: str) -> None:
    partial = _STATUS_FILE.with_suffix(".partial")
    partial.write_text(json.dumps({"ok": ok, "at": time.time(), "message": message}), encoding="utf-8")
    partial.replace(_STATUS_FILE)


def sync(bucket: Bucket, client: Any, backup_dir: Path, copied: set[str]) -> None:
    """Copies every local backup the bucket lacks; `copied` remembers what is there already."""
    missing = [backup_id for backup_id in local_ids(backup_dir) if backup_id not in copied]
    if missing:
        copied.update(offsite_ids(bucket, client))
    for backup_id in missing:
        if backup_id not in copied:
            upload(bucket, client, backup_dir, backup_id)
            copied.add(backup_id)


def answer(bucket: Bucket, client: Any, backup_dir: Path, request: str) -> tuple[int, list[str]]:
    """One request of mlflow-backup's `--from offsite`: `list`, or `fetch <id|latest>`."""
    words = request.split()
    try:
        if words == ["list"]:
            return 0, listing(bucket, client)
        if len(words) == 2 and words[0] == "fetch":
            return 0, [fetch(bucket, client, words[1], backup_dir)]
        return 1, [f"unknown request {request!r}"]
    except OffsiteError as error:
        return 1, [str(error)]


def _requests(backup_dir: Path) -> Iterator[Path]:
    directory = backup_dir / ".offsite" / "requests"
    if directory.is_dir():
        yield from sorted(directory.glob("*.request"))


def serve_requests(bucket: Bucket, client: Any, backup_dir: Path) -> None:
    for request in _requests(backup_dir):
        text = request.read_text(encoding="utf-8").strip()
        _log(f"request from mlflow-backup: {text}")
        status, lines = answer(bucket, client, backup_dir, text)
        response = request.with_suffix(".response")
        partial = request.with_suffix(".partial")
        partial.write_text("\n".join([str(status), *lines]) + "\n", encoding="utf-8")
        partial.rename(response)
        request.unlink()


def serve(bucket: Bucket, backup_dir: Path) -> None:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    client = bucket.client()
    check(bucket, client)
    poll = float(os.environ.get("OFFSITE_POLL_SECONDS", "5"))
    copied: set[str] = set()
    next_sync = 0.0
    while not stopping:
        try:
            serve_requests(bucket, client, backup_dir)
            if time.monotonic() >= next_sync:
                sync(bucket, client, backup_dir, copied)
                _write_status(True, "every local backup is in the bucket")
                next_sync = time.monotonic() + poll
        # Any failure (the store away, a full disk) is logged, shown by the health check and retried.
        except Exception as error:
            _log(f"FAILED: {type(error).__name__}: {error}; retrying in {poll:.0f}s")
            _write_status(False, str(error))
            next_sync = time.monotonic() + poll
        time.sleep(1)
    _log("stopping")


def health() -> int:
    try:
        status = json.loads(_STATUS_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print("no pass yet")
        return 1
    age = time.time() - status["at"]
    print(f"{status['message']} ({age:.0f}s ago)")
    return 0 if status["ok"] and age < _HEALTHY_WITHIN_SECONDS else 1


def main(argv: list[str]) -> int:
    # Backups hold every user's password hash: what this writes is the backup uid's alone.
    os.umask(0o077)
    command, arguments = (argv[0], argv[1:]) if argv else ("", [])
    if command == "health":
        return health()
    bucket = Bucket.from_environment()
    backup_dir = Path(os.environ["BACKUP_DIR"])
    try:
        if command == "serve" and not arguments:
            serve(bucket, backup_dir)
        elif command == "check" and not arguments:
            check(bucket, bucket.client())
        elif command == "list" and not arguments:
            print("\n".join(listing(bucket, bucket.client())))
        elif command == "fetch" and len(arguments) == 1:
            print(fetch(bucket, bucket.client(), arguments[0], backup_dir))
        else:
            print("usage: mlflow-offsite serve|check|list|fetch <id|latest>|health", file=sys.stderr)
            return 2
    except StoreRefused as refused:
        print(refused.code, file=sys.stderr)
        return 1
    except OffsiteError as error:
        _log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
