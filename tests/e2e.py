"""What the end-to-end tests share: deploying a stack for real and poking at it."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import docker
import requests
from docker.models.containers import Container
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tools.local_deploy import deployer
from tools.local_deploy.common import STACK_LABEL


@dataclass
class Deployed:
    """A stack brought up through the same code path as `python -m tools.local_deploy up`."""

    stack: str
    overrides: dict[str, object]
    outputs: dict[str, Any]
    seconds_to_healthy: float

    @property
    def tracking_uri(self) -> str:
        return str(self.outputs["tracking_uri"])

    @property
    def db_password(self) -> str:
        return unquote(urlsplit(str(self.outputs["backend_store_uri"])).password or "")

    def secrets(self) -> list[str]:
        values = [self.db_password]
        if self.outputs.get("admin_password"):
            values.append(str(self.outputs["admin_password"]))
        assert all(len(value) >= 24 for value in values)
        return values

    def container(self, client: docker.DockerClient, role: str) -> Container:
        return client.containers.get(str(self.outputs[f"{role}_container_name"]))


@contextlib.contextmanager
def trusting(deployed: Deployed, directory: Path, auth: tuple[str, str] | None = None) -> Iterator[Path | None]:
    """Clients in this process trust the stack's CA (and log in), as the README tells users to.

    `requests` reads REQUESTS_CA_BUNDLE and the MLflow client MLFLOW_TRACKING_SERVER_CERT_PATH.
    """
    values: dict[str, str] = {}
    ca_file = None
    if deployed.outputs.get("ca_certificate"):
        ca_file = directory / "ca.pem"
        ca_file.write_text(str(deployed.outputs["ca_certificate"]))
        values |= {"REQUESTS_CA_BUNDLE": str(ca_file), "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca_file)}
    if auth:
        values |= {"MLFLOW_TRACKING_USERNAME": auth[0], "MLFLOW_TRACKING_PASSWORD": auth[1]}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield ca_file
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def resolving(names: Mapping[str, str]) -> Iterator[None]:
    """This process resolves each of `names` to its address, as an /etc/hosts line would.

    A stack keeps its real public host (its certificate, Host check and the origin a
    browser sends all name it) although no DNS here knows it; clients still send the
    name in SNI and Host. Chromium gets the same map as `--host-resolver-rules`.
    """
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        return original(names.get(name.lower(), host) if isinstance(name, str) else host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = original


def deploy(stack: str, overrides: Mapping[str, object] | None = None) -> Deployed:
    started = time.monotonic()
    outputs = deployer.up(stack, dict(overrides or {}))
    return Deployed(stack, dict(overrides or {}), outputs, time.monotonic() - started)


def redeploy(deployed: Deployed, overrides: Mapping[str, object] | None = None) -> Deployed:
    again = deploy(deployed.stack, {**deployed.overrides, **(overrides or {})})
    if _SHARED.get(deployed.stack) is deployed:
        # Later modules sharing the stack get its new outputs (passwords after a destroy).
        _SHARED[deployed.stack] = again
    return again


@contextlib.contextmanager
def stack(stack_name: str, overrides: Mapping[str, object] | None = None) -> Iterator[Deployed]:
    """Deploys from nothing (leftovers of an earlier run removed first) and removes it all after,
    whether the deployment or the tests failed: the retainOnDelete volumes and the state
    file too (purge), or the next run would find data initialised with a password it
    no longer knows."""
    # The removal below takes a shared stack of this name with it.
    _SHARED.pop(stack_name, None)
    deployer.down(stack_name, purge=True)
    try:
        yield deploy(stack_name, overrides)
    finally:
        deployer.down(stack_name, purge=True)


# Stacks deployed once for every module that asks for them with the same config (name -> stack).
_SHARED: dict[str, Deployed] = {}


def shared(stack_name: str, overrides: Mapping[str, object] | None = None) -> Deployed:
    """A stack deployed once for all the modules that only use it as committed: the second asks
    costs no deploy. Deployed from nothing like `stack`; removed by `release_shared` at the end
    of the session (tests/conftest.py), or when a module deploys the same name for itself.
    A shared stack that is no longer healthy (a failed test left it down) is deployed again."""
    wanted = dict(overrides or {})
    deployed = _SHARED.get(stack_name)
    if deployed is None or deployed.overrides != wanted or not _healthy(stack_name):
        _SHARED.pop(stack_name, None)
        deployer.down(stack_name, purge=True)
        deployed = _SHARED[stack_name] = deploy(stack_name, wanted)
    return deployed


def release_shared() -> None:
    """Removes every shared stack, as `stack` removes its own: purged, whatever the tests did."""
    while _SHARED:
        name, _ = _SHARED.popitem()
        deployer.down(name, purge=True)


def _healthy(stack_name: str) -> bool:
    """The stack's containers are all there and none is failing: each runs and is not unhealthy
    (gc's first probe may be far off), or it is a one-shot job that exited 0."""
    client = docker.from_env()
    try:
        containers = client.containers.list(all=True, filters={"label": f"{STACK_LABEL}={stack_name}"})
        return bool(containers) and all(_not_failing(container.attrs["State"]) for container in containers)
    finally:
        client.close()


def _not_failing(state: Mapping[str, Any]) -> bool:
    if state["Status"] == "exited":
        return bool(state["ExitCode"] == 0)
    return bool(state["Status"] == "running" and state.get("Health", {}).get("Status") != "unhealthy")


def wait_until_serving(tracking_uri: str, timeout: float = 180, auth: tuple[str, str] | None = None) -> float:
    """Seconds until /health answers and a real API call (which needs Postgres) succeeds."""
    started = time.monotonic()
    last_error = ""
    while time.monotonic() - started < timeout:
        try:
            health = requests.get(f"{tracking_uri}/health", timeout=5)
            api = requests.get(
                f"{tracking_uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth, timeout=10
            )
            if health.status_code == 200 and api.status_code == 200:
                return time.monotonic() - started
            last_error = f"health {health.status_code}, api {api.status_code}: {api.text[:200]}"
        except requests.RequestException as error:
            last_error = str(error)
        time.sleep(0.5)
    raise AssertionError(f"{tracking_uri} did not serve within {timeout}s: {last_error}")


def wait_for_health_status(container: Container, status: str = "healthy", timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        container.reload()
        if container.attrs["State"].get("Health", {}).get("Status") == status:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{container.name} not {status} within {timeout}s: {container.attrs['State']}")


def log_random_artifacts(
    client: MlflowClient, run_id: str, directory: Path, files: Mapping[str, int]
) -> dict[str, str]:
    """Writes `files` (relative path -> size) of random bytes under `directory` and logs them as
    the run's artifacts in one directory upload; returns relative path -> sha256."""
    hashes: dict[str, str] = {}
    for name, size in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    client.log_artifacts(run_id, str(directory))
    return hashes


def report(message: str) -> None:
    """Figures for the CI log (pytest runs the end-to-end tests with -s)."""
    print(f"\n[e2e] {message}", flush=True)


def big_artifact_round_trip(client: MlflowClient, run_id: str, directory: Path, mib: int) -> tuple[float, float]:
    """Logs `mib` MiB of random bytes as one artifact and downloads it: (seconds up, seconds down).

    Asserts the download's size and sha256 equal what was written, then removes the directory
    (pytest keeps the temporary directories of the last runs: not 2 GiB each).
    """
    artifact = directory / "checkpoint.bin"
    written = hashlib.sha256()
    try:
        with artifact.open("wb") as handle:
            for _ in range(mib):
                chunk = os.urandom(1024 * 1024)
                written.update(chunk)
                handle.write(chunk)
        started = time.monotonic()
        client.log_artifact(run_id, str(artifact))
        uploaded = time.monotonic() - started
        started = time.monotonic()
        local = Path(client.download_artifacts(run_id, artifact.name, str(directory / "down")))
        downloaded = time.monotonic() - started
        read = hashlib.sha256()
        with local.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                read.update(chunk)
        assert (local.stat().st_size, read.hexdigest()) == (mib * 1024 * 1024, written.hexdigest())
        return uploaded, downloaded
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- A realistic data set, written and read back through the MLflow client ------------------

ARTIFACT_BYTES = 12 * 1024 * 1024
BATCH_METRICS = 1000  # MLflow's cap on metrics in one log-batch request


@dataclass
class Seed:
    """What the module logs once and expects to find after every restart and redeploy."""

    experiment_id: str
    run_id: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: list[Metric]
    artifact_sha256: str
    artifact_name: str
    model_name: str


def write_seed(client: MlflowClient, directory: Path) -> Seed:
    """Logs a realistic set through the MLflow client: params, tags, 1,001 metrics, a 12 MB artifact, a model."""
    directory.mkdir(parents=True, exist_ok=True)
    experiment_id = client.create_experiment("e2e-tracking")
    run = client.create_run(experiment_id, tags={"team": "platform"}, run_name="seeded")
    run_id = run.info.run_id
    params = {"learning_rate": "0.01", "optimizer": "adam", "layers": "4"}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    client.log_metric(run_id, "accuracy", 0.9731, step=7, timestamp=1_700_000_000_000)
    # 10 keys x 100 steps, values that do not round-trip through 32-bit floats.
    metrics = [
        Metric(f"loss_{key}", step * 0.001 + key / 3, 1_700_000_000_000 + step, step)
        for key in range(10)
        for step in range(BATCH_METRICS // 10)
    ]
    client.log_batch(run_id, metrics=metrics)
    tags = {"team": "platform", "stage": "e2e"}
    client.set_tag(run_id, "stage", "e2e")

    artifact = directory / "weights.bin"
    artifact.write_bytes(os.urandom(ARTIFACT_BYTES))
    client.log_artifact(run_id, str(artifact), artifact_path="model")
    client.set_terminated(run_id)

    model_name = "e2e-model"
    client.create_registered_model(model_name)
    version = client.create_model_version(model_name, f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(model_name, "champion", version.version)
    return Seed(
        experiment_id=experiment_id,
        run_id=run_id,
        params=params,
        tags=tags,
        metrics=[Metric("accuracy", 0.9731, 1_700_000_000_000, 7), *metrics],
        artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
        artifact_name="model/weights.bin",
        model_name=model_name,
    )


def verify_seed(client: MlflowClient, seed: Seed, download_to: Path) -> None:
    """Everything `write_seed` logged reads back exactly."""
    run = client.get_run(seed.run_id)
    assert run.data.params == seed.params
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == seed.tags
    assert run.info.status == "FINISHED"
    expected_keys = {metric.key for metric in seed.metrics}
    stored: list[tuple[str, int, float, int]] = []
    for key in sorted(expected_keys):
        stored += [(m.key, m.step, m.value, m.timestamp) for m in client.get_metric_history(seed.run_id, key)]
    assert sorted(stored) == sorted((m.key, m.step, m.value, m.timestamp) for m in seed.metrics)
    assert len(stored) == len(seed.metrics)
    assert sum(key.startswith("loss_") for key, _, _, _ in stored) == BATCH_METRICS

    listed = client.list_artifacts(seed.run_id, "model")
    assert [(a.path, a.file_size) for a in listed] == [(seed.artifact_name, ARTIFACT_BYTES)]
    local = client.download_artifacts(seed.run_id, seed.artifact_name, str(download_to))
    assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == seed.artifact_sha256

    version = client.get_model_version_by_alias(seed.model_name, "champion")
    assert version.run_id == seed.run_id
    found = client.search_runs(
        [seed.experiment_id], filter_string="params.optimizer = 'adam' and metrics.accuracy > 0.97"
    )
    assert [r.info.run_id for r in found] == [seed.run_id]
    assert client.search_runs([seed.experiment_id], filter_string="params.optimizer = 'sgd'") == []


def gateway(network: docker.models.networks.Network) -> str:
    """A network's gateway: on the default bridge, the host's docker0 address. Docker leaves
    `Gateway` out of the IPAM config at times (a freshly started engine's bridge); then it is
    the subnet's first address, which Docker gives the gateway."""
    ipam = network.attrs["IPAM"]["Config"][0]
    return str(ipam.get("Gateway") or ipaddress.ip_network(ipam["Subnet"])[1])
