"""DatabaseBootstrap: the one-shot job that puts the declared roles and passwords in force, alone and in every stack."""

from __future__ import annotations

from typing import Any

import pulumi_docker as docker
import pytest

from components.db_bootstrap import DatabaseBootstrap, SocketAdmin
from tests.conftest import CONTAINER
from tests.expected import (
    DB_PASSWORD,
    MLFLOW_IMAGE,
    PLATFORM_DATABASE,
    STACKS,
    UNIT,
    UNIT_DATABASE,
    UNIT_PASSWORD,
    Database,
    built,
    children,
    containers,
    docker_name,
    hardened,
    labels,
    mount,
    registered_outputs,
    resolve,
    secret_upload,
    unit_context,
    unit_endpoint,
)
from tests.harness import declaration


def container(
    stack: str,
    *,
    image: object = MLFLOW_IMAGE,
    database: Database = PLATFORM_DATABASE,
    password: object = DB_PASSWORD,
) -> dict[str, Any]:
    """The bootstrap job of `stack`."""
    return {
        **hardened(stack, "database-bootstrap", 256, 4096),
        "labels": [
            *labels(stack, "database-bootstrap"),
            # A replaced Postgres container (new image, restored volume) replaces the bootstrap.
            {"label": "org.mlflow-platform.bootstrapped-container", "value": "mlflow-postgres-container-id"},
        ],
        # Runs once per change, and `pulumi up` waits for its end.
        "restart": "no",
        "mustRun": False,
        "attach": True,
        "logs": True,
        # Postgres's socket is its only way in: no network at all.
        "networkMode": "none",
        "name": docker_name(stack, "db-bootstrap"),
        # The MLflow image: Python and psycopg, and bootstrap_db.py.
        "image": image,
        "user": "10001:10001",
        "entrypoints": ["python", "/opt/mlflow-entrypoint/bootstrap_db.py"],
        "envs": [
            "POSTGRES_SOCKET_DIR=/var/run/postgresql",
            # It removes the superuser's password: it needs none of it.
            "POSTGRES_SUPERUSER=postgres",
            f"POSTGRES_USER={database.role}",
            "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
            f"POSTGRES_DB={database.database}",
            f"POSTGRES_AUTH_DB={database.auth_database}",
        ],
        # The one secret it applies; it empties the file once read, so the exited container keeps no secret.
        "uploads": [secret_upload("/run/secrets/postgres-password", password, "10001")],
        "readOnly": True,
        # The same volume Postgres keeps its socket in; read-only is enough to connect.
        "volumes": [mount(stack, "pgsocket", "/var/run/postgresql", read_only=True), {"containerPath": "/run/secrets"}],
    }


def test_the_bootstrap_alone() -> None:
    def build() -> DatabaseBootstrap:
        postgres = docker.Container("mlflow-postgres-container", image="postgres")
        return DatabaseBootstrap(
            "mlflow-db-bootstrap",
            {
                "stack": unit_context(),
                "image": "sha256:" + "a" * 64,
                "admin": SocketAdmin("mlflow-platform-unit-pgsocket", postgres),
                "database": unit_endpoint(),
            },
        )

    mocks, _ = built(build)
    assert children(mocks, "mlflow-db-bootstrap") == {"mlflow-db-bootstrap-container": CONTAINER}
    job = mocks.one(CONTAINER, "db-bootstrap-container")
    assert job.inputs == container(
        UNIT,
        image="sha256:" + "a" * 64,
        database=UNIT_DATABASE,
        password=UNIT_PASSWORD,
    )
    assert job.secret_inputs() == {"uploads"}
    # Started once Postgres is (health-gated, so: once it is healthy).
    assert job.dependencies == [mocks.one(CONTAINER, "mlflow-postgres-container").urn]
    assert registered_outputs(mocks, "mlflow-db-bootstrap") == {"container_name": "mlflow-platform-unit-db-bootstrap"}


@pytest.mark.parametrize("stack", STACKS)
def test_the_bootstrap_of_every_stack(stack: str) -> None:
    mocks = declaration(stack).mocks
    job = containers(mocks)[docker_name(stack, "db-bootstrap")]
    assert job.inputs == resolve(container(stack), mocks)
