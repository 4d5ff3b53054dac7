"""externalDatabaseUrl under mocks: no Postgres in the stack, verified TLS, no secret in the open."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.certs import self_signed
from tests.conftest import CONTAINER, RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME
from tests.expected import config_upload, docker_name, network_name, secret_upload
from tests.harness import declaration

ADMIN_URL = "postgresql://dbadmin:Admin0Secret0Password0xyz123@db.example.internal:6432/postgres"
CA = self_signed(["Managed Database CA"], ca=True).certificate.strip()
OVERRIDES = {"externalDatabaseUrl": ADMIN_URL, "externalDatabaseCaCertificate": CA}
CA_FILE = "/run/secrets/database-ca.pem"
TLS_ENV = ["PGSSLMODE=verify-full", f"PGSSLROOTCERT={CA_FILE}"]
# Every workload that opens a database connection.
CLIENTS = ("db-bootstrap", "mlflow", "gc", "backup")
OPEN_INPUTS = ("envs", "command", "entrypoints", "labels", "healthcheck")


def _containers(stack: str) -> dict[str, Any]:
    return {str(r.inputs["name"]): r for r in declaration(stack, OVERRIDES).mocks.of_type(CONTAINER)}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_no_postgres_container_volume_or_socket_is_declared(stack: str) -> None:
    mocks = declaration(stack, OVERRIDES).mocks
    names = {str(r.inputs["name"]) for r in mocks.of_type(CONTAINER)}
    assert docker_name(stack, "postgres") not in names
    assert {"db-bootstrap", "mlflow", "gc", "backup"} <= {
        name.removeprefix(f"mlflow-platform-{stack}-") for name in names
    }
    volumes = {str(r.inputs["name"]) for r in mocks.of_type(VOLUME)}
    assert not {docker_name(stack, "pgdata"), docker_name(stack, "pgsocket")} & volumes
    # The Postgres image stays: the backups' pg_dump; no superuser password is generated.
    assert [r.name for r in mocks.of_type(REMOTE_IMAGE) if "database" in r.name] == ["mlflow-database-client-image"]
    assert "mlflow-postgres-superuser-password" not in {r.name for r in mocks.of_type(RANDOM_PASSWORD)}
    for container in mocks.of_type(CONTAINER):
        mounts = json.dumps(container.inputs.get("volumes"))
        assert "pgsocket" not in mounts, container.name
        assert "/var/run/postgresql" not in mounts, container.name
    values = declaration(stack, OVERRIDES).values
    assert "postgres_container_name" not in values
    assert "postgres_volume_name" not in values


def test_the_bootstrap_gets_the_admin_url_as_its_0400_file_and_the_ca_as_a_public_one() -> None:
    found = declaration("prod", OVERRIDES)
    job = _containers("prod")[docker_name("prod", "db-bootstrap")]
    password = next(r for r in found.mocks.of_type(RANDOM_PASSWORD) if r.name == "mlflow-database-password")
    assert job.inputs["envs"] == [
        "POSTGRES_ADMIN_URL_FILE=/run/secrets/database-admin-url",
        "POSTGRES_USER=mlflow",
        "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
        "POSTGRES_DB=mlflow",
        "POSTGRES_AUTH_DB=mlflow_auth",
        *TLS_ENV,
    ]
    assert job.inputs["uploads"] == [
        secret_upload("/run/secrets/database-admin-url", ADMIN_URL, "10001"),
        secret_upload("/run/secrets/postgres-password", password.outputs["result"], "10001"),
        config_upload(CA_FILE, CA),
    ]
    assert job.secret_inputs() == {"uploads"}
    # No socket: it reaches the database over the front network's route out, and only that network.
    assert [n["name"] for n in job.inputs["networksAdvanced"]] == [network_name("prod")]
    assert job.inputs["volumes"] == [{"containerPath": "/run/secrets"}]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_database_client_verifies_the_server_against_the_ca(stack: str) -> None:
    containers = _containers(stack)
    for role in CLIENTS:
        container = containers[docker_name(stack, role)]
        uploads = {u["file"]: u for u in container.inputs["uploads"]}
        assert uploads[CA_FILE] == config_upload(CA_FILE, CA), role
        if role == "backup":
            config = uploads["/etc/mlflow-backup/backup.conf"]["content"]
            assert config.endswith(
                f"PGSSLMODE='verify-full'\nPGSSLROOTCERT='{CA_FILE}'\nexport PGSSLMODE PGSSLROOTCERT\n"
            )
            assert "PGHOST='db.example.internal'\nPGPORT='6432'\n" in config
            # The one-off restore container joins the front network (its route out), not the internal one.
            assert f"NETWORK_NAME='{network_name(stack)}'\n" in config
        else:
            assert [env for env in container.inputs["envs"] if env.startswith("PGSSL")] == TLS_ENV, role
        if role in ("mlflow", "gc"):
            assert "POSTGRES_HOST=db.example.internal" in container.inputs["envs"]
            assert "POSTGRES_PORT=6432" in container.inputs["envs"]


def test_the_exported_backend_store_uri_demands_verify_full() -> None:
    values = declaration("dev", OVERRIDES).values
    uri = urlsplit(str(values["backend_store_uri"]))
    assert (uri.scheme, uri.hostname, uri.port, uri.path) == (
        "postgresql+psycopg",
        "db.example.internal",
        6432,
        "/mlflow",
    )
    assert parse_qs(uri.query) == {"sslmode": ["verify-full"], "sslrootcert": [CA_FILE]}
    assert "backend_store_uri" in declaration("dev", OVERRIDES).secret_outputs


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_no_secret_in_the_open(stack: str) -> None:
    found = declaration(stack, OVERRIDES)
    secrets = {"admin URL": ADMIN_URL, "admin password": "Admin0Secret0Password0xyz123"}
    secrets |= {r.name: str(r.outputs["result"]) for r in found.mocks.of_type(RANDOM_PASSWORD)}
    for container in found.mocks.of_type(CONTAINER):
        exposed = json.dumps({key: container.inputs.get(key) for key in OPEN_INPUTS})
        for name, value in secrets.items():
            assert value not in exposed, f"{container.name} exposes {name}"
        holding = [u for u in container.inputs["uploads"] if "Admin0Secret0" in str(u["content"])]
        # The admin URL reaches the bootstrap alone.
        assert bool(holding) == container.inputs["name"].endswith("-db-bootstrap"), container.name
    for name, value in found.values.items():
        if "Admin0Secret0" in str(value):
            raise AssertionError(f"stack output {name} carries the admin URL")


def test_the_in_stack_database_declares_no_tls() -> None:
    containers = {str(r.inputs["name"]): r for r in declaration("dev").mocks.of_type(CONTAINER)}
    for role in ("db-bootstrap", "mlflow", "gc"):
        assert not [env for env in containers[docker_name("dev", role)].inputs.get("envs") or [] if "PGSSL" in env]
    assert "sslmode" not in str(declaration("dev").values["backend_store_uri"])
