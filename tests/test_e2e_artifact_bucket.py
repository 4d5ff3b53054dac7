"""End to end: a prod-shaped stack (auth, HTTPS front door) whose artifacts live in a real S3 bucket.

The bucket is SeaweedFS's (tests/s3_store.py), outside the stack, as an operator's own store
would be; the stack gets a key pair scoped to that bucket, as a secret. A realistic run (params,
metrics, a 25 MiB directory) logged through the front door lands in the bucket under the prefix
byte for byte, and a model version of it downloads through the registry; the server keeps none
of it and no store credential is in anything `docker inspect` or /proc shows; gc deletes a
deleted run's objects and no others; 1 GiB goes up in parts and comes down with the server's
memory under its limit. Tests run in file order on one stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import mlflow.artifacts
import pytest
import requests
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from bench.memory import cgroup_peak_mib, peak_memory
from tests import e2e, secret_scan
from tests.s3_store import S3Store

pytestmark = pytest.mark.docker

STACK = "bucket"
PREFIX = "stacks/bucket"
# A shared stack (auth on, volumes protected, HTTPS) on ports no other end-to-end stack uses.
OVERRIDES: dict[str, object] = {
    "authEnabled": True,
    "protectData": True,
    "tlsMode": "internal",
    "httpsPort": 5473,
    "httpPort": 5097,
    "publicHost": "localhost",
    # gc purges what was deleted a second ago, so the test need not wait days.
    "gcOlderThan": "1s",
}
# A directory of artifacts: 25 MiB in subdirectories, as a model's files and its evaluation would be.
ARTIFACT_FILES = {
    "model/weights.bin": 7 * 1024 * 1024,
    "model/config.json": 2048,
    "model/tokenizer/vocab.txt": 1024 * 1024,
    # Above the client's multipart threshold, lowered below for the test (500 MB by default): it goes
    # up in two parts the client PUTs to URLs the server presigns, not through the server.
    "model/checkpoint.bin": 12 * 1024 * 1024,
    "eval/predictions.csv": 2 * 1024 * 1024,
    "eval/plots/roc.png": 256 * 1024,
    "data/sample.parquet": 2816 * 1024,
}
MULTIPART_FILE = "model/checkpoint.bin"
MULTIPART_THRESHOLD = 8 * 1024 * 1024
MODEL_NAME = "bucket-model"
# Above the client's default multipart threshold: up in parts straight to the bucket, down through the server.
BIG_ARTIFACT_MIB = 1024


@pytest.fixture(scope="module")
def bucket_stack(
    docker_client: docker.DockerClient, s3_store: S3Store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[e2e.Deployed]:
    with e2e.stack(STACK, {**OVERRIDES, **s3_store.stack_settings(PREFIX)}) as deployed:
        e2e.report(f"up to healthy: {deployed.seconds_to_healthy:.1f}s (artifacts in s3://{s3_store.bucket}/{PREFIX})")
        admin = (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))
        with e2e.trusting(deployed, tmp_path_factory.mktemp("trust"), auth=admin):
            yield deployed


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _log_run(client: MlflowClient, experiment_id: str, directory: Path) -> tuple[str, dict[str, str]]:
    """A run with params, metrics and ARTIFACT_FILES logged as one directory; returns its id and the files' sha256."""
    run_id = client.create_run(experiment_id).info.run_id
    client.log_batch(
        run_id,
        params=[Param("optimizer", "adam"), Param("learning_rate", "0.01")],
        metrics=[Metric("loss", 1 / (step + 1), 1_700_000_000_000 + step, step) for step in range(50)],
    )
    hashes = e2e.log_random_artifacts(client, run_id, directory, ARTIFACT_FILES)
    client.set_terminated(run_id)
    return run_id, hashes


def _run_objects(store: S3Store, experiment_id: str, run_id: str) -> dict[str, str]:
    """The run's objects in the bucket: path under the run's artifacts -> sha256."""
    root = f"{PREFIX}/{experiment_id}/{run_id}/artifacts/"
    return {key.removeprefix(root): _sha256(content) for key, content in store.objects(root).items()}


@pytest.fixture(scope="module")
def live_run(bucket_stack: e2e.Deployed, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict[str, str]]:
    client = MlflowClient(bucket_stack.tracking_uri)
    experiment_id = client.create_experiment("bucket-e2e")
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(MULTIPART_THRESHOLD))
        run_id, hashes = _log_run(client, experiment_id, tmp_path_factory.mktemp("live"))
    e2e.report(
        f"realistic run logged through the front door in {time.monotonic() - started:.1f}s: 2 params, 50 metric "
        f"steps, {len(ARTIFACT_FILES)} files ({sum(ARTIFACT_FILES.values()) / 2**20:.1f} MiB) in one directory"
    )
    return experiment_id, run_id, hashes


def test_a_run_logged_through_the_front_door_is_in_the_bucket_under_the_prefix(
    bucket_stack: e2e.Deployed, s3_store: S3Store, live_run: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    experiment_id, run_id, hashes = live_run
    assert _run_objects(s3_store, experiment_id, run_id) == hashes
    client = MlflowClient(bucket_stack.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params == {"optimizer": "adam", "learning_rate": "0.01"}
    assert len(client.get_metric_history(run_id, "loss")) == 50
    # Recorded as before: clients see the server's proxy URI, never the bucket.
    assert run.info.artifact_uri == f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"
    # The listing the web UI's artifact browser shows, and the file it opens, both read from the bucket.
    listed = {(a.path, a.is_dir, a.file_size) for a in client.list_artifacts(run_id, "model")}
    assert listed == {
        ("model/weights.bin", False, 7 * 1024 * 1024),
        ("model/config.json", False, 2048),
        ("model/checkpoint.bin", False, 12 * 1024 * 1024),
        ("model/tokenizer", True, None),
    }
    admin = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    opened = requests.get(
        f"{bucket_stack.tracking_uri}/get-artifact",
        params={"path": "model/config.json", "run_uuid": run_id},
        auth=admin,
        timeout=30,
    )
    assert opened.status_code == 200, opened.text[:200]
    assert _sha256(opened.content) == hashes["model/config.json"]
    downloaded = Path(client.download_artifacts(run_id, "model/weights.bin", str(tmp_path)))
    assert _sha256(downloaded.read_bytes()) == hashes["model/weights.bin"]
    # An S3 multipart object's ETag ends in -<parts>: 12 MiB in MLflow's 10 MiB parts.
    key = f"{PREFIX}/{experiment_id}/{run_id}/artifacts/{MULTIPART_FILE}"
    etag = s3_store.client(admin=True).head_object(Bucket=s3_store.bucket, Key=key)["ETag"]
    assert etag.strip('"').endswith("-2"), etag
    e2e.report(
        f"{len(hashes)} artifacts ({sum(ARTIFACT_FILES.values()) / 2**20:.1f} MiB) in "
        f"s3://{s3_store.bucket}/{PREFIX}/{experiment_id}/{run_id}/artifacts/ with matching sha256"
    )


def test_a_model_version_of_the_run_reads_back_and_downloads_through_the_front_door(
    bucket_stack: e2e.Deployed,
    live_run: tuple[str, str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, run_id, hashes = live_run
    client = MlflowClient(bucket_stack.tracking_uri)
    client.create_registered_model(MODEL_NAME, description="the bucket run's model")
    created = client.create_model_version(MODEL_NAME, f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(MODEL_NAME, "champion", created.version)
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert (version.name, version.version, version.run_id, version.status) == (MODEL_NAME, "1", run_id, "READY")
    assert client.get_registered_model(MODEL_NAME).description == "the bucket run's model"
    # The version points at the run's files (no copy): the bucket's objects, fetched through the front door.
    source = f"runs:/{run_id}/model"
    assert (version.source, client.get_model_version_download_uri(MODEL_NAME, "1")) == (source, source)
    # A models:/ URI resolves through the registry, which is where the tracking URI points (as a user sets it);
    # download_artifacts(tracking_uri=...) would leave the registry at the default, a local SQLite file.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", bucket_stack.tracking_uri)
    started = time.monotonic()
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@champion", dst_path=str(tmp_path)))
    seconds = time.monotonic() - started
    downloaded = {
        path.relative_to(local).as_posix(): _sha256(path.read_bytes()) for path in local.rglob("*") if path.is_file()
    }
    assert downloaded == {
        name.removeprefix("model/"): digest for name, digest in hashes.items() if name.startswith("model/")
    }
    e2e.report(
        f"model version {MODEL_NAME}@champion (v{version.version}): its {len(downloaded)} files "
        f"({sum(size for name, size in ARTIFACT_FILES.items() if name.startswith('model/')) / 2**20:.1f} MiB) "
        f"downloaded in {seconds:.1f}s with matching sha256"
    )


def test_the_server_holds_no_artifact_and_no_store_credential(
    bucket_stack: e2e.Deployed,
    s3_store: S3Store,
    live_run: tuple[str, str, dict[str, str]],
    docker_client: docker.DockerClient,
) -> None:
    server, gc = bucket_stack.container(docker_client, "mlflow"), bucket_stack.container(docker_client, "gc")
    # No volume of the server or gc holds anything but the secret files: the spool is empty after the
    # transfers, the artifacts volume is not mounted.
    for container in (server, gc):
        mounted = {m["Destination"]: m for m in container.attrs["Mounts"] if m["Type"] == "volume"}
        assert "/mlflow/artifacts" not in mounted, container.name
        files = {
            f"{destination}/{path.relative_to(mount['Source'])}"
            for destination, mount in mounted.items()
            if destination != "/run/secrets"
            for path in Path(mount["Source"]).rglob("*")
            if path.is_file()
        }
        assert files == set(), container.name
    # Nor is any artifact a file of the server's own file system, its tmpfs or its spool.
    _, _, hashes = live_run
    sizes = " -o ".join(f"-size {size}c" for size in ARTIFACT_FILES.values())
    script = f"find / /tmp /mlflow/spool -xdev -type f \\( {sizes} \\) -exec sha256sum {{}} + 2>/dev/null; true"
    listing = server.exec_run(["sh", "-c", script]).output.decode()
    assert not set(hashes.values()) & {line.split()[0] for line in listing.splitlines() if line}, listing
    # The key pair: in the 0400 file, nowhere `docker inspect`, a process environment or a command line shows.
    credentials = {s3_store.secret_access_key, s3_store.access_key_id}
    for container in (server, gc):
        assert not any(value in json.dumps(container.attrs) for value in credentials), container.name
        uploaded = container.exec_run(["cat", "/run/secrets/artifact-store-credentials"]).output.decode()
        assert uploaded == (
            f"[default]\naws_access_key_id = {s3_store.access_key_id}\n"
            f"aws_secret_access_key = {s3_store.secret_access_key}\n"
        )
    stack_containers = docker_client.containers.list(filters={"name": f"mlflow-platform-{STACK}-"})
    processes = secret_scan.scan_processes(stack_containers, credentials)
    scan = secret_scan.scan_volumes(stack_containers, credentials)
    assert sorted(scan.secret_files) == sorted(
        f"{c.name}:/run/secrets/artifact-store-credentials" for c in (server, gc)
    )
    logs = b"".join(c.logs() for c in stack_containers)
    assert not any(value.encode() in logs for value in credentials)
    # Nor the image: its settings and history, and every byte of its layers (`docker save`).
    image = docker_client.images.get(str(bucket_stack.outputs["mlflow_image_name"]))
    assert not any(value in json.dumps([image.attrs, image.history()]) for value in credentials)
    assert not _stream_holds(image.save(), {value.encode() for value in credentials})
    e2e.report(
        f"store key pair absent from docker inspect, logs, the image's layers, {processes} processes and "
        f"{scan.files} volume files of "
        f"{len(stack_containers)} containers; only in {sorted(scan.secret_files)}"
    )


def _stream_holds(chunks: Iterator[bytes], needles: set[bytes]) -> bool:
    """Whether any needle occurs in the stream, across chunk boundaries too."""
    overlap = max(len(needle) for needle in needles) - 1
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        if any(needle in window for needle in needles):
            return True
        tail = window[-overlap:]
    return False


def test_gc_deletes_a_deleted_runs_objects_and_keeps_a_live_runs(
    bucket_stack: e2e.Deployed,
    s3_store: S3Store,
    live_run: tuple[str, str, dict[str, str]],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    experiment_id, live_id, live_hashes = live_run
    client = MlflowClient(bucket_stack.tracking_uri)
    deleted_id, deleted_hashes = _log_run(client, experiment_id, tmp_path)
    assert _run_objects(s3_store, experiment_id, deleted_id) == deleted_hashes
    client.delete_run(deleted_id)
    time.sleep(2)  # gcOlderThan is 1s
    started = time.monotonic()
    result = bucket_stack.container(docker_client, "gc").exec_run(["/usr/local/bin/mlflow-gc", "now"])
    assert result.exit_code == 0, result.output.decode()
    assert _run_objects(s3_store, experiment_id, deleted_id) == {}
    assert _run_objects(s3_store, experiment_id, live_id) == live_hashes
    e2e.report(
        f"gc in {time.monotonic() - started:.1f}s: the deleted run's {len(deleted_hashes)} objects gone, "
        f"the live run's {len(live_hashes)} kept"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"secret": "wrong"}, "config key 'artifactSecretAccessKey' is not the secret of artifactAccessKeyId"),
        ({"key_id": "NOSUCHKEY"}, "config key 'artifactAccessKeyId' is 'NOSUCHKEY', which"),
        ({"bucket": "no-such-bucket"}, "config key 'artifactBucket' is 'no-such-bucket', which"),
        # The store's host at a port nothing listens on.
        ({"endpoint": "closed-port"}, "config key 'artifactEndpoint' is 'http://"),
    ],
)
def test_the_start_up_check_refuses_a_store_it_cannot_use_in_one_line(
    bucket_stack: e2e.Deployed,
    s3_store: S3Store,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    change: dict[str, str],
    expected: str,
) -> None:
    """The stack's image's prepare_db.py against the real store, before any database is named."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {change.get('key_id', s3_store.access_key_id)}\n"
        f"aws_secret_access_key = {change.get('secret', s3_store.secret_access_key)}\n"
    )
    credentials.chmod(0o444)
    bucket = change.get("bucket", s3_store.bucket)
    endpoint = change.get("endpoint", s3_store.endpoint)
    if endpoint == "closed-port":
        endpoint = s3_store.endpoint.rsplit(":", 1)[0] + ":9"
    container = docker_client.containers.run(
        str(bucket_stack.outputs["mlflow_image_name"]),
        ["python", "/opt/mlflow-entrypoint/prepare_db.py"],
        entrypoint=[],
        environment={
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/{PREFIX}",
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
            "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE": "path",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": "/run/secrets/artifact-store-credentials",
        },
        volumes={str(credentials): {"bind": "/run/secrets/artifact-store-credentials", "mode": "ro"}},
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
    assert output[0].startswith(f"prepare_db: {expected}"), output
    e2e.report(f"refused: {output[0]}")


def test_a_1_gib_artifact_goes_up_in_parts_to_the_bucket_and_down_under_the_servers_memory_limit(
    bucket_stack: e2e.Deployed, s3_store: S3Store, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """With the client's default threshold: up in parts to URLs the server presigns, down through the server."""
    client = MlflowClient(bucket_stack.tracking_uri)
    experiment_id = client.create_experiment("bucket-big-artifact")
    run_id = client.create_run(experiment_id).info.run_id
    server = bucket_stack.container(docker_client, "mlflow")
    limit_mib = server.attrs["HostConfig"]["Memory"] / 2**20
    restarts = server.attrs["RestartCount"]
    key = f"{PREFIX}/{experiment_id}/{run_id}/artifacts/checkpoint.bin"
    try:
        with peak_memory(server, interval=0.25) as peak:
            uploaded, downloaded = e2e.big_artifact_round_trip(client, run_id, tmp_path, BIG_ARTIFACT_MIB)
        stored = s3_store.client(admin=True).head_object(Bucket=s3_store.bucket, Key=key)
    finally:
        # 1 GiB less on the store's disk for the rest of the session.
        s3_store.client(admin=True).delete_object(Bucket=s3_store.bucket, Key=key)
    server.reload()
    cgroup_peak = cgroup_peak_mib(server)
    e2e.report(
        f"{BIG_ARTIFACT_MIB} MiB through the front door, artifacts in the bucket: up {uploaded:.1f}s, "
        f"down {downloaded:.1f}s; server memory peak {peak['mib']:.0f} MiB (docker stats, sampled every 0.25 s), "
        f"cgroup peak since start {cgroup_peak or 0:.0f} MiB (page cache included), limit {limit_mib:.0f} MiB"
    )
    # In MLflow's 10 MiB parts (ETag -<parts>): the bytes went to the store, not through the server.
    assert (stored["ContentLength"], stored["ETag"].strip('"').rsplit("-", 1)[-1]) == (BIG_ARTIFACT_MIB * 2**20, "103")
    assert (server.attrs["State"]["Status"], server.attrs["State"]["OOMKilled"], server.attrs["RestartCount"]) == (
        "running",
        False,
        restarts,
    )
    assert 0 < peak["mib"] < limit_mib
