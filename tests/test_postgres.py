"""PostgresDatabase: its generated passwords, pinned image, volumes and container, alone and in every stack."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from components.postgres import PostgresDatabase, server_command
from components.settings import DatabaseSettings
from tests.conftest import CONTAINER, RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME
from tests.expected import (
    POSTGRES_IMAGE,
    POSTGRES_REFERENCE,
    STACKS,
    UNIT,
    SecretOf,
    SourceOf,
    built,
    children,
    containers,
    declared_volume,
    docker_name,
    hardened,
    mount,
    network_name,
    passwords_of,
    registered_outputs,
    resolve,
    secret_upload,
    service,
    stopped_with,
    strong_password,
    unit_context,
    volumes_of,
)
from tests.harness import declaration

ENTRYPOINT = "/opt/mlflow-platform/postgres-entrypoint"
SUPERUSER_PASSWORD_FILE = "/run/secrets/postgres-superuser-password"
PASSWORDS = ("mlflow-postgres-password", "mlflow-postgres-superuser-password")


def _command(*memory_settings: str) -> list[str]:
    """`postgres -c ...`: the settings sized to the memory limit, then durability, spelled out."""
    command = ["postgres"]
    for setting in [*memory_settings, "fsync=on", "synchronous_commit=on"]:
        command += ["-c", setting]
    return command


def container(
    stack: str,
    *,
    memory_mb: int = 1024,
    command: tuple[str, ...] = (
        # The floor of 100 connections; a quarter of 1 GiB for shared buffers, three quarters as the cache.
        "max_connections=100",
        "shared_buffers=256MB",
        "effective_cache_size=768MB",
        "maintenance_work_mem=64MB",
    ),
    alias: str = "postgres",
    image_reference: str = "postgres:17.11",
) -> dict[str, Any]:
    """The Postgres container of `stack`, with Pulumi.yaml's settings unless told otherwise."""
    return {
        **hardened(stack, "database", memory_mb, 2304),
        **service(stack),
        # Postgres's fast shutdown, with time for the checkpoint of a busy cluster.
        **stopped_with("SIGINT", 120),
        # On the internal database network alone: no route out, and only its clients reach it.
        "networksAdvanced": [{"name": f"{network_name(stack)}-db", "aliases": [alias]}],
        "name": docker_name(stack, "postgres"),
        # By ID: a changed postgresImage replaces the container.
        "image": POSTGRES_IMAGE,
        # As postgres itself: the official entrypoint then needs no root and no capabilities.
        "user": "999:999",
        "entrypoints": [ENTRYPOINT],
        "command": _command(*command),
        # initdb's superuser is the official image's default, with a password of its own in a file.
        "envs": [
            "POSTGRES_USER=postgres",
            f"POSTGRES_PASSWORD_FILE={SUPERUSER_PASSWORD_FILE}",
            "PGDATA=/var/lib/postgresql/data/pgdata",
            f"POSTGRES_IMAGE_REFERENCE={image_reference}",
        ],
        # Only the superuser's password: MLflow's is the bootstrap's to apply.
        "uploads": [
            secret_upload(SUPERUSER_PASSWORD_FILE, SecretOf("postgres-superuser-password"), "999"),
            {"file": ENTRYPOINT, "content": SourceOf("mlflow/postgres/entrypoint.sh"), "permissions": "0755"},
        ],
        "volumes": [
            mount(stack, "pgdata", "/var/lib/postgresql/data"),
            mount(stack, "pgsocket", "/var/run/postgresql"),
            # A scratch volume for the uploaded entrypoint: Docker uploads nothing into a read-only root.
            {"containerPath": "/opt/mlflow-platform"},
            {"containerPath": "/run/secrets"},
        ],
        # A read-only root: the image writes only to its volumes, /dev/shm and this scratch /tmp.
        "readOnly": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=64m"},
        "shmSize": 256,
        # Over TCP: during its first start the entrypoint runs a socket-only server for init scripts.
        "healthcheck": {
            "tests": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"],
            "interval": "2s",
            "timeout": "5s",
            "retries": 30,
            "startPeriod": "30s",
        },
    }


# What the stack files change: prod's postgresMemoryMb (4096), and its 4 workers with auth
# open up to 120 connections (the others' pools fit in Postgres's default of 100).
PROD_SETTINGS = [
    "max_connections=140",
    "shared_buffers=1024MB",
    "effective_cache_size=3072MB",
    "maintenance_work_mem=256MB",
]
STACK_CONTAINERS: dict[str, dict[str, Any]] = {"prod": {"memory_mb": 4096, "command": tuple(PROD_SETTINGS)}}


def _volumes(stack: str) -> dict[str, Any]:
    # The socket volume holds no data, but is protected like the others so that every volume of a shared stack is.
    return {
        "mlflow-postgres-data": declared_volume(stack, "pgdata", "database"),
        "mlflow-postgres-socket": declared_volume(stack, "pgsocket", "database"),
    }


@pytest.mark.parametrize("protect", [False, True])
def test_the_database_alone(protect: bool) -> None:
    mocks, database = built(
        lambda: PostgresDatabase(
            "mlflow-postgres",
            {
                "stack": dataclasses.replace(
                    unit_context(protect_data=protect), database_network=f"{network_name(UNIT)}-db"
                ),
                "database": DatabaseSettings(
                    image="postgres:16.4", name="tracking", user="tracker", password_length=40, memory_mb=512
                ),
                "alias": "db",
                "secrets_rotation": "2026-11-27",
                "client_connections": 150,
            },
        )
    )
    assert children(mocks, "mlflow-postgres") == {
        "mlflow-postgres-password": RANDOM_PASSWORD,
        "mlflow-postgres-superuser-password": RANDOM_PASSWORD,
        "mlflow-postgres-image": REMOTE_IMAGE,
        "mlflow-postgres-data": VOLUME,
        "mlflow-postgres-socket": VOLUME,
        "mlflow-postgres-container": CONTAINER,
    }
    rotated = strong_password(40, {"secretsRotation": "2026-11-27"})
    assert passwords_of(mocks) == dict.fromkeys(PASSWORDS, rotated)
    assert mocks.one(REMOTE_IMAGE).inputs == {"name": "postgres:16.4", "keepLocally": True}
    unit_volumes = {name: (inputs, protect, protect) for name, (inputs, _, _) in _volumes(UNIT).items()}
    assert volumes_of(mocks, *unit_volumes) == unit_volumes
    postgres = mocks.one(CONTAINER)
    # Memory settings from the 512 MiB limit; room for 150 client connections and 20 spare.
    memory = ("max_connections=170", "shared_buffers=128MB", "effective_cache_size=384MB", "maintenance_work_mem=32MB")
    expected = container(UNIT, memory_mb=512, command=memory, alias="db", image_reference="postgres:16.4")
    assert postgres.inputs == resolve(expected, mocks)
    assert postgres.secret_inputs() == {"uploads"}
    assert registered_outputs(mocks, "mlflow-postgres") == {
        "container_name": "mlflow-platform-unit-postgres",
        "volume_name": "mlflow-platform-unit-pgdata",
        "socket_volume_name": "mlflow-platform-unit-pgsocket",
        "image_id": resolve(POSTGRES_IMAGE, mocks),
    }
    # What the platform reads off it to describe the endpoint and the bootstrap.
    assert (database.superuser, database.alias, database.port) == ("postgres", "db", 5432)


@pytest.mark.parametrize("stack", STACKS)
def test_the_database_of_every_stack(stack: str) -> None:
    mocks = declaration(stack).mocks
    postgres = containers(mocks)[docker_name(stack, "postgres")]
    expected = container(stack, image_reference=POSTGRES_REFERENCE[stack], **STACK_CONTAINERS.get(stack, {}))
    assert postgres.inputs == resolve(expected, mocks)
    passwords = passwords_of(mocks)
    assert {name: passwords[name] for name in PASSWORDS} == {name: strong_password(32) for name in PASSWORDS}
    assert mocks.one(REMOTE_IMAGE).inputs == {"name": POSTGRES_REFERENCE[stack], "keepLocally": True}
    assert volumes_of(mocks, *_volumes(stack)) == _volumes(stack)


def test_the_uploaded_entrypoint_hands_over_to_the_official_one() -> None:
    script = SourceOf("mlflow/postgres/entrypoint.sh").resolve(declaration("dev").mocks)
    assert script.splitlines()[-1] == 'exec docker-entrypoint.sh "$@"'


@pytest.mark.parametrize(
    ("memory_mb", "clients", "expected"),
    [
        # Below what postgresMemoryMb accepts (128): the function's own floors still hold.
        (
            40,
            20,
            ["max_connections=100", "shared_buffers=16MB", "effective_cache_size=32MB", "maintenance_work_mem=16MB"],
        ),
        # Postgres's floor of 100 connections stays; tiny limits still get workable buffers.
        (
            128,
            20,
            ["max_connections=100", "shared_buffers=32MB", "effective_cache_size=96MB", "maintenance_work_mem=16MB"],
        ),
        # prod's: 4 GiB, 4 workers with auth.
        (4096, 120, PROD_SETTINGS),
        (
            65536,
            960,
            [
                "max_connections=980",
                "shared_buffers=16384MB",
                "effective_cache_size=49152MB",
                "maintenance_work_mem=1024MB",
            ],
        ),
    ],
)
def test_postgres_settings_follow_the_memory_limit(memory_mb: int, clients: int, expected: list[str]) -> None:
    command = server_command(memory_mb, clients)
    assert command[0] == "postgres"
    assert command[1::2] == ["-c"] * 6
    assert command[2::2] == [*expected, "fsync=on", "synchronous_commit=on"]
