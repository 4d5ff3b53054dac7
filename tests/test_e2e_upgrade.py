"""End to end: changing `mlflowVersion` on a stack with data upgrades the schema and keeps the data;
the README's rollback (stop the server, restore the pre-upgrade backup, redeploy the old release)
brings back the old release on the data of before the upgrade."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from alembic.script import ScriptDirectory
from mlflow.tracking import MlflowClient

from tests import e2e
from tools.local_deploy.__main__ import UPGRADE_FROM_VERSION
from tools.stack_config import stack_config

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


@dataclass
class Upgraded:
    """What the upgrade test leaves for the rollback test."""

    new: e2e.Deployed
    backup_id: str
    old_schema: str
    new_schema: str
    experiment_id: str
    run_id: str


@pytest.fixture(scope="module")
def old(docker_client: docker.DockerClient) -> Iterator[e2e.Deployed]:
    with e2e.stack(STACK, {**OVERRIDES, "mlflowVersion": UPGRADE_FROM_VERSION}) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def upgraded() -> dict[str, Upgraded]:
    return {}


def _assert_data_of_before_the_upgrade(client: MlflowClient, experiment_id: str, run_id: str) -> None:
    assert client.get_run(run_id).data.params == {"framework": "sklearn"}
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(step, 1 / (step + 1)) for step in range(100)]
    experiment = client.get_experiment_by_name("before-upgrade")
    assert experiment is not None
    assert experiment.experiment_id == experiment_id


def test_upgrade_runs_db_upgrade_and_keeps_the_data(
    old: e2e.Deployed, upgraded: dict[str, Upgraded], docker_client: docker.DockerClient
) -> None:
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
    # The release of the data (prepare_db's comment on the schema), not the one the stack now configures.
    manifest = backup.exec_run(["cat", f"/var/lib/postgresql/data/{backup_id}/manifest.json"])
    assert manifest.exit_code == 0, manifest.output
    assert f'"mlflow_version": "{UPGRADE_FROM_VERSION}"' in manifest.output.decode()
    e2e.report(f"pre-upgrade backup {backup_id}: schema {old_schema}, manifest mlflow_version {UPGRADE_FROM_VERSION}")
    new_schema = _schema_version(new, docker_client)
    e2e.report(f"upgrade {UPGRADE_FROM_VERSION} -> {current}: schema {old_schema} -> {new_schema}")
    assert new_schema == _head_of_installed_mlflow()

    _assert_data_of_before_the_upgrade(MlflowClient(new.tracking_uri), experiment_id, run.info.run_id)
    upgraded["stack"] = Upgraded(new, backup_id, old_schema, new_schema, experiment_id, run.info.run_id)


def test_rollback_stops_the_server_restores_the_pre_upgrade_backup_and_redeploys_the_old_release(
    upgraded: dict[str, Upgraded], docker_client: docker.DockerClient
) -> None:
    """The README's rollback, in its order: stop, restore, then `mlflowVersion` back and up."""
    if "stack" not in upgraded:
        pytest.skip("the upgrade test did not get as far as an upgraded stack")
    state = upgraded["stack"]
    new = state.new
    # Written after the upgrade: the rollback goes back to before it, so this goes.
    MlflowClient(new.tracking_uri).create_experiment("after-upgrade")

    # 1. Stop the server: restarted, the newer release would upgrade the restored schema again.
    server = new.container(docker_client, "mlflow")
    server.stop(timeout=60)
    server.reload()
    assert server.status == "exited", server.status

    # 2. Restore the pre-upgrade backup with the step the backup container prints.
    backup = new.container(docker_client, "backup")
    printed = backup.exec_run(["mlflow-backup", "restore", state.backup_id], demux=True)
    stderr = (printed.output[1] or b"").decode()
    assert printed.exit_code == 2, stderr
    command = stderr.strip().splitlines()[-1]
    assert command.startswith("docker run --rm "), stderr
    started = time.monotonic()
    restored = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=600, check=False)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.strip().splitlines()[-1] == f"restored {state.backup_id}"
    restore_seconds = time.monotonic() - started
    assert _schema_version(new, docker_client) == state.old_schema
    server.reload()
    assert server.status == "exited", "the newer server came back during the restore"

    # 3. mlflowVersion back and up: the old release's server replaces the stopped one.
    started = time.monotonic()
    rolled_back = e2e.redeploy(new, {"mlflowVersion": UPGRADE_FROM_VERSION})
    redeploy_seconds = time.monotonic() - started
    assert rolled_back.outputs["mlflow_version"] == UPGRADE_FROM_VERSION
    serving_seconds = e2e.wait_until_serving(rolled_back.tracking_uri)
    schema = _schema_version(rolled_back, docker_client)
    assert schema == state.old_schema
    logs = rolled_back.container(docker_client, "mlflow").logs().decode(errors="replace")
    # The old release found its own schema: nothing to upgrade, so no backup was asked for.
    assert "prepare_db: pre-upgrade backup " not in logs, logs
    client = MlflowClient(rolled_back.tracking_uri)
    _assert_data_of_before_the_upgrade(client, state.experiment_id, state.run_id)
    assert client.get_experiment_by_name("after-upgrade") is None
    e2e.report(
        f"rollback to {UPGRADE_FROM_VERSION} from pre-upgrade backup {state.backup_id}: schema "
        f"{state.new_schema} -> {schema} (pre-upgrade {state.old_schema}); restore {restore_seconds:.1f}s, "
        f"redeploy {redeploy_seconds:.1f}s, serving {serving_seconds:.1f}s after"
    )
