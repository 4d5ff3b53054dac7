"""A real S3 server for the end-to-end tests: SeaweedFS (`weed mini`) beside the stacks, never in one.

Production stacks point `artifactEndpoint` at a store their operators run; the tests run
one the same way: its own container on its own network, published on the Docker host's
bridge address, which every stack container on the front network reaches (the route a
real store's address would take) and this process reaches too, so presigned URLs the
server hands out work from both. Three identities: an admin that makes the buckets, the
key pair a stack gets for its artifacts, scoped to that one bucket, and the key pair for its
off-host backups, scoped to a second bucket made with Object Lock (COMPLIANCE, one day), in which
it can add and read objects but delete no version the backups wrote.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import docker
import docker.errors

from tests.e2e import gateway
from tools.local_deploy.prepare import SEAWEEDFS_IMAGE

CONTAINER_NAME = "mlflow-platform-test-s3"
NETWORK_NAME = "mlflow-platform-test-s3"
_S3_PORT = 8333
_CONFIG_PATH = "/etc/seaweedfs/s3.json"
_READY_SECONDS = 90
BACKUP_BUCKET = "mlflow-backups"
# A version written to the backup bucket cannot be deleted before this, not even by the admin;
# the store (its data inside its container) is removed after the tests.
BACKUP_RETENTION_DAYS = 1


@dataclass(frozen=True)
class S3Store:
    endpoint: str
    """http://<Docker host's bridge address>:<port>: the same URL from a stack's containers and from here."""
    bucket: str
    access_key_id: str
    """The stack's key pair: read, write, list and tag on `bucket` alone."""
    secret_access_key: str = field(repr=False)
    admin_key: tuple[str, str] = field(repr=False)
    backup_key: tuple[str, str] = field(repr=False)
    """The off-host backups' key pair: read, write, list on BACKUP_BUCKET, and read its Object Lock settings."""
    backup_bucket: str = BACKUP_BUCKET

    def client(self, *, admin: bool = False, backup: bool = False) -> Any:
        key, secret = self.admin_key if admin else (self.access_key_id, self.secret_access_key)
        if backup:
            key, secret = self.backup_key
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def stack_settings(self, prefix: str) -> dict[str, object]:
        """The config keys that put a stack's artifacts in this bucket under `prefix`, with the scoped key pair."""
        return {
            "artifactStore": "s3",
            "artifactBucket": self.bucket,
            "artifactPrefix": prefix,
            "artifactEndpoint": self.endpoint,
            "artifactRegion": "us-east-1",
            "artifactPathStyle": True,
            "artifactAccessKeyId": self.access_key_id,
            "artifactSecretAccessKey": self.secret_access_key,
        }

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix` in the artifact bucket, read back with the admin key: key -> content."""
        return self.objects_in(self.bucket, prefix)

    def objects_in(self, bucket: str, prefix: str, *, bodies: bool = True) -> dict[str, bytes]:
        """The current objects under `prefix` in `bucket`, read with the admin key: key -> content (b"" if not read)."""
        client = self.client(admin=True)
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                found[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read() if bodies else b""
        return found


def _host_bridge_address(client: docker.DockerClient) -> str:
    return gateway(client.networks.get("bridge"))


def _identities(bucket: str, admin: tuple[str, str], stack_key: tuple[str, str], backup_key: tuple[str, str]) -> bytes:
    """SeaweedFS's static S3 identities (`-s3.config`); `Action:bucket` scopes an action to one bucket."""
    scoped = [f"{action}:{bucket}" for action in ("Read", "Write", "List", "Tagging")]
    backups = [f"{action}:{BACKUP_BUCKET}" for action in ("Read", "Write", "List", "GetBucketObjectLockConfiguration")]
    return json.dumps(
        {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": admin[0], "secretKey": admin[1]}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    "name": "mlflow-stack",
                    "credentials": [{"accessKey": stack_key[0], "secretKey": stack_key[1]}],
                    "actions": scoped,
                },
                {
                    "name": "mlflow-stack-backups",
                    "credentials": [{"accessKey": backup_key[0], "secretKey": backup_key[1]}],
                    "actions": backups,
                },
            ]
        }
    ).encode()


def _tar(path: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode = len(content), 0o444
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _remove(client: docker.DockerClient, name: str, own_network: bool) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(name).remove(force=True, v=True)
    if own_network:
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(name).remove()


def _key(length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


@contextlib.contextmanager
def running_store(
    client: docker.DockerClient,
    bucket: str = "mlflow-artifacts",
    *,
    name: str = CONTAINER_NAME,
    network: str | None = None,
) -> Iterator[S3Store]:
    """Starts SeaweedFS with a bucket and a key pair scoped to it; removes container, data and network after.

    With `network` (an existing bridge), the store joins it instead of a network of its own and
    is reached at its address there, unpublished: what the Docker-in-Docker nodes of
    tools/swarm_cluster reach from their tasks, as this process does.
    """
    try:
        client.images.get(SEAWEEDFS_IMAGE)
    except docker.errors.ImageNotFound:
        raise RuntimeError(
            f"{SEAWEEDFS_IMAGE} is not on this engine: run `venv/bin/python -m tools.local_deploy prepare`"
        ) from None
    _remove(client, name, network is None)  # a run killed before its teardown
    admin = (_key(20), secrets.token_urlsafe(30))
    stack_key = (_key(20), secrets.token_urlsafe(30))
    backup_key = (_key(20), secrets.token_urlsafe(30))
    host = _host_bridge_address(client) if network is None else ""
    try:
        if network is None:
            client.networks.create(name, driver="bridge")
        container = client.containers.create(
            SEAWEEDFS_IMAGE,
            [
                "mini",
                "-dir=/data",
                f"-s3.config={_CONFIG_PATH}",
                f"-s3.port={_S3_PORT}",
                # No bucket appears by itself: a missing one must stay missing.
                "-s3.autoCreateBucket=false",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
            ],
            name=name,
            network=network or name,
            ports={} if network else {f"{_S3_PORT}/tcp": (host, None)},
            labels={"org.mlflow-platform.test": "s3-store"},
        )
        container.put_archive("/", _tar(_CONFIG_PATH, _identities(bucket, admin, stack_key, backup_key)))
        container.start()
        container.reload()
        if network is None:
            port = container.attrs["NetworkSettings"]["Ports"][f"{_S3_PORT}/tcp"][0]["HostPort"]
            endpoint = f"http://{host}:{port}"
        else:
            endpoint = f"http://{container.attrs['NetworkSettings']['Networks'][network]['IPAddress']}:{_S3_PORT}"
        store = S3Store(endpoint, bucket, stack_key[0], stack_key[1], admin, backup_key)
        _create_bucket(store, container)
        _create_backup_bucket(store)
        yield store
    finally:
        _remove(client, name, network is None)


def _create_bucket(store: S3Store, container: Any) -> None:
    deadline = time.monotonic() + _READY_SECONDS
    last = ""
    while time.monotonic() < deadline:
        try:
            store.client(admin=True).create_bucket(Bucket=store.bucket)
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            last = f"{type(error).__name__}: {error}"
            time.sleep(1)
    logs = container.logs(tail=30).decode(errors="replace")
    raise AssertionError(f"SeaweedFS at {store.endpoint} made no bucket within {_READY_SECONDS}s: {last}\n{logs}")


def _create_backup_bucket(store: S3Store) -> None:
    """Versioned, with Object Lock and a COMPLIANCE default retention: what README's write-once setup makes."""
    admin = store.client(admin=True)
    admin.create_bucket(Bucket=store.backup_bucket, ObjectLockEnabledForBucket=True)
    admin.put_object_lock_configuration(
        Bucket=store.backup_bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": BACKUP_RETENTION_DAYS}},
        },
    )
