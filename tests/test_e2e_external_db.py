"""End to end: a stack on a Postgres outside it, as on RDS or Cloud SQL.

The stand-in is Debian's PostgreSQL on the Docker host (tests/tls_postgres.py): TLS only,
its certificate issued by a test CA for the docker0 bridge's address, which is how the
stack's containers reach the host, and an admin role with CREATEROLE and CREATEDB that
is no superuser (RDS's rds_superuser). One stack serves a run; then two redeploys that
only reach the database bootstrap (it fails, so nothing after it starts) check that a
wrong CA and a host name the certificate does not carry stop start-up with one line
naming the setting.

The same on `engine: swarm` (skipped unless the engine is a swarm manager, failed then with
REQUIRE_DOCKER=1): a second stack, its own role and databases on the same server (as two
stacks share one RDS instance), reaching the host through docker_gwbridge, the route out of a
task's overlay networks. It serves a run, declares no Postgres service, and runs the bootstrap
as a service; a wrong CA fails the bootstrap's update, which swarm rolls back; a rotation
(`secretsRotation`) replaces the swarm secrets and the old passwords are refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import psycopg
import pytest
import requests
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tests import e2e
from tests.certs import self_signed
from tests.postgres_server import PostgresUnavailableError, find_bindir
from tests.tls_postgres import ADMIN_PASSWORD, ManagedPostgres, managed_postgres
from tools.local_deploy.common import DeployError

pytestmark = pytest.mark.docker

STACK = "extdb"
# Unused by the other end-to-end tests (grep hostPort/httpsPort in tests/test_e2e_*.py).
HOST_PORT = 5013
# Where containers on any bridge network reach the Docker host: the default bridge's gateway.
BRIDGE_GATEWAY = "172.17.0.1"
# The swarm case: a stack name and ports no other end-to-end test uses, and its own role and
# databases on the same server.
SWARM_STACK = "extdb-swarm"
SWARM_HTTPS_PORT, SWARM_HTTP_PORT = 5523, 5102
SWARM_ROLE = SWARM_DATABASE = "mlflow_swarm"
SWARM_STACK_LABEL = f"com.pulumi.stack={SWARM_STACK}"
# Swarm's bridge between a node's overlay networks and the host: its gateway is the host's address there.
SWARM_GATEWAY_BRIDGE = "docker_gwbridge"
ROLE_LABEL = "org.mlflow-platform.role"


@pytest.fixture(scope="module")
def managed(docker_client: docker.DockerClient) -> Iterator[ManagedPostgres]:
    try:
        find_bindir()
    except PostgresUnavailableError as error:
        pytest.fail(str(error))
    assert e2e.gateway(docker_client.networks.get("bridge")) == BRIDGE_GATEWAY
    # The certificate also names the host's address on docker_gwbridge, where swarm tasks reach it
    # (the bridge exists once the engine is in a swarm; without one, the swarm case is skipped).
    names = [BRIDGE_GATEWAY, *_swarm_gateway(docker_client)]
    # Every address: the stack's own network's gateway (the wrong-host case) is only known once it
    # exists. pg_hba takes TLS with a SCRAM password or nothing, on a random port, for a minute.
    with managed_postgres(["*"], names) as server:
        yield server


def _swarm_gateway(docker_client: docker.DockerClient) -> list[str]:
    """The host's address on docker_gwbridge, or nothing while the engine is in no swarm."""
    try:
        return [e2e.gateway(docker_client.networks.get(SWARM_GATEWAY_BRIDGE))]
    except docker.errors.NotFound:
        return []


def _overrides(managed: ManagedPostgres, host: str, ca: str) -> dict[str, object]:
    return {
        "hostPort": HOST_PORT,
        "tlsMode": "off",
        "environmentKind": "dev",
        "externalDatabaseUrl": managed.admin_url(host),
        "externalDatabaseCaCertificate": ca,
    }


@pytest.fixture(scope="module")
def deployed(managed: ManagedPostgres) -> Iterator[e2e.Deployed]:
    started = time.monotonic()
    with e2e.stack(STACK, _overrides(managed, BRIDGE_GATEWAY, managed.ca.certificate)) as stack:
        e2e.report(f"external database: deployed in {time.monotonic() - started:.1f}s")
        yield stack


def _assert_unprivileged_and_encrypted(managed: ManagedPostgres, role: str, database: str) -> None:
    """MLflow's role on the external server is a plain login role, its sessions use TLS, and the
    one run the stack logged is in its database, owned by it."""
    with managed.superuser() as connection:
        found = connection.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = %s",
            (role,),
        ).fetchone()
        assert found == (False, False, False, False, False)
        assert connection.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member "
                                  "WHERE u.rolname = %s", (role,)).fetchone() == (0,)  # fmt: skip
        # The run is in the external database, owned by MLflow's role; its sessions are encrypted.
        sessions = connection.execute(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.usename = %s",
            (role,),
        ).fetchone()
        assert sessions is not None
        count, encrypted = sessions
        assert isinstance(count, int)
        assert count > 0
        assert encrypted is True
    with managed.superuser(database) as tracking:
        assert tracking.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        assert tracking.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'runs'").fetchone() == (
            role,
        )


def _stack_containers(docker_client: docker.DockerClient) -> list[docker.models.containers.Container]:
    found: list[docker.models.containers.Container] = docker_client.containers.list(
        all=True, filters={"label": f"com.pulumi.stack={STACK}"}
    )
    return found


def test_the_stack_serves_from_the_external_database_with_an_unprivileged_role(
    deployed: e2e.Deployed, managed: ManagedPostgres, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    e2e.wait_until_serving(deployed.tracking_uri, timeout=60)
    client = MlflowClient(deployed.tracking_uri)
    experiment = client.create_experiment("external-db")
    run = client.create_run(experiment).info.run_id
    client.log_batch(run, metrics=[Metric("loss", 0.25, 1, 0)], params=[Param("lr", "0.01")])
    (tmp_path / "model.txt").write_text("weights", encoding="utf-8")
    client.log_artifact(run, str(tmp_path / "model.txt"))
    got = client.get_run(run).data
    assert (got.params, got.metrics) == ({"lr": "0.01"}, {"loss": 0.25})
    assert Path(client.download_artifacts(run, "model.txt", str(tmp_path / "down"))).read_text() == "weights"

    _assert_unprivileged_and_encrypted(managed, "mlflow", "mlflow")

    # No Postgres of its own: no container in the Postgres role, none named like one.
    containers = _stack_containers(docker_client)
    roles = {container.labels.get("org.mlflow-platform.role") for container in containers}
    assert "database" not in roles
    assert not [c.name for c in containers if c.name.endswith("-postgres")]
    assert "postgres_container_name" not in deployed.outputs

    # A backup dumps both databases over verified TLS as MLflow's role.
    backup = deployed.container(docker_client, "backup")
    result = backup.exec_run(["mlflow-backup", "now", "e2e"])
    assert result.exit_code == 0, result.output.decode()[-2000:]


def test_no_secret_in_inspect_env_or_logs_of_any_container(
    deployed: e2e.Deployed, docker_client: docker.DockerClient
) -> None:
    secrets = {"admin password": ADMIN_PASSWORD, "MLflow role password": deployed.db_password}
    assert len(deployed.db_password) >= 24
    containers = _stack_containers(docker_client)
    assert len(containers) >= 4  # bootstrap, server, backup, gc
    for container in containers:
        inspected = json.dumps(docker_client.api.inspect_container(container.id))
        logs = container.logs().decode(errors="replace")
        for name, value in secrets.items():
            assert value not in inspected, f"{container.name}: {name} in docker inspect"
            assert value not in logs, f"{container.name}: {name} in its log"
        if container.status == "running":
            environ = container.exec_run(["sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null"]).output.decode(
                errors="replace"
            )
            for name, value in secrets.items():
                assert value not in environ, f"{container.name}: {name} in a process environment"


def _refused(managed: ManagedPostgres, docker_client: docker.DockerClient, host: str, ca: str) -> str:
    """Redeploys with another host or CA; returns the bootstrap's log, after asserting the deploy failed."""
    started = time.monotonic()
    with pytest.raises(Exception, match=r"database bootstrap exited with code 1: bootstrap_db: ") as raised:
        e2e.deploy(STACK, _overrides(managed, host, ca))
    e2e.report(f"external database: refused in {time.monotonic() - started:.1f}s")
    job = docker_client.containers.get(f"mlflow-platform-{STACK}-db-bootstrap")
    log: str = job.logs().decode(errors="replace")
    # The deployment's own error carries the job's one line, so `pulumi up` says why.
    assert f"exited with code 1: {log.strip()}; see `docker logs {job.name}`" in str(raised.value)
    return log


def test_a_wrong_ca_stops_start_up_in_one_line(
    deployed: e2e.Deployed, managed: ManagedPostgres, docker_client: docker.DockerClient
) -> None:
    log = _refused(managed, docker_client, BRIDGE_GATEWAY, self_signed(["Not The Database CA"], ca=True).certificate)
    assert log.count("\n") == 1, log
    assert log.startswith(
        "bootstrap_db: externalDatabaseCaCertificate does not verify the certificate of the server at "
        f"{BRIDGE_GATEWAY}:{managed.port} ("
    ), log
    assert ADMIN_PASSWORD not in log


def test_a_host_name_the_certificate_does_not_carry_stops_start_up_in_one_line(
    deployed: e2e.Deployed, managed: ManagedPostgres, docker_client: docker.DockerClient
) -> None:
    # The same server, reached at another of the host's addresses: its certificate names only the bridge's.
    network = docker_client.networks.get(str(deployed.outputs["network_name"]))
    other = e2e.gateway(network)
    assert other != BRIDGE_GATEWAY
    log = _refused(managed, docker_client, other, managed.ca.certificate)
    assert log.count("\n") == 1, log
    assert log.startswith(
        f"bootstrap_db: externalDatabaseUrl names host '{other}', which the certificate of the server at "
        f"{other}:{managed.port} is not issued for ("
    ), log
    assert "does not match host name" in log


# --- engine: swarm -----------------------------------------------------------------------------


def _swarm_overrides(managed: ManagedPostgres, host: str, ca: str) -> dict[str, object]:
    return {
        "engine": "swarm",
        # One replica keeps its artifacts on the data node's volume (more would need a bucket).
        "mlflowReplicas": 1,
        # Swarm publishes through the TLS front door only, on every interface, with auth.
        "tlsMode": "internal",
        "authEnabled": True,
        "bindAddress": "0.0.0.0",
        "publicHost": "localhost",
        "httpsPort": SWARM_HTTPS_PORT,
        "httpPort": SWARM_HTTP_PORT,
        "environmentKind": "dev",
        "postgresUser": SWARM_ROLE,
        "postgresDatabase": SWARM_DATABASE,
        "externalDatabaseUrl": managed.admin_url(host),
        "externalDatabaseCaCertificate": ca,
    }


@pytest.fixture(scope="module")
def swarm_gateway(swarm_manager: None, managed: ManagedPostgres, docker_client: docker.DockerClient) -> str:
    """Where a swarm task reaches the host's Postgres: docker_gwbridge's gateway, which the certificate names."""
    found = _swarm_gateway(docker_client)
    assert found, f"a swarm manager without {SWARM_GATEWAY_BRIDGE}"
    assert found[0] in managed.names, (found, managed.names)
    return found[0]


@pytest.fixture(scope="module")
def swarm_deployed(
    swarm_gateway: str, managed: ManagedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[e2e.Deployed]:
    started = time.monotonic()
    with e2e.stack(SWARM_STACK, _swarm_overrides(managed, swarm_gateway, managed.ca.certificate)) as deployed:
        e2e.report(f"external database on swarm: deployed in {time.monotonic() - started:.1f}s")
        admin = (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))
        with e2e.trusting(deployed, tmp_path_factory.mktemp("trust"), auth=admin):
            e2e.wait_until_serving(deployed.tracking_uri, timeout=60, auth=admin)
            yield deployed


def _swarm_services(docker_client: docker.DockerClient) -> list[docker.models.services.Service]:
    services: list[docker.models.services.Service] = docker_client.services.list(filters={"label": SWARM_STACK_LABEL})
    return services


def _bootstrap_service(docker_client: docker.DockerClient) -> docker.models.services.Service:
    found = docker_client.services.list(filters={"label": [SWARM_STACK_LABEL, f"{ROLE_LABEL}=database-bootstrap"]})
    assert len(found) == 1, [service.name for service in found]
    service: docker.models.services.Service = found[0]
    return service


def _service_log(service: docker.models.services.Service) -> str:
    """What `docker service logs` shows: every task's output, those swarm keeps of failed tasks too."""
    return b"".join(service.logs(stdout=True, stderr=True)).decode(errors="replace")


def test_on_swarm_the_stack_serves_from_the_external_database_with_an_unprivileged_role(
    swarm_deployed: e2e.Deployed, managed: ManagedPostgres, docker_client: docker.DockerClient
) -> None:
    client = MlflowClient(swarm_deployed.tracking_uri)
    experiment = client.create_experiment("external-db-swarm")
    run = client.create_run(experiment).info.run_id
    client.log_batch(run, metrics=[Metric("loss", 0.5, 1, 0)], params=[Param("lr", "0.02")])
    got = client.get_run(run).data
    assert (got.params, got.metrics) == ({"lr": "0.02"}, {"loss": 0.5})
    _assert_unprivileged_and_encrypted(managed, SWARM_ROLE, SWARM_DATABASE)

    # No Postgres service of its own; everything else is a service, the bootstrap too.
    services = _swarm_services(docker_client)
    roles = {service.attrs["Spec"]["Labels"].get(ROLE_LABEL) for service in services}
    assert "database" not in roles, roles
    assert not [s.name for s in services if s.name.endswith("-postgres")]
    assert {"database-bootstrap", "tracking-server"} <= roles, roles
    assert "postgres_container_name" not in swarm_deployed.outputs
    bootstrap = _bootstrap_service(docker_client)
    assert bootstrap.attrs["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}
    tasks = bootstrap.tasks(filters={"desired-state": "running"})
    assert [task["Status"]["State"] for task in tasks] == ["running"], tasks
    # It did its work over verified TLS at docker_gwbridge's address, then idles healthy.
    log = _service_log(bootstrap)
    assert "bootstrap_db: done" in log, log
    assert ADMIN_PASSWORD not in log


def test_on_swarm_a_wrong_ca_fails_the_bootstrap_update_and_its_service_log_says_why(
    swarm_deployed: e2e.Deployed, swarm_gateway: str, managed: ManagedPostgres, docker_client: docker.DockerClient
) -> None:
    # A redeploy updates the bootstrap service: its new task exits 1, swarm rolls the service back to
    # the task that still runs, and `up` fails on the rollback, as pulumi-docker's Service does. The
    # error names the service and the task's exit, not the line (swarm keeps no task output in a
    # task's status); the line is in `docker service logs` (README "External database").
    service = f"mlflow-platform-{SWARM_STACK}-db-bootstrap"
    wrong = self_signed(["Not The Database CA"], ca=True).certificate
    started = time.monotonic()
    with pytest.raises(DeployError, match=rf"the update of service {service} failed \(rollback_completed\)") as raised:
        e2e.deploy(SWARM_STACK, _swarm_overrides(managed, swarm_gateway, wrong))
    e2e.report(f"external database on swarm: wrong CA refused in {time.monotonic() - started:.1f}s: {raised.value}")
    assert str(raised.value).endswith("last task error: failed: task: non-zero exit (1)"), raised.value

    bootstrap = _bootstrap_service(docker_client)
    assert bootstrap.name == service
    log = _service_log(bootstrap)
    failed = [line for line in log.splitlines() if "externalDatabaseCaCertificate" in line]
    # One line per failed task (swarm may restart it before it rolls back), each the whole story.
    assert failed, log
    assert all(
        line.startswith(
            "bootstrap_db: externalDatabaseCaCertificate does not verify the certificate of the server at "
            f"{swarm_gateway}:{managed.port} ("
        )
        for line in failed
    ), failed
    assert len(set(failed)) == 1, failed
    assert ADMIN_PASSWORD not in log
    # Rolled back: the bootstrap that ran with the right CA runs on, and the stack still serves.
    tasks = bootstrap.tasks(filters={"desired-state": "running"})
    assert [task["Status"]["State"] for task in tasks] == ["running"], tasks
    admin = (str(swarm_deployed.outputs["admin_username"]), str(swarm_deployed.outputs["admin_password"]))
    e2e.wait_until_serving(swarm_deployed.tracking_uri, timeout=30, auth=admin)


def _role_login(managed: ManagedPostgres, host: str, password: str) -> str:
    """A TLS login as MLflow's role with this password, over the network as the stack's tasks log in:
    'ok', or the server's refusal."""
    try:
        with psycopg.connect(
            host=host,
            port=managed.port,
            user=SWARM_ROLE,
            password=password,
            dbname=SWARM_DATABASE,
            sslmode="require",
            connect_timeout=10,
        ) as connection:
            return "ok" if connection.execute("SELECT 1").fetchone() == (1,) else "no row"
    except psycopg.OperationalError as error:
        return str(error)


def _status_with(deployed: e2e.Deployed, auth: tuple[str, str]) -> int:
    url = f"{deployed.tracking_uri}/api/2.0/mlflow/experiments/search"
    return requests.get(url, params={"max_results": 1}, auth=auth, timeout=30).status_code


def test_on_swarm_a_rotation_puts_new_swarm_secrets_in_force_and_refuses_the_old_values(
    swarm_deployed: e2e.Deployed, swarm_gateway: str, managed: ManagedPostgres, docker_client: docker.DockerClient
) -> None:
    """Swarm secrets are immutable: a new value is a new secret object, the services roll onto it, the old
    one goes once no service uses it; the bootstrap puts the role's new password in force on the server."""
    before_admin = (str(swarm_deployed.outputs["admin_username"]), str(swarm_deployed.outputs["admin_password"]))
    before_db = swarm_deployed.db_password
    before_secrets = {secret.name for secret in docker_client.secrets.list(filters={"label": SWARM_STACK_LABEL})}
    started = time.monotonic()
    settings = {**_swarm_overrides(managed, swarm_gateway, managed.ca.certificate), "secretsRotation": "rotated-1"}
    rotated = e2e.deploy(SWARM_STACK, settings)
    took = time.monotonic() - started
    admin = (str(rotated.outputs["admin_username"]), str(rotated.outputs["admin_password"]))
    assert admin[1] != before_admin[1]
    assert rotated.db_password != before_db
    assert _status_with(rotated, admin) == 200
    assert _status_with(rotated, before_admin) == 401
    assert "password authentication failed" in _role_login(managed, swarm_gateway, before_db)
    assert _role_login(managed, swarm_gateway, rotated.db_password) == "ok"
    after_secrets = {secret.name for secret in docker_client.secrets.list(filters={"label": SWARM_STACK_LABEL})}
    # What secretsRotation generates (passwords, the Flask key) is in new objects. Kept: what it does not
    # make, the front door's TLS key and the admin URL of the external server (its file's name shortened).
    kept = before_secrets & after_secrets
    assert len(kept) == 2, sorted(kept)
    assert all("-tls-key-" in name or "-run-secrets-datab" in name for name in kept), sorted(kept)
    replaced = before_secrets - after_secrets
    for generated in ("admin-password", "flask-secret-key", "postgres-password", "pgpass"):
        assert any(generated in name for name in replaced), (generated, sorted(replaced))
    # The run logged before the rotation reads back with the new credentials.
    with managed.superuser(SWARM_DATABASE) as tracking:
        assert tracking.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    e2e.report(
        f"rotation on swarm (external database): `up` {took:.1f}s; {len(replaced)} secrets replaced by new ones, "
        f"{len(kept)} kept; new admin 200, old admin 401; the role's old password refused by the server"
    )
