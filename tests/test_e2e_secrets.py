"""End to end: the declared secrets are the ones in force after every `up`, and rotate on demand.

One stack (auth on, volumes protected, an upper-case publicHost) goes through the
issue's reproduction (`up`, `down` with the volumes retained, `up` with new
passwords), a rotation and a replacement of Postgres; the tests run in file order
and build on each other.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import docker
import pytest
import requests

from tests import e2e, secret_scan
from tools.local_deploy import deployer

pytestmark = pytest.mark.docker

STACK = "secrets"
# protectData: a plain `down` keeps the volumes (retainOnDelete), as in staging.
# Plain HTTP on loopback: these tests are about secrets, not the front door (test_e2e_https.py).
OVERRIDES = {
    "hostPort": 5003,
    "authEnabled": True,
    "protectData": True,
    "publicHost": "LocalHost",
    "tlsMode": "off",
    "environmentKind": "dev",
}
API = "/api/2.0/mlflow"


@dataclass
class History:
    """Every deployment of the module's stack, and what was logged before each."""

    deployments: list[e2e.Deployed] = field(default_factory=list)
    runs: dict[str, float] = field(default_factory=dict)  # run id -> logged metric value

    @property
    def current(self) -> e2e.Deployed:
        return self.deployments[-1]


def _admin(deployed: e2e.Deployed) -> tuple[str, str]:
    return (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))


def _log_run(deployed: e2e.Deployed, value: float) -> str:
    session = requests.Session()
    session.auth = _admin(deployed)
    base = f"{deployed.tracking_uri}{API}"
    name = f"secrets-{value}"
    created = session.post(f"{base}/experiments/create", json={"name": name}, timeout=30)
    assert created.status_code == 200, created.text
    run = session.post(
        f"{base}/runs/create", json={"experiment_id": created.json()["experiment_id"], "start_time": 0}, timeout=30
    )
    assert run.status_code == 200, run.text
    run_id = str(run.json()["run"]["info"]["run_id"])
    logged = session.post(
        f"{base}/runs/log-metric", json={"run_id": run_id, "key": "m", "value": value, "timestamp": 0}, timeout=30
    )
    assert logged.status_code == 200, logged.text
    return run_id


def _assert_all_runs_readable(history: History) -> None:
    auth = _admin(history.current)
    for run_id, value in history.runs.items():
        response = requests.get(
            f"{history.current.tracking_uri}{API}/runs/get", params={"run_id": run_id}, auth=auth, timeout=30
        )
        assert response.status_code == 200, response.text
        assert [m["value"] for m in response.json()["run"]["data"]["metrics"]] == [value]


def _status_with(deployed: e2e.Deployed, auth: tuple[str, str]) -> int:
    url = f"{deployed.tracking_uri}{API}/experiments/search"
    return requests.get(url, params={"max_results": 1}, auth=auth, timeout=30).status_code


def _psql(deployed: e2e.Deployed, client: docker.DockerClient, password: str, sql: str) -> tuple[int, str]:
    """psql over TCP as MLflow's role, with a password: what every network client goes through."""
    result = deployed.container(client, "postgres").exec_run(
        ["psql", "-X", "-h", "127.0.0.1", "-U", "mlflow", "-d", "mlflow", "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        environment={"PGPASSWORD": password},
    )
    return result.exit_code, result.output.decode(errors="replace").strip()


def _psql_over_the_network(
    deployed: e2e.Deployed, client: docker.DockerClient, user: str, password: str
) -> tuple[int, str]:
    """psql to `postgres:5432` from another container on the database network (the backup one), with a password."""
    result = deployed.container(client, "backup").exec_run(
        ["psql", "-X", "-h", "postgres", "-U", user, "-d", "postgres", "-Atc", "select 1"],
        environment={"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10", "HOME": "/tmp"},
    )
    return result.exit_code, result.output.decode(errors="replace").strip()


def _superuser_password(deployed: e2e.Deployed, client: docker.DockerClient) -> str:
    """The generated password initdb was given (Postgres keeps the file: initdb of an empty volume needs it)."""
    found = deployed.container(client, "postgres").exec_run(["cat", "/run/secrets/postgres-superuser-password"])
    assert found.exit_code == 0, found.output
    password = str(found.output.decode()).strip()
    assert len(password) >= 24
    return password


def _bootstrap_holds_no_secret(client: docker.DockerClient, secrets: list[str]) -> list[str]:
    """The exited bootstrap job: its own layer and every volume it mounts hold no secret; its files, listed."""
    [bootstrap] = client.containers.list(
        all=True, filters={"label": [f"com.pulumi.stack={STACK}", "org.mlflow-platform.role=database-bootstrap"]}
    )
    assert (bootstrap.status, bootstrap.attrs["State"]["ExitCode"]) == ("exited", 0)
    mounts = {mount["Destination"]: mount for mount in bootstrap.attrs["Mounts"]}
    assert set(mounts) == {"/run/secrets", "/var/run/postgresql"}
    # A read-only root: its own layer has only the directories its volumes are mounted on
    # (/var/run is a link to /run in the image).
    changed = {change["Path"] for change in bootstrap.diff() or []}
    assert changed <= {"/run", "/run/secrets", "/run/postgresql", "/var/run/postgresql"}, changed
    files = []
    for destination in mounts:
        stream, _ = bootstrap.get_archive(destination)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                extracted = archive.extractfile(member)
                content = extracted.read() if extracted is not None else b""
                assert not any(secret.encode() in content for secret in secrets), f"a secret in {member.name}"
                files.append(f"{member.name} ({len(content)} bytes, mode {member.mode:o})")
                if destination == "/run/secrets":
                    # The file it was given, emptied: the directory is root's, so the job cannot delete it.
                    assert len(content) == 0, member.name
    return files


def _remove_stack_completely() -> None:
    """`down` leaves retained volumes; once the state is gone a second `down` removes them by label."""
    deployer.down(STACK)
    deployer.down(STACK)


@pytest.fixture(scope="module")
def history(docker_client: docker.DockerClient) -> Iterator[History]:
    _remove_stack_completely()
    try:
        first = e2e.deploy(STACK, OVERRIDES)
        e2e.report(f"secrets stack up to healthy: {first.seconds_to_healthy:.1f}s")
        yield History([first])
    finally:
        _remove_stack_completely()


def test_the_server_fits_the_minimum_memory(history: History, docker_client: docker.DockerClient) -> None:
    """What mlflowMemoryMb's floor (256 MiB + 256 per worker) is measured against: Pulumi.yaml's 2 workers."""
    server = history.current.container(docker_client, "mlflow")
    stats = server.stats(stream=False)["memory_stats"]
    used_mib = (stats["usage"] - stats.get("stats", {}).get("inactive_file", 0)) / 2**20
    e2e.report(f"MLflow server memory after start, 2 workers, auth on: {used_mib:.0f} MiB")
    assert used_mib < 256 + 2 * 256


def test_an_upper_case_public_host_serves_clients(history: History) -> None:
    deployed = history.current
    assert deployed.tracking_uri == "http://localhost:5003"
    url = f"{deployed.tracking_uri}{API}/experiments/search"
    response = requests.get(url, params={"max_results": 1}, auth=_admin(deployed), timeout=30)
    e2e.report(f"publicHost 'LocalHost': tracking_uri {deployed.tracking_uri}, API call -> {response.status_code}")
    assert response.status_code == 200, response.text


def test_mlflow_connects_as_an_unprivileged_role(history: History, docker_client: docker.DockerClient) -> None:
    deployed = history.current
    code, attributes = _psql(
        deployed,
        docker_client,
        deployed.db_password,
        "select rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls from pg_roles "
        "where rolname = current_user",
    )
    assert (code, attributes) == (0, "f|f|f|f|f")
    code, memberships = _psql(
        deployed,
        docker_client,
        deployed.db_password,
        "select count(*) from pg_auth_members where member = current_user::regrole",
    )
    assert (code, memberships) == (0, "0")
    code, owned = _psql(
        deployed,
        docker_client,
        deployed.db_password,
        "select string_agg(datname, ',' order by datname) from pg_database where datdba = current_user::regrole",
    )
    # Only the tracking and auth databases: the scratch database `mlflow-backup verify`
    # loads dumps into belongs to the superuser (the role owns its `public` schema).
    assert (code, owned) == (0, "mlflow,mlflow_auth")
    code, output = _psql(
        deployed, docker_client, deployed.db_password, "create temp table t (x text); copy t from program 'id'"
    )
    e2e.report(f"COPY FROM PROGRAM as mlflow: exit {code}: {[line for line in output.splitlines() if 'ERROR' in line]}")
    assert code != 0
    assert "permission denied" in output or "must be superuser" in output
    code, output = _psql(deployed, docker_client, deployed.db_password, "select pg_read_file('/etc/passwd', 0, 10)")
    assert code != 0, output


def test_no_secret_reaches_env_command_labels_or_logs(history: History, docker_client: docker.DockerClient) -> None:
    deployed = history.current
    bootstrap = docker_client.containers.get(f"mlflow-platform-{STACK}-db-bootstrap")
    assert bootstrap.attrs["State"]["ExitCode"] == 0
    assert "bootstrap_db: done" in bootstrap.logs().decode()
    containers = docker_client.containers.list(all=True, filters={"name": f"mlflow-platform-{STACK}-"})
    # Every secret of the stack, as the containers received them: the outputs' two, plus
    # the superuser's password and the Flask key, which are in no output.
    secrets = set(deployed.secrets()) | set(secret_scan.uploaded_secrets(containers))
    assert len(secrets) >= 4, f"expected the database, superuser, admin and Flask secrets, found {len(secrets)}"
    for container in containers:
        whole = json.dumps(container.attrs)
        logs = container.logs().decode(errors="replace")
        for secret in secrets:
            assert secret not in whole, f"{container.name}: a secret in docker inspect"
            assert secret not in logs, f"{container.name}: a secret in the log"
    e2e.report(
        f"{len(secrets)} secrets absent from the inspect data and logs of "
        f"{', '.join(sorted(str(container.name) for container in containers))}"
    )


def test_no_secret_in_any_process_environment_or_volume_file(
    history: History, docker_client: docker.DockerClient
) -> None:
    """Postgres on its first start (the superuser's password read for initdb), MLflow with basic auth:
    no process of the stack has a secret in its environment or on its command line, and no volume file
    holds one, except each container's own secrets volume (the standalone engine's; README: Secrets)."""
    containers = docker_client.containers.list(all=True, filters={"name": f"mlflow-platform-{STACK}-"})
    uploaded = secret_scan.uploaded_secrets(containers)
    secrets = set(history.current.secrets()) | set(uploaded)
    assert len(secrets) >= 4, f"expected the database, superuser, admin and Flask secrets, found {len(secrets)}"
    processes = secret_scan.scan_processes(containers, secrets)
    # The server's workers, uvicorn, the entrypoint's `mlflow server` and Postgres's backends at least.
    assert processes >= 6, processes
    volumes = secret_scan.scan_volumes(containers, secrets)
    assert volumes.files > 100, volumes.files
    e2e.report(
        f"{len(secrets)} secrets (uploaded as {sorted(uploaded.values())}) absent from the environment "
        f"and command line of {processes} processes and from "
        f"{volumes.files - len(volumes.secret_files)} volume files; only in the secrets volumes: {volumes.secret_files}"
    )


def test_the_superuser_cannot_log_in_over_the_network_with_any_password(
    history: History, docker_client: docker.DockerClient
) -> None:
    deployed = history.current
    # The role MLflow uses logs in from another container, as MLflow, backups and gc do.
    assert _psql_over_the_network(deployed, docker_client, "mlflow", deployed.db_password) == (0, "1")
    generated = _superuser_password(deployed, docker_client)
    tried = {"initdb's generated password": generated, "MLflow's password": deployed.db_password}
    tried |= {"a guess": "postgres", "another guess": "x" * 32}
    refusals = {}
    for what, password in tried.items():
        code, output = _psql_over_the_network(deployed, docker_client, "postgres", password)
        assert code != 0, what
        assert 'password authentication failed for user "postgres"' in output, (what, output)
        refusals[what] = output.splitlines()[-1]
    # No password at all: a NULL password fails every password method. The socket stays trusted.
    postgres = deployed.container(docker_client, "postgres")
    stored = postgres.exec_run(
        ["psql", "-X", "-h", "/var/run/postgresql", "-U", "postgres", "-Atc", "select rolpassword is null "
         "from pg_authid where rolname = 'postgres'"]
    )  # fmt: skip
    assert (stored.exit_code, stored.output.decode().strip()) == (0, "t")
    e2e.report(f"superuser over TCP from the backup container: {refusals}; pg_authid.rolpassword IS NULL")


def test_the_bootstrap_keeps_no_secret(history: History, docker_client: docker.DockerClient) -> None:
    deployed = history.current
    secrets = [*deployed.secrets(), _superuser_password(deployed, docker_client)]
    files = _bootstrap_holds_no_secret(docker_client, secrets)
    e2e.report(f"the exited bootstrap container keeps no secret; files in its volumes: {files}")


def test_the_issues_reproduction_ends_with_the_new_passwords_in_force(
    history: History, docker_client: docker.DockerClient
) -> None:
    """`up`, `down` (volumes retained), `up`: new passwords, every earlier record readable."""
    first = history.current
    history.runs[_log_run(first, 1.0)] = 1.0
    deployer.down(STACK)
    assert docker_client.volumes.get(str(first.outputs["postgres_volume_name"]))
    again = e2e.deploy(STACK, OVERRIDES)
    history.deployments.append(again)
    assert again.db_password != first.db_password
    assert _admin(again) != _admin(first)
    _assert_all_runs_readable(history)
    assert _status_with(again, _admin(first)) == 401
    bootstrap_log = docker_client.containers.get(f"mlflow-platform-{STACK}-db-bootstrap").logs().decode()
    e2e.report(
        "up/down/up: new database and admin passwords in force, earlier run readable, "
        f"old admin password -> 401; bootstrap said: {bootstrap_log.strip().splitlines()[-2:]}"
    )
    history.runs[_log_run(again, 2.0)] = 2.0


def test_rotation_replaces_every_secret_and_refuses_the_old_ones(
    history: History, docker_client: docker.DockerClient
) -> None:
    before = history.current
    rotated = e2e.deploy(STACK, {**OVERRIDES, "secretsRotation": "2026-11-27"})
    history.deployments.append(rotated)
    assert rotated.db_password != before.db_password
    assert _admin(rotated)[1] != _admin(before)[1]
    _assert_all_runs_readable(history)
    assert _status_with(rotated, _admin(rotated)) == 200
    assert _status_with(rotated, _admin(before)) == 401
    code, output = _psql(rotated, docker_client, before.db_password, "select 1")
    assert code != 0
    assert "password authentication failed" in output
    assert _psql(rotated, docker_client, rotated.db_password, "select 1") == (0, "1")
    # The bootstrap that applied the rotated password emptied its file too; the superuser still has none.
    _bootstrap_holds_no_secret(docker_client, [*rotated.secrets(), *before.secrets()])
    superuser = _psql_over_the_network(rotated, docker_client, "postgres", _superuser_password(rotated, docker_client))
    assert superuser[0] != 0
    assert 'password authentication failed for user "postgres"' in superuser[1]
    e2e.report(
        f"rotation: data readable, new admin 200, old admin 401, old database password: {output.splitlines()[-1]!r}"
    )


def test_a_replaced_postgres_shuts_down_cleanly(history: History, docker_client: docker.DockerClient) -> None:
    """The deployer stops the old container as the provider does (destroyGraceSeconds, SIGINT)."""
    old = history.current.container(docker_client, "postgres")
    assert old.attrs["Config"]["StopSignal"] == "SIGINT"
    assert old.attrs["Config"]["StopTimeout"] == 120
    replaced = e2e.deploy(STACK, {**OVERRIDES, "secretsRotation": "2026-11-27", "postgresMemoryMb": 768})
    history.deployments.append(replaced)
    new = replaced.container(docker_client, "postgres")
    assert new.id != old.id
    log = new.logs().decode(errors="replace")
    startup = [line for line in log.splitlines() if "database system was" in line]
    e2e.report(f"Postgres replaced; its successor's first words about the data: {startup}")
    assert any(re.search(r"database system was shut down at", line) for line in startup), log[-2000:]
    assert "not properly shut down" not in log
    assert "automatic recovery in progress" not in log
    _assert_all_runs_readable(history)


def test_a_stopped_server_finishes_the_request_in_flight(history: History, docker_client: docker.DockerClient) -> None:
    """SIGTERM while an artifact upload streams in: the upload completes, then the server exits."""
    deployed = history.current
    server = deployed.container(docker_client, "mlflow")
    chunk, chunks = b"x" * 2**20, 12
    url = f"{deployed.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/inflight/blob.bin"
    result: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        for _ in range(chunks):
            time.sleep(0.4)
            yield chunk

    def upload() -> None:
        try:
            result["status"] = requests.put(url, data=body(), auth=_admin(deployed), timeout=60).status_code
        except requests.RequestException as error:
            result["status"] = repr(error)

    uploader = threading.Thread(target=upload)
    uploader.start()
    time.sleep(1.5)  # the upload is under way
    stop_started = time.monotonic()
    server.stop(timeout=60)
    stopped_after = time.monotonic() - stop_started
    uploader.join(timeout=60)
    server.reload()
    exit_code = server.attrs["State"]["ExitCode"]
    server.start()
    e2e.wait_until_serving(deployed.tracking_uri, auth=_admin(deployed))
    listed = requests.get(
        f"{deployed.tracking_uri}/api/2.0/mlflow-artifacts/artifacts",
        params={"path": "inflight"},
        auth=_admin(deployed),
        timeout=30,
    ).json()
    e2e.report(
        f"docker stop during a {chunks} MiB upload: upload -> {result.get('status')}, stop took "
        f"{stopped_after:.1f}s, exit code {exit_code}, stored {listed.get('files')}"
    )
    assert result.get("status") == 200
    assert listed["files"] == [{"path": "blob.bin", "is_dir": False, "file_size": chunks * 2**20}]
    assert stopped_after < 60  # it exited by itself, not by the SIGKILL after the timeout
