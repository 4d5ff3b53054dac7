"""End to end: backups with a tested restore, gc, Prometheus metrics, telemetry off.

One stack with auth on and test-sized schedules: a backup every minute, three kept,
gc of anything deleted more than a second ago. Tests run in file order; the
schedule test comes last because it freezes the scheduler.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from docker.models.containers import Container
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests import e2e

pytestmark = pytest.mark.docker

STACK = "backups"
OVERRIDES = {
    # A personal stack on loopback, plain HTTP: these tests are about backups, not the front door.
    "environmentKind": "dev",
    "tlsMode": "off",
    "hostPort": 5011,
    "authEnabled": True,
    "backupIntervalMinutes": 1,
    "backupKeep": 3,
    "gcOlderThan": "1s",
    "metricsEnabled": True,
}
BACKUP_DIR = "/var/lib/postgresql/data"
API = "/api/2.0/mlflow"


@pytest.fixture(scope="module")
def deployed(docker_client: docker.DockerClient) -> Iterator[e2e.Deployed]:
    with e2e.stack(STACK, OVERRIDES) as stack:
        e2e.report(f"backups stack up to healthy: {stack.seconds_to_healthy:.1f}s")
        yield stack


@pytest.fixture(scope="module")
def admin(deployed: e2e.Deployed) -> tuple[str, str]:
    return (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))


@pytest.fixture(scope="module")
def client(deployed: e2e.Deployed, admin: tuple[str, str]) -> Iterator[MlflowClient]:
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = admin
    e2e.wait_until_serving(deployed.tracking_uri, auth=admin)
    yield MlflowClient(deployed.tracking_uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _backup(deployed: e2e.Deployed, docker_client: docker.DockerClient) -> Container:
    return docker_client.containers.get(str(deployed.outputs["backup_container_name"]))


def _gc(deployed: e2e.Deployed, docker_client: docker.DockerClient) -> Container:
    return docker_client.containers.get(str(deployed.outputs["gc_container_name"]))


def _exec(container: Container, *command: str) -> tuple[int, str, str]:
    result = container.exec_run(list(command), demux=True)
    stdout, stderr = result.output
    return result.exit_code, (stdout or b"").decode(), (stderr or b"").decode()


def _backup_now(backup: Container, reason: str = "manual") -> str:
    code, stdout, stderr = _exec(backup, "mlflow-backup", "now", reason)
    assert code == 0, stderr
    backup_id = stdout.strip().splitlines()[-1]
    assert len(backup_id) == len("20260101T000000Z"), stdout
    assert backup_id.endswith("Z"), stdout
    return backup_id


def _list(backup: Container) -> list[list[str]]:
    code, stdout, stderr = _exec(backup, "mlflow-backup", "list")
    assert code == 0, stderr
    return [line.split() for line in stdout.strip().splitlines()]


def _psql(deployed: e2e.Deployed, docker_client: docker.DockerClient, database: str, sql: str) -> str:
    result = deployed.container(docker_client, "postgres").exec_run(
        ["psql", "-X", "-h", "127.0.0.1", "-U", "mlflow", "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        environment={"PGPASSWORD": deployed.db_password},
    )
    assert result.exit_code == 0, result.output
    return str(result.output.decode().strip())


# --- 1. backup, break everything, restore -------------------------------------------------------


def _snapshot(client: MlflowClient, experiment_ids: list[str], download_to: Path) -> dict[str, Any]:
    """Everything the data set holds, as the MLflow client reads it."""
    snapshot: dict[str, Any] = {"experiments": {}, "runs": {}, "models": {}}
    for experiment_id in experiment_ids:
        experiment = client.get_experiment(experiment_id)
        snapshot["experiments"][experiment_id] = (experiment.name, experiment.tags, experiment.lifecycle_stage)
        for run in client.search_runs([experiment_id]):
            run_id = run.info.run_id
            history = {
                key: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))
                for key in run.data.metrics
            }
            target = download_to / run_id
            target.mkdir(parents=True)
            client.download_artifacts(run_id, "", str(target))
            artifacts = {
                str(path.relative_to(target)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(target.rglob("*"))
                if path.is_file()
            }
            snapshot["runs"][run_id] = (run.data.params, run.data.tags, history, artifacts, run.info.status)
    for model in client.search_registered_models():
        versions = sorted((v.version, v.run_id, v.source, v.current_stage) for v in client.search_model_versions())
        snapshot["models"][model.name] = (model.description, model.tags, versions)
    return snapshot


def _write_data_set(client: MlflowClient, tmp: Path) -> list[str]:
    experiment_ids = []
    for index in range(2):
        experiment_id = client.create_experiment(f"backup-set-{index}", tags={"team": f"team-{index}"})
        experiment_ids.append(experiment_id)
        for run_index in range(3):
            run = client.create_run(experiment_id, tags={"stage": f"s{run_index}"})
            run_id = run.info.run_id
            client.log_param(run_id, "lr", str(0.1 * (run_index + 1)))
            client.log_param(run_id, "framework", "sklearn")
            for step in range(50):
                client.log_metric(run_id, "loss", 1 / (step + 1 + run_index), step=step, timestamp=1_000 + step)
            client.set_tag(run_id, "note", f"run {run_index} of experiment {index}")
            blob = tmp / f"weights-{index}-{run_index}.bin"
            # Several MB of incompressible data per run.
            blob.write_bytes(os.urandom(3 * 1024 * 1024))
            client.log_artifact(run_id, str(blob), artifact_path="model")
            (tmp / "summary.txt").write_text(f"summary {index}/{run_index}\n")
            client.log_artifact(run_id, str(tmp / "summary.txt"))
            client.set_terminated(run_id)
    model_run = client.search_runs([experiment_ids[0]])[0]
    client.create_registered_model("backup-model", tags={"owner": "team-0"}, description="restored?")
    client.create_model_version("backup-model", f"runs:/{model_run.info.run_id}/model", model_run.info.run_id)
    return experiment_ids


def test_restore_brings_back_exactly_the_backed_up_state(
    deployed: e2e.Deployed,
    admin: tuple[str, str],
    client: MlflowClient,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    experiment_ids = _write_data_set(client, tmp_path)
    base = deployed.tracking_uri
    alice = ("alice", "alice-" + uuid.uuid4().hex)
    assert requests.post(f"{base}{API}/users/create", json=dict(zip(("username", "password"), alice, strict=True)),
                         auth=admin, timeout=30).status_code == 200  # fmt: skip
    grant = {"username": "alice", "resource_type": "experiment", "resource_id": experiment_ids[0], "permission": "READ"}
    granted = requests.post(f"{base}/api/3.0/mlflow/users/permissions/grant", json=grant, auth=admin, timeout=30)
    assert granted.status_code == 200, granted.text
    before = _snapshot(client, experiment_ids, tmp_path / "before")
    assert len(before["runs"]) == 6
    assert before["models"]["backup-model"][2][0][0] == "1"

    backup = _backup(deployed, docker_client)
    started = time.monotonic()
    backup_id = _backup_now(backup)
    e2e.report(f"backup {backup_id} of 6 runs, ~18 MB of artifacts: {time.monotonic() - started:.1f}s")
    manifest = _exec(backup, "cat", f"{BACKUP_DIR}/{backup_id}/manifest.json")[1]
    assert '"reason": "manual"' in manifest
    assert '"auth_database": "mlflow_auth"' in manifest
    revision = _psql(deployed, docker_client, "mlflow", "select version_num from alembic_version")
    assert f'"schema_revision": "{revision}"' in manifest
    assert '"mlflow_version": "3.17.2"' in manifest
    for name in ("tracking.dump", "auth.dump", "artifacts.tar.gz"):
        assert f'{{"name": "{name}", "bytes": ' in manifest

    # Break everything: the tracking tables, the artifacts, the user.
    _psql(
        deployed,
        docker_client,
        "mlflow",
        "DO $$DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP "
        "EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', t); END LOOP; END$$",
    )
    assert _psql(deployed, docker_client, "mlflow", "select count(*) from pg_tables where schemaname = 'public'") == "0"
    code, _, stderr = _exec(
        _gc(deployed, docker_client), "sh", "-c", "rm -rf /mlflow/artifacts/* && ls -A /mlflow/artifacts"
    )
    assert code == 0, stderr
    deleted = requests.delete(f"{base}{API}/users/delete", json={"username": "alice"}, auth=admin, timeout=30)
    assert deleted.status_code == 200, deleted.text
    assert (
        requests.get(f"{base}{API}/experiments/search", params={"max_results": 1}, auth=alice, timeout=30).status_code
        == 401
    )

    # In the backup container the artifacts are read-only: it prints the one-off step instead.
    code, _, stderr = _exec(backup, "mlflow-backup", "restore", backup_id)
    assert code == 2, stderr
    command = stderr.strip().splitlines()[-1]
    assert command.startswith("docker run --rm "), stderr
    e2e.report(f"restore step printed by the backup container: {command}")
    started = time.monotonic()
    restored = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=600, check=False)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.strip().splitlines()[-1] == f"restored {backup_id}"
    e2e.report(f"restore of {backup_id} while the stack runs: {time.monotonic() - started:.1f}s")

    e2e.wait_until_serving(base, auth=admin)
    after = _snapshot(client, experiment_ids, tmp_path / "after")
    assert after == before
    # The user is back with its password and its permission; the admin's current password still works.
    assert requests.get(f"{base}{API}/experiments/get", params={"experiment_id": experiment_ids[0]}, auth=alice,
                        timeout=30).status_code == 200  # fmt: skip
    assert requests.post(f"{base}{API}/runs/create", json={"experiment_id": experiment_ids[0]}, auth=alice,
                         timeout=30).status_code == 403  # fmt: skip
    assert (
        requests.get(f"{base}{API}/users/get", params={"username": "alice"}, auth=admin, timeout=30).status_code == 200
    )


# --- 2. list, retention, verify ------------------------------------------------------------------


def test_list_keeps_the_newest_and_verify_catches_an_altered_file(
    deployed: e2e.Deployed, docker_client: docker.DockerClient
) -> None:
    backup = _backup(deployed, docker_client)
    before = {line[0]: line[2] for line in _list(backup)}
    kept_by_hand = _backup_now(backup, "manual")
    taken = []
    for _ in range(4):
        taken.append(_backup_now(backup, "scheduled"))
    listed = _list(backup)
    ids = [line[0] for line in listed]
    assert ids == sorted(ids, reverse=True)
    # backupKeep is 3, of scheduled backups: the oldest of the four is gone, with every
    # scheduled one from before; manual and pre-upgrade backups stay.
    scheduled = [line[0] for line in listed if line[2] == "scheduled"]
    assert scheduled == taken[:0:-1], listed
    assert taken[0] not in ids
    assert kept_by_hand in ids
    assert {i for i, reason in before.items() if reason != "scheduled"} <= set(ids)
    e2e.report(f"took {', '.join(taken)} (scheduled) and {kept_by_hand} (manual); list keeps {', '.join(ids)}")

    started = time.monotonic()
    code, stdout, stderr = _exec(backup, "mlflow-backup", "verify", taken[-1])
    assert code == 0, stderr
    assert stdout.strip() == f"verified {taken[-1]}"
    assert "tracking.dump loads into a scratch database" in stderr
    assert "auth.dump loads into a scratch database" in stderr
    e2e.report(f"verify {taken[-1]}: exit {code}, {stdout.strip()!r} in {time.monotonic() - started:.1f}s")

    code, _, stderr = _exec(backup, "sh", "-c", f"printf x >> {BACKUP_DIR}/{taken[-1]}/tracking.dump")
    assert code == 0, stderr
    code, stdout, stderr = _exec(backup, "mlflow-backup", "verify", taken[-1])
    assert code == 1
    assert "tracking.dump has sha256" in stderr
    assert "verified" not in stdout
    error = next(line for line in stderr.splitlines() if "has sha256" in line)
    e2e.report(f"verify {taken[-1]} after one byte appended to tracking.dump: exit {code}, {error.split(': ', 1)[1]}")


# --- 4. gc ----------------------------------------------------------------------------------------


def test_gc_purges_an_old_deleted_run_and_its_artifacts(
    deployed: e2e.Deployed, client: MlflowClient, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    gc = _gc(deployed, docker_client)
    # The loop waits before its first gc, out of the way of the server's start.
    assert "first gc in 600s, then every 86400s" in gc.logs().decode()
    experiment_id = client.create_experiment("gc")
    runs = {}
    for name in ("doomed", "live"):
        runs[name] = client.create_run(experiment_id, run_name=name).info.run_id
        (tmp_path / f"{name}.txt").write_text(name)
        client.log_artifact(runs[name], str(tmp_path / f"{name}.txt"))
    client.delete_run(runs["doomed"])
    time.sleep(2)

    code, stdout, stderr = _exec(gc, "mlflow-gc", "now")
    assert code == 0, stderr
    assert f"Run with ID {runs['doomed']} has been permanently deleted." in stdout
    assert runs["live"] not in stdout
    with pytest.raises(MlflowException, match=r"RESOURCE_DOES_NOT_EXIST|not found"):
        client.get_run(runs["doomed"])
    assert client.get_run(runs["live"]).info.lifecycle_stage == "active"
    for name, expected in (("doomed", 1), ("live", 0)):
        code, _, _ = _exec(gc, "test", "-e", f"/mlflow/artifacts/{experiment_id}/{runs[name]}/artifacts/{name}.txt")
        assert code == expected, name
    purged_directory = f"{experiment_id}/{runs['doomed']}/artifacts"
    code, _, _ = _exec(gc, "test", "-e", f"/mlflow/artifacts/{purged_directory}")
    assert code == 1, f"the purged run's artifact directory {purged_directory} is still there"
    assert [a.path for a in client.list_artifacts(runs["live"])] == ["live.txt"]
    e2e.report(
        f"gc purged deleted run {runs['doomed']} (artifact directory {purged_directory} gone); "
        f"live run {runs['live']} kept with live.txt"
    )


# --- 5. metrics and telemetry ---------------------------------------------------------------------


def _request_total(gc: Container, auth: tuple[str, str] | None) -> tuple[int, float]:
    """GET http://mlflow:5000/metrics from inside the stack network (the gc container has Python)."""
    script = (
        "import base64, os, sys, urllib.error, urllib.request\n"
        "request = urllib.request.Request('http://mlflow:5000/metrics')\n"
        "if os.environ.get('AUTH'):\n"
        "    request.add_header('Authorization', 'Basic ' + base64.b64encode(os.environ['AUTH'].encode()).decode())\n"
        "try:\n"
        "    response = urllib.request.urlopen(request, timeout=10)\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code); sys.exit(0)\n"
        "print(response.status); print(response.read().decode())\n"
    )
    environment = {"AUTH": ":".join(auth)} if auth else {}
    result = gc.exec_run(["python", "-c", script], environment=environment)
    assert result.exit_code == 0, result.output
    status, _, body = result.output.decode().partition("\n")
    total = sum(
        float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith("mlflow_http_request_total{")
    )
    return int(status), total


def test_metrics_answer_on_the_network_and_count_requests(
    deployed: e2e.Deployed, admin: tuple[str, str], docker_client: docker.DockerClient
) -> None:
    gc = _gc(deployed, docker_client)
    assert _request_total(gc, None)[0] == 401
    # Basic auth fails closed on a route without a permission rule: only the admin reads it.
    reader = ("metrics-reader", "reader-" + uuid.uuid4().hex)
    created = requests.post(
        f"{deployed.tracking_uri}{API}/users/create",
        json={"username": reader[0], "password": reader[1]},
        auth=admin,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    assert _request_total(gc, reader)[0] == 403
    assert requests.get(f"{deployed.tracking_uri}/metrics", timeout=10).status_code == 401
    status, first = _request_total(gc, admin)
    assert status == 200
    for _ in range(25):
        response = requests.get(f"{deployed.tracking_uri}{API}/experiments/search", params={"max_results": 1},
                                auth=admin, timeout=30)  # fmt: skip
        assert response.status_code == 200
    status, second = _request_total(gc, admin)
    e2e.report(f"mlflow_http_request_total: {first:.0f} -> {second:.0f} after 25 requests")
    assert status == 200
    assert second >= first + 25


def test_telemetry_is_off_in_every_mlflow_container(deployed: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    for container in (deployed.container(docker_client, "mlflow"), _gc(deployed, docker_client)):
        assert "MLFLOW_DISABLE_TELEMETRY=true" in container.attrs["Config"]["Env"], container.name


# --- the backup container itself ------------------------------------------------------------------


def test_the_backup_container_is_hardened(deployed: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    backup = _backup(deployed, docker_client)
    attrs = backup.attrs
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] == 512 * 1024 * 1024
    assert not host["PortBindings"]
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert mounts["/mlflow/artifacts"]["RW"] is False
    assert mounts[BACKUP_DIR]["Name"] == "mlflow-platform-backups-backups"
    assert mounts[BACKUP_DIR]["RW"] is True
    # pg_dump is the server's own major version: the same image.
    assert attrs["Image"] == deployed.container(docker_client, "postgres").attrs["Image"]
    assert deployed.db_password not in str(attrs["Config"])
    assert deployed.db_password not in backup.logs().decode()
    code, stdout, _ = _exec(backup, "sh", "-c", "stat -c '%a %u' /run/secrets/pgpass")
    assert (code, stdout.strip()) == (0, "400 10001")


# --- 3. schedule (last: it freezes the scheduler) ---------------------------------------------------


def _wait_for(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(2)
    raise AssertionError(f"{what} not within {timeout}s")


def test_the_schedule_backs_up_and_a_stopped_schedule_turns_unhealthy(
    deployed: e2e.Deployed, docker_client: docker.DockerClient
) -> None:
    backup = _backup(deployed, docker_client)
    newest = _list(backup)[0][0]

    def scheduled_after() -> bool:
        listed = _list(backup)
        return listed[0][0] > newest and listed[0][2] == "scheduled"

    waited = _wait_for(scheduled_after, 150, "a scheduled backup")
    e2e.report(f"scheduled backup appeared {waited:.0f}s after the newest manual one")
    assert "(scheduled) done" in backup.logs().decode()

    # A hung scheduler: the health check (its own process) sees the backups age. Stopped from
    # the host: the kernel drops SIGSTOP sent to a PID namespace's init from inside it.
    backup.reload()
    scheduler = int(backup.attrs["State"]["Pid"])
    os.kill(scheduler, signal.SIGSTOP)
    try:
        # Instead of waiting out twice the interval, the newest backup and the last success are
        # made three intervals old: a scheduler still running would take a backup within its
        # 5-s tick, so none appearing while the container turns unhealthy shows it is stopped.
        aged = _list(backup)[0][0]
        code, _, stderr = _exec(
            backup,
            "sh",
            "-euc",
            'touch -d "@$1" "$2/$3/manifest.json"; echo "$1" >"$2/.last-success"',
            "age",
            str(int(time.time()) - 180),
            BACKUP_DIR,
            aged,
        )
        assert code == 0, stderr
        waited = e2e.wait_for_health_status(backup, "unhealthy", timeout=90)
        e2e.report(f"backup container unhealthy {waited:.0f}s after its newest backup aged past twice the interval")
        probe = backup.attrs["State"]["Health"]["Log"][-1]["Output"]
        assert "more than twice the interval (60s)" in probe
        assert _list(backup)[0][0] == aged
    finally:
        os.kill(scheduler, signal.SIGCONT)
    # Resumed, it catches up at once and the container is healthy again.
    e2e.wait_for_health_status(backup, "healthy", timeout=60)
    caught_up = _list(backup)[0]
    assert caught_up[0] > aged
    assert caught_up[2] == "scheduled"
    # Restarted, it keeps the rhythm from the volume: no backup at start, only an interval after the last.
    restarted_at = int(time.time())
    backup.restart(timeout=30)
    time.sleep(15)
    assert _list(backup)[0][0] == caught_up[0]
    assert "schedule: a backup every 60s, keeping 3" in backup.logs(since=restarted_at).decode()
