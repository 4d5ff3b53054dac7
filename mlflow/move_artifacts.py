"""Copies a stack's artifacts from its volume to its bucket and verifies every object by sha256.

    python /opt/mlflow-entrypoint/move_artifacts.py

Run by scripts/move-artifacts.sh in a one-off container of the stack's image, with the
artifacts volume mounted read-only at ARTIFACTS_DIR and the bucket named the way the server
names it (MLFLOW_ARTIFACTS_DESTINATION s3://bucket/prefix, MLFLOW_S3_ENDPOINT_URL,
MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE, AWS_DEFAULT_REGION, AWS_CA_BUNDLE); the key pair comes
only from AWS_SHARED_CREDENTIALS_FILE, never the environment or the command line.

Every file goes to the same relative key under the prefix: the server in volume mode keeps
`mlflow-artifacts:/<experiment>/<run>/artifacts/<path>` at ARTIFACTS_DIR/<that path>, in s3 mode
at s3://bucket/prefix/<that path>, so every URI recorded in the database resolves unchanged.

A pass can be repeated: an object already in the bucket whose recorded sha256 (object
metadata `sha256`, written here) matches the file's is not uploaded again. The operator
command runs one pass while the server keeps serving, then stops the server and runs a
final pass that uploads only what was written since. Every pass then reads every object
back and compares its sha256 with the file's: the stack is switched only on a pass that
verified them all. One line of totals on success; one line naming what failed, exit 1,
otherwise.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

# Beside this file in the image (/opt/mlflow-entrypoint); mypy checks it as mlflow/prepare_db.py.
from prepare_db import (  # type: ignore[import-not-found]
    ArtifactStoreError,
    _check_artifact_store,
    store_client,
    store_location,
)

DEFAULT_ARTIFACTS_DIR = "/mlflow/artifacts"
# The metadata key (x-amz-meta-sha256) that lets a rerun skip an object without reading it.
SHA256_METADATA = "sha256"
# Transfers at once: artifacts are mostly small files, where a round trip, not bandwidth, is the cost.
_WORKERS = 8
# Generous: a slow store must not fail a multi-gigabyte object's part; a wrong one failed the check already.
_TIMEOUT_SECONDS = 120
_CHUNK = 1024 * 1024


class MoveError(Exception):
    """What stopped the move, as the one line the operator sees."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    key: str
    size: int
    sha256: str


@dataclass
class Totals:
    files: int = 0
    bytes: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    verified: int = 0


def sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _key(prefix: str, relative: str) -> str:
    return f"{prefix}/{relative}" if prefix else relative


def local_artifacts(root: Path, prefix: str) -> Iterator[Artifact]:
    """Every file under `root`, in a stable order, with its bucket key and sha256."""
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory, name)
            # The server writes only regular files; anything else (a link out of the volume)
            # would be copied as something no recorded URI meant.
            if path.is_symlink() or not path.is_file():
                raise MoveError(f"{path} is not a regular file; move it out of the volume or remove it, then rerun")
            with path.open("rb") as stream:
                digest = sha256_of(stream)
            yield Artifact(path, _key(prefix, path.relative_to(root).as_posix()), path.stat().st_size, digest)


def _recorded_sha256(client: Any, bucket: str, key: str) -> str | None:
    import botocore.exceptions

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise
    return str(head.get("Metadata", {}).get(SHA256_METADATA, "")) or None


def upload(client: Any, bucket: str, artifact: Artifact) -> None:
    """boto3's managed transfer: multipart above its threshold, so no object sits in memory whole."""
    extra: dict[str, Any] = {"Metadata": {SHA256_METADATA: artifact.sha256}}
    # As MLflow's own S3 repository uploads (s3_artifact_repo.py, _upload_file): the web UI's
    # file view and a browser download see the same content type whichever way it arrived.
    content_type, encoding = mimetypes.guess_type(artifact.path.name)
    if content_type:
        extra["ContentType"] = content_type
    if encoding:
        extra["ContentEncoding"] = encoding
    client.upload_file(str(artifact.path), bucket, artifact.key, ExtraArgs=extra)


def _copy_one(client: Any, bucket: str, artifact: Artifact) -> bool:
    """Uploads the file unless the bucket already holds it with its sha256; True when it uploaded."""
    if _recorded_sha256(client, bucket, artifact.key) == artifact.sha256:
        return False
    upload(client, bucket, artifact)
    return True


def _verify_one(client: Any, bucket: str, artifact: Artifact) -> None:
    """Reads the object back whole: the metadata says what was meant, only the bytes say what is there."""
    import botocore.exceptions

    try:
        body = client.get_object(Bucket=bucket, Key=artifact.key)["Body"]
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise MoveError(f"verification failed: s3://{bucket}/{artifact.key} cannot be read back ({code})") from None
    found = sha256_of(body)
    if found != artifact.sha256:
        raise MoveError(
            f"verification failed: s3://{bucket}/{artifact.key} has sha256 {found}, "
            f"but {artifact.path} has {artifact.sha256}"
        )


def _each(work: Callable[[Artifact], Any], artifacts: list[Artifact]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return list(pool.map(work, artifacts))


def move(root: Path, destination: str, client: Any) -> Totals:
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not root.is_dir():
        raise MoveError(f"{root} is not a directory: is the artifacts volume mounted there?")
    artifacts = list(local_artifacts(root, prefix))
    totals = Totals(files=len(artifacts), bytes=sum(a.size for a in artifacts))
    copied = _each(lambda artifact: _copy_one(client, bucket, artifact), artifacts)
    for artifact, uploaded in zip(artifacts, copied, strict=True):
        if uploaded:
            totals.uploaded += 1
            totals.uploaded_bytes += artifact.size
    _each(lambda artifact: _verify_one(client, bucket, artifact), artifacts)
    totals.verified = len(artifacts)
    return totals


def main() -> int:
    import boto3
    import botocore.exceptions

    destination = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    root = Path(os.environ.get("ARTIFACTS_DIR", DEFAULT_ARTIFACTS_DIR))
    started = time.monotonic()
    try:
        if not destination.startswith("s3://"):
            raise MoveError(f"MLFLOW_ARTIFACTS_DESTINATION is {destination!r}, not an s3://bucket[/prefix] URI")
        # The start-up check's one line naming the config key (a missing bucket, a refused key pair)
        # before a single file is read.
        _check_artifact_store(destination)
        client = store_client(boto3.Session(), timeout=_TIMEOUT_SECONDS, attempts=5)
        totals = move(root, destination, client)
    except ArtifactStoreError as error:
        print(f"move-artifacts: {str(error).removeprefix('prepare_db: ')}", file=sys.stderr)
        return 1
    except MoveError as error:
        print(f"move-artifacts: {error}", file=sys.stderr)
        return 1
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as error:
        # A store that failed mid-way: rerunning picks up where this stopped.
        print(
            f"move-artifacts: stopped on {type(error).__name__} from {store_location()}: {error}; nothing was "
            "switched, rerun to continue",
            file=sys.stderr,
        )
        return 1
    print(
        f"move-artifacts: {totals.files} files ({totals.bytes / 2**20:.1f} MiB) in {destination}: "
        f"{totals.uploaded} uploaded ({totals.uploaded_bytes / 2**20:.1f} MiB), "
        f"{totals.files - totals.uploaded} already there; {totals.verified} verified by sha256 "
        f"in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
