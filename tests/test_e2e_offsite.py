"""End to end: off-host backups in a real S3 store, that the stack cannot erase, and a lost host recovered.

A prod-shaped stack (auth, HTTPS front door) with its artifacts in one SeaweedFS bucket and every
backup copied to a second one, made with Object Lock in COMPLIANCE mode, with a key pair of its
own (tests/s3_store.py). A realistic run, a model version and a user with a permission are
logged; a scheduled backup reaches the bucket; the stack's own credentials can neither delete
nor replace what it wrote; 20 backup requests through the database delete nothing; then the host
is lost (`down` with every volume and the state) and the stack comes back from its config and
the bucket alone. Tests run in file order on one stack.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import docker
import pytest
import requests
from mlflow.tracking import MlflowClient

from tests import e2e, secret_scan
from tests.s3_store import S3Store
from tests.test_e2e_backups import _exec, _list
from tools.local_deploy import deployer
from tools.stack_config import PROJECT_DIR

pytestmark = pytest.mark.docker

STACK = "offsite"
PREFIX = f"stacks/{STACK}"
API = "/api/2.0/mlflow"
BACKUP_DIR = "/var/lib/postgresql/data"


def _overrides(store: S3Store) -> dict[str, object]:
    return {
        "authEnabled": True,
        "protectData": True,
        "tlsMode": "internal",
        "httpsPort": 5493,
        "httpPort": 5099,
        "publicHost": "localhost",
        # A scheduled backup every minute, so the test need not wait a day for one.
        "backupIntervalMinutes": 1,
        # Nothing pruned while the test counts backups (only the schedule prunes, and only its own).
        "backupKeep": 100,
        "artifactStore": "s3",
        "artifactBucket": store.bucket,
        "artifactPrefix": PREFIX,
        "artifactEndpoint": store.endpoint,
        "artifactPathStyle": True,
        "artifactAccessKeyId": store.access_key_id,
        "artifactSecretAccessKey": store.secret_access_key,
        "backupBucket": store.backup_bucket,
        "backupPrefix": PREFIX,
        "backupEndpoint": store.endpoint,
        "backupPathStyle": True,
        "backupAccessKeyId": store.backup_key[0],
        "backupSecretAccessKey": store.backup_key[1],
    }


@pytest.fixture(scope="module")
def stack(s3_store: S3Store) -> Iterator[e2e.Deployed]:
    with e2e.stack(STACK, _overrides(s3_store)) as deployed:
        e2e.report(
            f"up to healthy: {deployed.seconds_to_healthy:.1f}s (backups to s3://{s3_store.backup_bucket}/{PREFIX})"
        )
        yield deployed


def _admin(deployed: e2e.Deployed) -> tuple[str, str]:
    return str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"])


@pytest.fixture(scope="module")
def logged(stack: e2e.Deployed, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The data the lost host must give back: a realistic run and model version, a user and a grant."""
    directory = tmp_path_factory.mktemp("offsite")
    with e2e.trusting(stack, directory, auth=_admin(stack)):
        seed = e2e.write_seed(MlflowClient(stack.tracking_uri), directory / "seed")
        alice = ("alice", "alice-" + uuid.uuid4().hex)
        base = stack.tracking_uri
        user = {"username": alice[0], "password": alice[1]}
        created = requests.post(f"{base}{API}/users/create", json=user, auth=_admin(stack), timeout=30)
        assert created.status_code == 200, created.text
        grant = {"username": "alice", "resource_type": "experiment", "resource_id": seed.experiment_id,
                 "permission": "READ"}  # fmt: skip
        granted = requests.post(f"{base}/api/3.0/mlflow/users/permissions/grant", json=grant, auth=_admin(stack),
                                timeout=30)  # fmt: skip
        assert granted.status_code == 200, granted.text
    return {"seed": seed, "alice": alice, "logged_at": time.time()}


def _backup_container(deployed: e2e.Deployed, client: docker.DockerClient) -> Any:
    return client.containers.get(str(deployed.outputs["backup_container_name"]))


def _manifest_version(store: S3Store, backup_id: str) -> str | None:
    """The version id of the backup's manifest in the bucket (written last), or None."""
    key = f"{PREFIX}/{backup_id}/manifest.json"
    versions = store.client(admin=True).list_object_versions(Bucket=store.backup_bucket, Prefix=key)
    found = [v["VersionId"] for v in versions.get("Versions", []) if v["Key"] == key]
    return found[-1] if found else None


def _scheduled_backup_after(backup: Any, moment: float, timeout: float = 150) -> str:
    """The id of the first scheduled backup taken after `moment` (epoch seconds)."""
    deadline = time.monotonic() + timeout
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(moment))
    while time.monotonic() < deadline:
        for backup_id, _created, reason, *_ in _list(backup):
            if reason == "scheduled" and backup_id > stamp:
                return str(backup_id)
        time.sleep(2)
    raise AssertionError(f"no scheduled backup after {stamp} within {timeout}s: {_list(backup)}")


def test_a_scheduled_backup_reaches_the_backup_bucket_and_the_key_pair_stays_in_its_file(
    stack: e2e.Deployed, logged: dict[str, Any], s3_store: S3Store, docker_client: docker.DockerClient
) -> None:
    backup = _backup_container(stack, docker_client)
    backup_id = _scheduled_backup_after(backup, logged["logged_at"])
    done = time.monotonic()
    while _manifest_version(s3_store, backup_id) is None:
        assert time.monotonic() - done < 60, f"backup {backup_id} not in the bucket after 60s"
        time.sleep(1)
    e2e.report(
        f"scheduled backup {backup_id} in s3://{s3_store.backup_bucket}/{PREFIX}/ "
        f"{time.monotonic() - done:.1f}s after it was listed"
    )
    # Byte for byte what the manifest says; the artifacts stay in their own bucket (no archive).
    objects = s3_store.objects_in(s3_store.backup_bucket, f"{PREFIX}/{backup_id}/")
    manifest = json.loads(objects.pop(f"{PREFIX}/{backup_id}/manifest.json"))
    assert manifest["holds_data"] == "yes"
    assert {f"{PREFIX}/{backup_id}/{f['name']}": f["sha256"] for f in manifest["files"]} == {
        key: hashlib.sha256(content).hexdigest() for key, content in objects.items()
    }
    assert sorted(f["name"] for f in manifest["files"]) == ["auth.dump", "tracking.dump"]
    # The backup key pair: only in the offsite container's 0400 file.
    offsite = docker_client.containers.get(f"mlflow-platform-{STACK}-backup-offsite")
    secret = s3_store.backup_key[1]
    containers = docker_client.containers.list(filters={"name": f"mlflow-platform-{STACK}-"})
    assert not any(secret in json.dumps(c.attrs) for c in containers)
    assert not any(secret.encode() in c.logs() for c in containers)
    processes = secret_scan.scan_processes(containers, {secret})
    scan = secret_scan.scan_volumes(containers, {secret})
    assert sorted(scan.secret_files) == [f"{offsite.name}:/run/secrets/backup-store-credentials"]
    e2e.report(f"backup key pair absent from docker inspect, logs, {processes} processes and {scan.files} volume files")


def test_the_stacks_own_credentials_cannot_delete_or_replace_a_copy(
    stack: e2e.Deployed, logged: dict[str, Any], s3_store: S3Store, docker_client: docker.DockerClient
) -> None:
    backup = _backup_container(stack, docker_client)
    backup_id = _scheduled_backup_after(backup, logged["logged_at"])
    client = s3_store.client(backup=True)
    key = f"{PREFIX}/{backup_id}/tracking.dump"
    first = s3_store.client(admin=True).list_object_versions(Bucket=s3_store.backup_bucket, Prefix=key)
    version = first["Versions"][-1]["VersionId"]
    answers: dict[str, str] = {}

    def refused(name: str, call: Any) -> None:
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            call()
        response = raised.value.response
        answers[name] = f"{response['Error']['Code']} (HTTP {response['ResponseMetadata']['HTTPStatusCode']})"

    refused(
        "delete the version", lambda: client.delete_object(Bucket=s3_store.backup_bucket, Key=key, VersionId=version)
    )
    refused(
        "write it again (If-None-Match)",
        lambda: client.put_object(Bucket=s3_store.backup_bucket, Key=key, Body=b"x", IfNoneMatch="*"),
    )
    refused("shorten its retention", lambda: client.put_object_retention(
        Bucket=s3_store.backup_bucket, Key=key, VersionId=version,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": "2000-01-01T00:00:00Z"}))  # fmt: skip
    refused("delete the bucket", lambda: client.delete_bucket(Bucket=s3_store.backup_bucket))
    # Not refused by S3's design: a plain overwrite adds a version, a delete adds a marker. Neither
    # touches the locked version, and `--from offsite` reads each key's first version.
    client.put_object(Bucket=s3_store.backup_bucket, Key=key, Body=b"planted")
    client.delete_object(Bucket=s3_store.backup_bucket, Key=f"{PREFIX}/{backup_id}/manifest.json")
    assert answers["delete the version"].startswith("AccessDenied"), answers
    assert answers["write it again (If-None-Match)"].startswith("PreconditionFailed"), answers
    code, stdout, stderr = _exec(backup, "mlflow-backup", "list", "--from", "offsite")
    assert code == 0, stderr
    assert backup_id in {line.split()[0] for line in stdout.splitlines()}
    started = time.monotonic()
    code, stdout, stderr = _exec(backup, "mlflow-backup", "verify", "--from", "offsite", backup_id)
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == f"verified {backup_id}"
    e2e.report(
        f"the store's answers to the stack's backup key: {answers}; after a planted overwrite and a delete "
        f"marker, verify --from offsite {backup_id} still passed in {time.monotonic() - started:.1f}s"
    )


def test_twenty_backup_requests_through_the_database_delete_no_backup(
    stack: e2e.Deployed, logged: dict[str, Any], s3_store: S3Store, docker_client: docker.DockerClient
) -> None:
    backup = _backup_container(stack, docker_client)
    _scheduled_backup_after(backup, logged["logged_at"])
    local_before = {row[0] for row in _list(backup)}
    offsite_before = set(s3_store.objects_in(s3_store.backup_bucket, f"{PREFIX}/", bodies=False))
    since = int(time.time())
    postgres = stack.container(docker_client, "postgres")

    def request() -> None:
        # What anyone holding the MLflow role can do: a session named like prepare_db.py's request.
        postgres.exec_run(
            ["psql", "-X", "-h", "127.0.0.1", "-U", "mlflow", "-d", "mlflow", "-Atc", "select pg_sleep(6)"],
            environment={"PGPASSWORD": stack.db_password, "PGAPPNAME": "mlflow-backup-request"},
        )

    started = time.monotonic()
    threads = []
    for _ in range(20):
        thread = threading.Thread(target=request)
        thread.start()
        threads.append(thread)
        time.sleep(2.5)
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert elapsed < 65, elapsed
    logs = backup.logs(since=since).decode()
    refusals = logs.count("REFUSED a backup request through the database")
    served = logs.count("asks for a backup before a schema upgrade")
    local_after = {row[0] for row in _list(backup)}
    offsite_after = set(s3_store.objects_in(s3_store.backup_bucket, f"{PREFIX}/", bodies=False))
    assert local_before <= local_after, local_before - local_after
    assert offsite_before <= offsite_after, offsite_before - offsite_after
    assert refusals >= 3, logs
    assert served <= 1, logs
    e2e.report(f"20 requests in {elapsed:.0f}s: {served} served, {refusals} refused; all {len(local_before)} local "
               f"backups and {len(offsite_before)} bucket objects still there")  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # SeaweedFS answers AccessDenied, not NoSuchBucket, for a bucket outside the key's scope.
        ({"bucket": "no-such-bucket"}, "config key 'backupBucket' is 'no-such-bucket', which"),
        # The artifact bucket, with a key that may read it (the admin's): there, but with no Object Lock.
        ({"bucket": "artifacts", "key": "admin"}, "which has no Object Lock in COMPLIANCE mode"),
        ({"secret": "wrong"}, "config key 'backupSecretAccessKey' is not the secret of backupAccessKeyId"),
        ({"endpoint": "closed-port"}, "config key 'backupEndpoint' is 'http://"),
    ],
)
def test_the_start_up_check_refuses_a_backup_bucket_it_cannot_trust_in_one_line(
    stack: e2e.Deployed,
    s3_store: S3Store,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    change: dict[str, str],
    expected: str,
) -> None:
    """The stack's image with the offsite script, as the backup-offsite container starts it."""
    credentials = tmp_path / "credentials"
    key_id, secret = s3_store.admin_key if change.get("key") == "admin" else s3_store.backup_key
    credentials.write_text(
        f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {change.get('secret', secret)}\n"
    )
    credentials.chmod(0o444)
    bucket = {"artifacts": s3_store.bucket}.get(change.get("bucket", ""), change.get("bucket", s3_store.backup_bucket))
    endpoint = s3_store.endpoint
    if change.get("endpoint") == "closed-port":
        endpoint = endpoint.rsplit(":", 1)[0] + ":9"
    script = PROJECT_DIR / "mlflow" / "backup" / "offsite.py"
    container = docker_client.containers.run(
        str(stack.outputs["mlflow_image_name"]),
        # The repository's file, bind-mounted (not executable here): run by the image's Python.
        ["/opt/mlflow/bin/python", "/opt/mlflow-offsite/mlflow-offsite", "check"],
        entrypoint=[],
        environment={
            "OFFSITE_BUCKET": bucket,
            "OFFSITE_PREFIX": PREFIX,
            "OFFSITE_ENDPOINT": endpoint,
            "OFFSITE_PATH_STYLE": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/run/secrets/backup-store-credentials",
            "BACKUP_DIR": "/tmp",
        },
        volumes={
            str(credentials): {"bind": "/run/secrets/backup-store-credentials", "mode": "ro"},
            str(script): {"bind": "/opt/mlflow-offsite/mlflow-offsite", "mode": "ro"},
        },
        user="10001:10001",
        read_only=True,
        cap_drop=["ALL"],
        detach=True,
    )
    try:
        status = container.wait(timeout=120)
        output = container.logs().decode().strip().splitlines()
    finally:
        container.remove(force=True)
    assert status["StatusCode"] == 1
    assert len(output) == 1, output
    assert output[0].startswith("mlflow-offsite: "), output
    assert expected in output[0], output
    e2e.report(f"refused: {output[0]}")


def test_a_lost_host_comes_back_from_the_config_and_the_backup_bucket(
    stack: e2e.Deployed,
    logged: dict[str, Any],
    s3_store: S3Store,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    backup = _backup_container(stack, docker_client)
    _scheduled_backup_after(backup, logged["logged_at"])
    # Every local backup in the bucket first; `latest` is then the newest of them that holds data.
    newest = _list(backup)[0][0]
    while _manifest_version(s3_store, newest) is None:
        time.sleep(1)
    code, stdout, stderr = _exec(backup, "mlflow-backup", "list", "--from", "offsite")
    assert code == 0, stderr
    backup_id = next(line.split()[0] for line in stdout.splitlines() if not line.endswith("(empty)"))
    # The host is gone: every container, every volume, and the deployment's state.
    deployer.down(STACK, purge=True)
    assert docker_client.volumes.list(filters={"name": f"mlflow-platform-{STACK}-"}) == []
    assert docker_client.containers.list(all=True, filters={"name": f"mlflow-platform-{STACK}-"}) == []

    started = time.monotonic()
    recovered = e2e.deploy(STACK, _overrides(s3_store))
    up_seconds = time.monotonic() - started
    backup = _backup_container(recovered, docker_client)
    restore_started = time.monotonic()
    code, stdout, stderr = _exec(backup, "mlflow-backup", "restore", "--from", "offsite", "latest")
    assert code == 0, stderr
    restore_seconds = time.monotonic() - restore_started
    assert stdout.strip().splitlines()[-1] == f"restored {backup_id}", (stdout, stderr)
    admin = _admin(recovered)
    # The new stack's new root CA (state lost: new certificates) and new admin password.
    with e2e.trusting(recovered, tmp_path, auth=admin):
        serving = e2e.wait_until_serving(recovered.tracking_uri, auth=admin)
        total = time.monotonic() - started
        e2e.verify_seed(MlflowClient(recovered.tracking_uri), logged["seed"], tmp_path / "download")
        base = recovered.tracking_uri
        alice = logged["alice"]
        # Alice is back with her password and her READ grant: she reads the experiment, may not write to it.
        seen = requests.get(f"{base}{API}/experiments/get", params={"experiment_id": logged["seed"].experiment_id},
                            auth=alice, timeout=30)  # fmt: skip
        assert seen.status_code == 200, seen.text
        written = requests.post(f"{base}{API}/runs/create", json={"experiment_id": logged["seed"].experiment_id},
                                auth=alice, timeout=30)  # fmt: skip
        assert written.status_code == 403, written.text
    e2e.report(f"lost host: up on an empty engine {up_seconds:.1f}s, restore --from offsite latest ({backup_id}) "
               f"{restore_seconds:.1f}s, serving {serving:.1f}s later; {total:.1f}s from start to serving")  # fmt: skip
