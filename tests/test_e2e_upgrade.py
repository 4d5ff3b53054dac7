"""End to end: changing `mlflowVersion` on a stack with data upgrades the schema and keeps the data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from alembic.script import ScriptDirectory
from mlflow.tracking import MlflowClient

from tests import e2e
from tests.local_deploy.__main__ import UPGRADE_FROM_VERSION
from tests.stack_config import stack_config

pytestmark = pytest.mark.docker

# A stack of its own (no stack file: Pulumi.yaml's defaults) on a port of its own. Without a stack
# file it would be a shared stack (environmentKind defaults to shared); this throwaway one is personal.
STACK = "upgrade"
# A personal stack on loopback, plain HTTP: this test is about the schema, not the front door.
OVERRIDES = {"hostPort": 5002, "tlsMode": "off", "environmentKind": "dev"}


def _schema_version(deployed: e2e.Deployed, client: docker.DockerClient) -> str:
    result = deployed.container(client, "postgres").exec_run(
        ["psql", "-h", "127.0.0.1", "-U", "mlflow", "-d", "mlflow", "-Atc", "select version_num from alembic_version"],
        environment={"PGPASSWORD": deployed.db_password},
    )
    assert result.exit_code == 0, result.output
    return str(result.output.decode().strip())


def _head_of_installed_mlflow() -> str:
    import mlflow.store.db_migrations as migrations

    head = ScriptDirectory(str(Path(migrations.__file__).parent)).get_current_head()
    assert head
    return head


@pytest.fixture(scope="module")
def old(docker_client: docker.DockerClient) -> Iterator[e2e.Deployed]:
    with e2e.stack(STACK, {**OVERRIDES, "mlflowVersion": UPGRADE_FROM_VERSION}) as deployed:
        yield deployed


def test_upgrade_runs_db_upgrade_and_keeps_the_data(old: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    current = str(stack_config("dev")["mlflowVersion"])
    assert current != UPGRADE_FROM_VERSION
    assert old.outputs["mlflow_version"] == UPGRADE_FROM_VERSION
    client = MlflowClient(old.tracking_uri)
    experiment_id = client.create_experiment("before-upgrade")
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "framework", "sklearn")
    for step in range(100):
        client.log_metric(run.info.run_id, "loss", 1 / (step + 1), step=step)
    old_schema = _schema_version(old, docker_client)

    new = e2e.redeploy(old, {"mlflowVersion": current})
    assert new.outputs["mlflow_version"] == current
    server = new.container(docker_client, "mlflow")
    logs = server.logs().decode(errors="replace")
    assert "prepare_db: upgrading the tracking schema" in logs
    # Before upgrading, the entrypoint had the backup container take a backup of the old schema.
    taken = [line for line in logs.splitlines() if line.startswith("prepare_db: pre-upgrade backup ")]
    assert len(taken) == 1, logs
    backup_id = taken[0].split()[3]
    assert logs.index(taken[0]) < logs.index("prepare_db: upgrading the tracking schema")
    backup = docker_client.containers.get(str(new.outputs["backup_container_name"]))
    listed = backup.exec_run(["mlflow-backup", "list"], demux=True)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.output[0].decode().splitlines()}
    assert rows[backup_id][2] == "pre-upgrade"
    assert rows[backup_id][-1] == old_schema
    e2e.report(f"pre-upgrade backup {backup_id} holds schema {old_schema}")
    new_schema = _schema_version(new, docker_client)
    e2e.report(f"upgrade {UPGRADE_FROM_VERSION} -> {current}: schema {old_schema} -> {new_schema}")
    assert new_schema == _head_of_installed_mlflow()

    client = MlflowClient(new.tracking_uri)
    assert client.get_run(run.info.run_id).data.params == {"framework": "sklearn"}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(step, 1 / (step + 1)) for step in range(100)]
    experiment = client.get_experiment_by_name("before-upgrade")
    assert experiment is not None
    assert experiment.experiment_id == experiment_id
