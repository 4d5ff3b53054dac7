"""End to end: a prod-like stack on a single-node swarm (`engine: swarm`), 3 MLflow replicas behind the front door.

One stack for the module (auth on, HTTPS front door, artifacts in the test S3 store of
tests/s3_store.py, as replicas need), deployed on the previous MLflow release; its tests in file
order: an upgrade to the current release under load (every old task stops before a new one
starts, one new task takes the pre-upgrade backup and migrates, the stop is measured, nothing is
lost); a realistic run through the front door with 3 healthy MLflow tasks; no secret value in
what `docker inspect` shows of every service, task and task container, in their logs or in any
volume on disk; a task killed under load (8 clients, tests/load.py) loses no acknowledged write
and fails no request after the client's retries; a rolling update (a changed `workers`) under
load loses nothing and fails at most 0.1% of the writes, and leaves every task on the new spec.

The engine must be a swarm manager (`docker swarm init`); while it is not, the module is skipped,
unless REQUIRE_DOCKER=1, which makes that a failure (tests/conftest.py). Task containers are
looked up on this engine: on one node, every task runs here.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.models.services import Service
from mlflow.tracking import MlflowClient

from tests import e2e, load, secret_scan
from tests.s3_store import S3Store
from tools.local_deploy.__main__ import UPGRADE_FROM_VERSION
from tools.stack_config import stack_config

pytestmark = pytest.mark.docker

STACK = "swarm"
PREFIX = "stacks/swarm"
REPLICAS = 3
# One worker at first, two after the rolling update: 3 replicas (4 while one starts first) fit beside the
# other stacks on a 2-core test machine; the memory limit holds both (256 MiB + 256 MiB per worker).
WORKERS_BEFORE, WORKERS_AFTER = 1, 2
OVERRIDES: dict[str, object] = {
    "engine": "swarm",
    "mlflowReplicas": REPLICAS,
    "workers": WORKERS_BEFORE,
    "mlflowMemoryMb": 1024,
    "authEnabled": True,
    # Prod-like: shared data, kept on delete (the module's teardown purges it).
    "protectData": True,
    "tlsMode": "internal",
    # Ports no other end-to-end stack uses.
    "httpsPort": 5513,
    "httpPort": 5101,
    "publicHost": "localhost",
    # A swarm service publishes on every interface of its node: the stack must say so.
    "bindAddress": "0.0.0.0",
}
STACK_LABEL = f"com.pulumi.stack={STACK}"
MLFLOW_ROLE = "org.mlflow-platform.role=tracking-server"
LOAD_CLIENTS = 8
# Seconds of load before and after a fault, so both sides of it are measured.
STEADY_SECONDS = 5
HEALTHY_TIMEOUT = 300
# Through an upgrade's stop the clients keep retrying (0 + 2 + 4 + ... + 120 s): a stop shorter than
# that fails no write, and a longer one shows as failed writes, not as a hung test.
UPGRADE_RETRIES = load.Retries(max_retries=8, backoff_factor=1, jitter=0.5, timeout=30)


@pytest.fixture(scope="module")
def swarm_stack(
    swarm_manager: None,
    docker_client: docker.DockerClient,
    s3_store: S3Store,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[e2e.Deployed]:
    settings = {**OVERRIDES, **s3_store.stack_settings(PREFIX), "mlflowVersion": UPGRADE_FROM_VERSION}
    with e2e.stack(STACK, settings) as deployed:
        e2e.report(
            f"swarm stack, {REPLICAS} MLflow replicas of {UPGRADE_FROM_VERSION}, up to healthy: "
            f"{deployed.seconds_to_healthy:.1f}s"
        )
        admin = (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))
        with e2e.trusting(deployed, tmp_path_factory.mktemp("trust"), auth=admin):
            e2e.wait_until_serving(deployed.tracking_uri, auth=admin)
            yield deployed


def _stack_services(client: docker.DockerClient) -> list[Service]:
    services: list[Service] = client.services.list(filters={"label": STACK_LABEL})
    return services


def _mlflow_service(client: docker.DockerClient) -> Service:
    found = client.services.list(filters={"label": [STACK_LABEL, MLFLOW_ROLE]})
    assert len(found) == 1, [service.name for service in found]
    service: Service = found[0]
    return service


def _task_containers(client: docker.DockerClient, service: Service) -> list[Container]:
    """Every container of the service's tasks on this node, the exited ones swarm keeps too."""
    containers: list[Container] = client.containers.list(
        all=True, filters={"label": f"com.docker.swarm.service.id={service.id}"}
    )
    return containers


def _healthy_tasks(client: docker.DockerClient, service: Service) -> dict[str, dict[str, Any]]:
    """The service's tasks that should run and do, their container healthy: task id -> task."""
    healthy = {}
    for task in service.tasks(filters={"desired-state": "running"}):
        status = task["Status"]
        container_id = status.get("ContainerStatus", {}).get("ContainerID")
        if status["State"] != "running" or not container_id:
            continue
        try:
            container = client.containers.get(container_id)
        except docker.errors.NotFound:  # removed between the listing and the look-up
            continue
        if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
            healthy[task["ID"]] = task
    return healthy


def _wait_for_healthy_tasks(
    client: docker.DockerClient, service: Service, *, without: Collection[str] = (), timeout: float = HEALTHY_TIMEOUT
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Seconds until the service has REPLICAS healthy tasks, none of them in `without`; and those tasks."""
    started = time.monotonic()
    healthy: dict[str, dict[str, Any]] = {}
    while time.monotonic() - started < timeout:
        healthy = _healthy_tasks(client, service)
        if len(healthy) == REPLICAS and not set(healthy) & set(without):
            return time.monotonic() - started, healthy
        time.sleep(0.5)
    raise AssertionError(f"{service.name}: not {REPLICAS} healthy tasks (without {without}) in {timeout}s: {healthy}")


def _container_spec(task_or_service: dict[str, Any]) -> dict[str, Any]:
    spec = task_or_service["Spec"]
    container_spec: dict[str, Any] = (
        spec["ContainerSpec"] if "ContainerSpec" in spec else spec["TaskTemplate"]["ContainerSpec"]
    )
    return container_spec


def _workers(container_spec: dict[str, Any]) -> int:
    command = [*container_spec.get("Command", []), *container_spec.get("Args", [])]
    assert command.count("--workers") == 1, command
    return int(command[command.index("--workers") + 1])


def test_an_upgrade_stops_every_old_task_first_migrates_once_and_loses_nothing(
    swarm_stack: e2e.Deployed, docker_client: docker.DockerClient
) -> None:
    current = str(stack_config("dev")["mlflowVersion"])
    assert swarm_stack.outputs["mlflow_version"] == UPGRADE_FROM_VERSION != current
    old = _mlflow_service(docker_client)
    _wait_for_healthy_tasks(docker_client, old, timeout=60)
    with (
        load.Load(swarm_stack.tracking_uri, clients=LOAD_CLIENTS, retries=UPGRADE_RETRIES) as traffic,
        load.ReleaseProbe(swarm_stack.tracking_uri) as probe,
    ):
        time.sleep(STEADY_SECONDS)
        started = time.monotonic()
        upgraded = e2e.redeploy(swarm_stack, {"mlflowVersion": current})
        deployed_in = time.monotonic() - started
        # The module's stack is on the current release now: the later tests redeploy from here
        # (from the old release's settings, `up` would be a downgrade, which the server refuses).
        swarm_stack.overrides, swarm_stack.outputs = upgraded.overrides, upgraded.outputs
        time.sleep(STEADY_SECONDS)
    result = traffic.verify()
    outage = probe.longest_outage()
    e2e.report(
        f"upgrade {UPGRADE_FROM_VERSION} -> {current} on swarm under load: deploy returned after {deployed_in:.1f}s; "
        f"no release answered for {outage:.1f}s (probe every 0.25 s); {result.summary()}"
    )
    assert upgraded.outputs["mlflow_version"] == current
    # Replaced, not rolled: a new service, and never an old server answering after a new one.
    new = _mlflow_service(docker_client)
    assert new.id != old.id
    assert probe.releases() == [UPGRADE_FROM_VERSION, current]
    assert outage > 0.5
    _, tasks = _wait_for_healthy_tasks(docker_client, new, timeout=60)
    assert {_container_spec(task)["Image"] for task in tasks.values()} == {_container_spec(new.attrs)["Image"]}
    # One task asked for the backup and migrated; the others waited for it and found the schema current.
    logs = [container.logs().decode(errors="replace") for container in _task_containers(docker_client, new)]
    backups = [line for text in logs for line in text.splitlines() if "prepare_db: pre-upgrade backup " in line]
    assert len(backups) == 1, backups
    assert result.lost == []
    assert result.failed == [], result.failed[:5]


def test_a_realistic_run_through_the_front_door_on_3_healthy_spread_tasks(
    swarm_stack: e2e.Deployed, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    client = MlflowClient(swarm_stack.tracking_uri)
    started = time.monotonic()
    seed = e2e.write_seed(client, tmp_path / "seed")
    written = time.monotonic() - started
    # Read back through the front door, request by request on whichever task the proxy picks: the
    # artifact and the model version resolve on every replica because they live in the bucket.
    e2e.verify_seed(client, seed, tmp_path / "down")

    service = _mlflow_service(docker_client)
    assert service.attrs["Spec"]["Mode"] == {"Replicated": {"Replicas": REPLICAS}}
    _, healthy = _wait_for_healthy_tasks(docker_client, service, timeout=60)
    assert all(_workers(_container_spec(task)) == WORKERS_BEFORE for task in healthy.values())
    # Spread: on every ready, active node, as many tasks as on any other, give or take one (on one node: all on it).
    nodes = [
        node.id
        for node in docker_client.nodes.list()
        if node.attrs["Status"]["State"] == "ready" and node.attrs["Spec"]["Availability"] == "active"
    ]
    per_node = Counter(task["NodeID"] for task in healthy.values())
    assert set(per_node) <= set(nodes), (per_node, nodes)
    counts = [per_node.get(node, 0) for node in nodes]
    assert max(counts) - min(counts) <= 1, per_node
    e2e.report(
        f"realistic run (params, 1,001 metrics, 12 MB artifact, model version) written in {written:.1f}s and read "
        f"back through the front door; {len(healthy)} MLflow tasks healthy on {len(per_node)} of {len(nodes)} nodes"
    )


def _holds_any(text: str, secrets: set[str]) -> list[str]:
    return sorted(f"{secret[:4]}..." for secret in secrets if secret in text)


def test_no_secret_in_inspect_logs_processes_or_any_volume(
    swarm_stack: e2e.Deployed, s3_store: S3Store, docker_client: docker.DockerClient
) -> None:
    services = _stack_services(docker_client)
    containers = [container for service in services for container in _task_containers(docker_client, service)]
    running = [container for container in containers if container.status == "running"]
    uploaded = secret_scan.uploaded_secrets(running)
    secrets = set(swarm_stack.secrets()) | {s3_store.secret_access_key, s3_store.access_key_id} | set(uploaded)
    # The store's key pair is among what the server received: the scan reads the real secret files.
    assert s3_store.secret_access_key in uploaded, sorted(uploaded.values())

    for service in services:
        assert not _holds_any(json.dumps(service.attrs), secrets), service.name
        for task in service.tasks():
            assert not _holds_any(json.dumps(task), secrets), (service.name, task["ID"])
    for container in containers:
        assert not _holds_any(json.dumps(container.attrs), secrets), container.name
        logs = container.logs().decode(errors="replace")
        assert not _holds_any(logs, secrets), f"{container.name}: a secret in its logs"
    # A swarm config's data is in `docker config inspect` for anyone with the engine: public files only.
    configs = docker_client.configs.list(filters={"label": STACK_LABEL})
    for config in configs:
        data = base64.b64decode(config.attrs["Spec"].get("Data", "")).decode(errors="replace")
        assert not _holds_any(data, secrets), config.name
    processes = secret_scan.scan_processes(running, secrets)
    # Swarm secrets are in memory in the task (a tmpfs), never in a volume: not even a secrets volume.
    volumes = secret_scan.scan_volumes(containers, secrets)
    assert volumes.secret_files == []
    labelled = docker_client.volumes.list(filters={"label": STACK_LABEL})
    assert {volume.attrs["Mountpoint"] for volume in labelled} <= volumes.sources, [v.name for v in labelled]
    e2e.report(
        f"{len(secrets)} secrets (uploaded as {sorted(uploaded.values())}) absent from docker inspect of "
        f"{len(services)} services, their tasks and {len(containers)} task containers, their logs, "
        f"{len(configs)} configs, {processes} processes and {volumes.files} files of {len(volumes.sources)} volumes"
    )


def test_a_task_killed_under_load_loses_no_acknowledged_write_and_fails_no_request(
    swarm_stack: e2e.Deployed, docker_client: docker.DockerClient
) -> None:
    service = _mlflow_service(docker_client)
    _, before = _wait_for_healthy_tasks(docker_client, service, timeout=60)
    victim_id, victim = next(iter(before.items()))
    with load.Load(swarm_stack.tracking_uri, clients=LOAD_CLIENTS) as traffic:
        time.sleep(STEADY_SECONDS)
        acknowledged_before = traffic.acknowledged()
        docker_client.containers.get(victim["Status"]["ContainerStatus"]["ContainerID"]).kill()
        replaced_in, after = _wait_for_healthy_tasks(docker_client, service, without={victim_id})
        time.sleep(STEADY_SECONDS)
    result = traffic.verify()
    e2e.report(
        f"MLflow task {victim_id[:12]} killed under load: a replacement task healthy after {replaced_in:.1f}s; "
        f"{result.summary()}"
    )
    assert len(after) == REPLICAS
    assert result.acknowledged > acknowledged_before
    assert result.lost == []
    assert result.failed == []


def test_a_rolling_update_under_load_loses_nothing_and_leaves_every_task_on_the_new_spec(
    swarm_stack: e2e.Deployed, docker_client: docker.DockerClient
) -> None:
    service = _mlflow_service(docker_client)
    _, before = _wait_for_healthy_tasks(docker_client, service, timeout=60)
    with load.Load(swarm_stack.tracking_uri, clients=LOAD_CLIENTS) as traffic:
        time.sleep(STEADY_SECONDS)
        started = time.monotonic()
        e2e.redeploy(swarm_stack, {"workers": WORKERS_AFTER})
        deployed_in = time.monotonic() - started
        rolled_in, after = _wait_for_healthy_tasks(docker_client, service, without=set(before))
        rollout = time.monotonic() - started
        time.sleep(STEADY_SECONDS)
    result = traffic.verify()
    e2e.report(
        f"rolling update workers {WORKERS_BEFORE} -> {WORKERS_AFTER} under load: deploy returned after "
        f"{deployed_in:.1f}s, every task replaced and healthy after {rollout:.1f}s (+{rolled_in:.1f}s); "
        f"{len(result.failed)} of {result.sent} writes failed; {result.summary()}"
    )
    assert result.lost == []
    assert len(result.failed) <= result.sent * 0.001, result.failed[:5]
    service.reload()
    current = _container_spec(service.attrs)
    assert _workers(current) == WORKERS_AFTER
    assert [_container_spec(task) for task in after.values()] == [current] * REPLICAS
    # Nothing of the old spec is left running.
    running = service.tasks(filters={"desired-state": "running"})
    assert sorted(task["ID"] for task in running) == sorted(after)
