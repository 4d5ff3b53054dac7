"""End to end: a release older than the data, and a Postgres major other than the data's,
stop before anything serves, with a message that names the config key and the way out."""

from __future__ import annotations

import io
from collections.abc import Iterator

import docker
import pytest

from tests import e2e
from tools.local_deploy import deployer
from tools.local_deploy.__main__ import UPGRADE_FROM_VERSION
from tools.stack_config import stack_config

pytestmark = pytest.mark.docker

STACK = "refusals"
OVERRIDES = {"hostPort": 5005, "tlsMode": "off", "environmentKind": "dev"}


@pytest.fixture(scope="module")
def current(docker_client: docker.DockerClient) -> Iterator[e2e.Deployed]:
    with e2e.stack(STACK, OVERRIDES) as deployed:
        yield deployed


def test_a_downgrade_below_the_schema_stops_before_serving(current: e2e.Deployed) -> None:
    newest = str(stack_config("dev")["mlflowVersion"])
    with pytest.raises(deployer.DeployError) as raised:
        e2e.redeploy(current, {"mlflowVersion": UPGRADE_FROM_VERSION})
    message = str(raised.value)
    [line] = [line for line in message.splitlines() if "config key 'mlflowVersion'" in line]
    e2e.report(f"downgrade to {UPGRADE_FROM_VERSION}: {line}")
    assert f"config key 'mlflowVersion' is {UPGRADE_FROM_VERSION}" in line
    assert f"written by MLflow {newest}" in line
    assert f"set mlflowVersion to {newest} or newer" in line


def test_a_postgres_major_other_than_the_datas_stops_with_the_procedure(
    current: e2e.Deployed, docker_client: docker.DockerClient
) -> None:
    # An image that says it is PostgreSQL 16 (PG_MAJOR, as the official images set it)
    # over the stand-in's 15 data directory: only the entrypoint's check reads it.
    config = deployer.standin_config() if deployer.standins_enabled() else stack_config("dev")
    base = str(config["postgresImage"])
    claimed = "mlflow-platform-e2e/postgres:16-claimed"
    dockerfile = f"FROM {base}\nENV PG_MAJOR=16\n".encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=claimed, rm=True, pull=False)
    try:
        data_major = current.container(docker_client, "postgres").exec_run(
            ["cat", "/var/lib/postgresql/data/pgdata/PG_VERSION"]
        )
        assert data_major.exit_code == 0
        with pytest.raises(deployer.DeployError) as raised:
            e2e.redeploy(current, {"postgresImage": claimed})
        message = str(raised.value)
        lines = [line for line in message.splitlines() if line.startswith("mlflow-platform:")]
        e2e.report("postgresImage with another major: " + " / ".join(dict.fromkeys(lines)))
        major = data_major.output.decode().strip()
        assert f"config key 'postgresImage' is {claimed} (PostgreSQL 16)" in message
        assert f"holds a PostgreSQL {major} cluster" in message
        assert "README.md, section 'Upgrading Postgres to a new major version'" in message
    finally:
        deployer.down(STACK)
        docker_client.images.remove(claimed, force=True)
