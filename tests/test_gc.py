"""GarbageCollector: `mlflow gc` on a schedule, alone and in every stack; the warning about releases whose gc fails."""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi
import pulumi_docker as docker
import pytest

from components.gc import GarbageCollector, gc_warning
from components.settings import ArtifactSettings, GcSettings
from tests.conftest import CONTAINER
from tests.expected import (
    BUCKET_ARTIFACTS,
    BUCKET_ENVIRONMENT,
    DB_PASSWORD,
    MLFLOW_IMAGE,
    PLATFORM_DATABASE,
    STACKS,
    UNIT,
    UNIT_DATABASE,
    UNIT_PASSWORD,
    VOLUME_ARTIFACTS,
    Database,
    bucket_uploads,
    built,
    children,
    containers,
    docker_name,
    hardened,
    mount,
    network_name,
    registered_outputs,
    resolve,
    secret_upload,
    service,
    stopped_with,
    unit_context,
    unit_endpoint,
)
from tests.harness import EngineMocks, declaration, run_program

NO_TELEMETRY = "MLFLOW_DISABLE_TELEMETRY=true"


def _envs(
    database: Database,
    older_than: str,
    interval_seconds: int,
    *extra: str,
    store: tuple[str, ...] = ("ARTIFACTS_DIR=/mlflow/artifacts",),
) -> list[str]:
    return [
        *database.environment(),
        *store,
        f"GC_OLDER_THAN={older_than}",
        f"GC_INTERVAL_SECONDS={interval_seconds}",
        "HOME=/tmp",
        "TMPDIR=/tmp",
        *extra,
    ]


# Pulumi.yaml's gcOlderThan and gcIntervalHours (daily), telemetry off: every stack's.
STACK_ENVS = _envs(PLATFORM_DATABASE, "30d", 86400, NO_TELEMETRY)


def container(
    stack: str,
    *,
    envs: list[str] = STACK_ENVS,
    image: object = MLFLOW_IMAGE,
    password: object = DB_PASSWORD,
    bucket: bool = False,
) -> dict[str, Any]:
    uploads = [secret_upload("/run/secrets/postgres-password", password, "10001")]
    # Read-write, unlike the backups' mount: gc deletes purged runs' artifacts.
    volumes: list[dict[str, Any]] = [mount(stack, "artifacts", "/mlflow/artifacts"), {"containerPath": "/run/secrets"}]
    if bucket:
        # With a bucket it deletes them there, with the server's key pair as a file, and mounts no volume.
        uploads += bucket_uploads("10001")
        volumes = [{"containerPath": "/run/secrets"}]
    return {
        **hardened(stack, "gc", 512, 4096),
        # Not waited for: a gc that fails must not block a deployment; it shows as unhealthy.
        **service(stack, wait=False),
        **stopped_with("SIGTERM", 30),
        # Postgres on the internal network; the front one keeps a way out (an object store next).
        "networksAdvanced": [{"name": network_name(stack)}, {"name": f"{network_name(stack)}-db"}],
        "name": docker_name(stack, "gc"),
        # The server's image, by ID: the same MLflow as the server.
        "image": image,
        "user": "10001:10001",
        "entrypoints": ["/usr/local/bin/mlflow-gc"],
        "command": ["loop"],
        "envs": envs,
        "uploads": uploads,
        "volumes": volumes,
        "readOnly": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=64m"},
        # Its own check: the image's probes the server's port, which this container has not.
        "healthcheck": {
            "tests": ["CMD", "/usr/local/bin/mlflow-gc", "health"],
            "interval": "10s",
            "timeout": "10s",
            "retries": 3,
            "startPeriod": "5m",
        },
    }


@pytest.mark.parametrize(("telemetry", "extra"), [(False, [NO_TELEMETRY]), (True, [])])
def test_the_gc_alone(telemetry: bool, extra: list[str]) -> None:
    mocks = _gc_alone(telemetry, VOLUME_ARTIFACTS)
    gc = mocks.one(CONTAINER, "gc-container")
    envs = _envs(UNIT_DATABASE, "7d", 7200, *extra)
    assert gc.inputs == resolve(container(UNIT, envs=envs, image="sha256:" + "a" * 64, password=UNIT_PASSWORD), mocks)
    assert gc.secret_inputs() == {"uploads"}


def test_with_a_bucket_gc_deletes_there_with_the_key_pair_as_a_file() -> None:
    mocks = _gc_alone(False, BUCKET_ARTIFACTS)
    gc = mocks.one(CONTAINER, "gc-container")
    envs = _envs(UNIT_DATABASE, "7d", 7200, NO_TELEMETRY, store=tuple(BUCKET_ENVIRONMENT))
    expected = container(UNIT, envs=envs, image="sha256:" + "a" * 64, password=UNIT_PASSWORD, bucket=True)
    assert gc.inputs == resolve(expected, mocks)
    assert gc.secret_inputs() == {"uploads"}


def _gc_alone(telemetry: bool, artifacts: ArtifactSettings) -> EngineMocks:
    def build() -> GarbageCollector:
        server = docker.Container("mlflow-server-container", image="mlflow")
        return GarbageCollector(
            "mlflow-gc",
            {
                "stack": dataclasses.replace(unit_context(), database_network=f"{network_name(UNIT)}-db"),
                "image": "sha256:" + "a" * 64,
                "artifacts_volume_name": "mlflow-platform-unit-artifacts",
                "artifacts": artifacts,
                "database": unit_endpoint(),
                "mlflow_version": "3.18.1",
                "gc": GcSettings(older_than="7d", interval_hours=2),
                "telemetry_enabled": telemetry,
                "start_after": [server],
            },
        )

    mocks, _ = built(build)
    assert children(mocks, "mlflow-gc") == {"mlflow-gc-container": CONTAINER}
    gc = mocks.one(CONTAINER, "gc-container")
    # After the server, which creates and upgrades the schema.
    assert gc.dependencies == [mocks.one(CONTAINER, "server-container").urn]
    assert registered_outputs(mocks, "mlflow-gc") == {"container_name": "mlflow-platform-unit-gc"}
    return mocks


@pytest.mark.parametrize("stack", STACKS)
def test_the_gc_of_every_stack(stack: str) -> None:
    found = declaration(stack)
    gc = containers(found.mocks)[docker_name(stack, "gc")]
    assert gc.inputs == resolve(container(stack), found.mocks)


def test_a_two_hour_schedule() -> None:
    mocks = declaration("dev", {"backupIntervalMinutes": 1, "backupIntervalHours": 5, "gcIntervalHours": 2}).mocks
    gc = containers(mocks)["mlflow-platform-dev-gc"]
    assert gc.inputs == resolve(container("dev", envs=_envs(PLATFORM_DATABASE, "30d", 7200, NO_TELEMETRY)), mocks)


@pytest.mark.parametrize(
    ("version", "warned"),
    # The locked releases (mlflowVersion accepts no other).
    [("3.12.0", True), ("3.17.2", False)],
)
def test_a_release_whose_gc_fails_on_postgres_is_warned_about(
    version: str, warned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    about: list[object] = []

    def warn(message: str, resource: object = None, **_: object) -> None:
        said.append(message)
        about.append(resource)

    monkeypatch.setattr(pulumi.log, "warn", warn)

    @pulumi.runtime.test
    def deploy() -> pulumi.Output[Any]:
        _, outputs = run_program("dev", {"mlflowVersion": version})
        return pulumi.Output.from_input(outputs["mlflow_container_name"])

    deploy()
    expected = (
        f"mlflowVersion {version}: `mlflow gc --older-than` fails on Postgres before MLflow 3.17.0 "
        "(mlflow/mlflow#25574), so deleted runs are not purged and the gc container stays unhealthy "
        "until mlflowVersion is raised"
    )
    assert said == ([expected] if warned else [])
    # Shown against the gc component in `pulumi up`'s output.
    assert all(isinstance(resource, GarbageCollector) for resource in about)


@pytest.mark.parametrize(("version", "warned"), [("3.16.1", True), ("3.17.0", False), ("4.0.0", False)])
def test_the_warning_starts_at_the_first_release_whose_gc_works(version: str, warned: bool) -> None:
    assert (gc_warning(version) is not None) == warned
