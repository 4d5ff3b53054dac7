"""End to end: a Postgres minor upgrade keeps the data; a release older than the data, and a Postgres
major other than the data's, stop before anything serves, with a message that names the config key
and the way out."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from mlflow.tracking import MlflowClient

from tests import e2e
from tools.local_deploy import deployer
from tools.local_deploy.__main__ import UPGRADE_FROM_VERSION
from tools.stack_config import stack_config

pytestmark = pytest.mark.docker

STACK = "refusals"
OVERRIDES = {"hostPort": 5005, "tlsMode": "off", "environmentKind": "dev"}


@pytest.fixture(scope="module")
def built_images(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Images a test builds; removed after the stack is (a container may still run one until then)."""
    built: list[str] = []
    yield built
    for tag in built:
        docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def current(docker_client: docker.DockerClient, built_images: list[str]) -> Iterator[e2e.Deployed]:
    with e2e.stack(STACK, OVERRIDES) as deployed:
        yield deployed


def _postgres_image(docker_client: docker.DockerClient, tag: str, dockerfile_tail: str) -> str:
    """An image built on the stack's Postgres image (the stand-in, or Pulumi.yaml's) with one more line."""
    config = deployer.standin_config() if deployer.standins_enabled() else stack_config("dev")
    dockerfile = f"FROM {config['postgresImage']}\n{dockerfile_tail}\n".encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, pull=False)
    return tag


def test_a_postgres_minor_upgrade_keeps_every_row_and_artifact(
    current: e2e.Deployed, docker_client: docker.DockerClient, built_images: list[str], tmp_path: Path
) -> None:
    # A minor release of the same major opens the same data directory: all a minor upgrade
    # is, for the stack, is another postgresImage of that major. The stand-in has one build
    # of Postgres, so the next minor is another image of it (a new ID under a new reference,
    # as 17.6 -> 17.11 is): the container is replaced, the entrypoint's major check passes,
    # and the data volume is opened by the new container.
    client = MlflowClient(current.tracking_uri)
    seed = e2e.write_seed(client, tmp_path / "seed")
    before = current.container(docker_client, "postgres")
    minor = _postgres_image(docker_client, "mlflow-platform-e2e/postgres:minor-next", "LABEL org.example.minor=next")
    built_images.append(minor)
    started = time.monotonic()
    upgraded = e2e.redeploy(current, {"postgresImage": minor})
    seconds = time.monotonic() - started
    after = upgraded.container(docker_client, "postgres")
    assert after.id != before.id
    assert after.image.id == docker_client.images.get(minor).id != before.image.id
    e2e.wait_until_serving(upgraded.tracking_uri)
    e2e.verify_seed(MlflowClient(upgraded.tracking_uri), seed, tmp_path / "read-back")
    e2e.report(f"postgresImage to another minor of the same major: redeployed in {seconds:.1f}s, every row read back")
    # The tests that follow redeploy with the stack's own image (`current`'s overrides).


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
    claimed = _postgres_image(docker_client, "mlflow-platform-e2e/postgres:16-claimed", "ENV PG_MAJOR=16")
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
