"""mlflow/bootstrap_db.py against a real cluster laid out as the official image lays it out.

The cluster trusts its local socket and asks for SCRAM passwords over TCP (the image's
`host all all all scram-sha-256`); the bootstrap connects over the socket, as in the
stack. What it must leave: MLflow's role with the declared password, a superuser no
password logs in as over TCP, and its own secret file empty.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.certs import self_signed
from tests.postgres_server import PostgresUnavailableError, find_bindir
from tests.tls_postgres import ADMIN_PASSWORD, ManagedPostgres, managed_postgres
from tools.stack_config import PROJECT_DIR

pytestmark = pytest.mark.postgres

SCRIPT = PROJECT_DIR / "mlflow" / "bootstrap_db.py"
# What initdb is given (the stack's generated superuser password) and MLflow's role's password.
INITDB_PASSWORD = "Initdb0Superuser0Password0x"
ROLE_PASSWORD = "Role0Password0For0Mlflow0xyz"


@dataclass(frozen=True)
class Cluster:
    home: Path
    """Its socket's directory too."""
    port: int


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        bindir = find_bindir()
    except PostgresUnavailableError as error:
        if os.environ.get("REQUIRE_POSTGRES") == "1" or os.environ.get("CI"):
            pytest.fail(f"REQUIRE_POSTGRES=1 (or CI) but {error}")
        pytest.skip(str(error))
    # initdb refuses root: as root the cluster belongs to the package's `postgres` user.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="mlflow-platform-bootstrap-"))
    if prefix:
        shutil.chown(home, "postgres", "postgres")
    (home / "pw").write_text(INITDB_PASSWORD + "\n", encoding="utf-8")
    if prefix:
        shutil.chown(home / "pw", "postgres", "postgres")
    port = _free_port()
    data = home / "data"
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={home / 'pw'}"]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"]
    subprocess.run([*prefix, *initdb], check=True, capture_output=True)
    # The image's line for every other container: a password over TCP from anywhere.
    with (data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
        hba.write("host all all all scram-sha-256\n")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {home} -c fsync=off"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-o", options, "-w", "start"]
    subprocess.run([*prefix, *start], check=True, capture_output=True)
    try:
        yield Cluster(home, port)
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def _secret_file(cluster: Cluster, content: str) -> Path:
    path = Path(tempfile.mkdtemp(dir=cluster.home)) / "postgres-password"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o400)
    # The job's directory is not its own (root's /run/secrets): it can only empty the file.
    path.parent.chmod(0o555)
    return path


def _environment(cluster: Cluster, password_file: Path) -> dict[str, str]:
    """What the bootstrap container's environment gives the script, for this cluster's socket."""
    return {
        "PATH": os.environ["PATH"],
        "PGPORT": str(cluster.port),
        "POSTGRES_SOCKET_DIR": str(cluster.home),
        "POSTGRES_SUPERUSER": "postgres",
        "POSTGRES_USER": "mlflow",
        "POSTGRES_PASSWORD_FILE": str(password_file),
        "POSTGRES_DB": "mlflow",
        "POSTGRES_AUTH_DB": "mlflow_auth",
    }


def _bootstrap(cluster: Cluster, password_file: Path) -> subprocess.CompletedProcess[str]:
    env = _environment(cluster, password_file)
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, check=False)


def _login_error(cluster: Cluster, user: str, password: str) -> str | None:
    """None when `user` logs in over TCP with `password`, else the server's message."""
    try:
        with psycopg.connect(host="127.0.0.1", port=cluster.port, user=user, password=password, dbname="postgres"):
            return None
    except psycopg.OperationalError as error:
        return str(error)


def test_the_superuser_has_no_password_and_the_secret_file_is_emptied(cluster: Cluster) -> None:
    # Before: initdb's password logs the superuser in over TCP, as any container on the network could.
    assert _login_error(cluster, "postgres", INITDB_PASSWORD) is None
    password_file = _secret_file(cluster, ROLE_PASSWORD + "\n")
    result = _bootstrap(cluster, password_file)
    assert result.returncode == 0, result.stderr
    assert "superuser 'postgres' has none" in result.stderr
    assert "bootstrap_db: done" in result.stderr
    for password in (INITDB_PASSWORD, ROLE_PASSWORD, "postgres", ""):
        error = _login_error(cluster, "postgres", password)
        assert error is not None
        assert 'password authentication failed for user "postgres"' in error or "no password supplied" in error
    assert _login_error(cluster, "mlflow", ROLE_PASSWORD) is None
    with psycopg.connect(host=str(cluster.home), port=cluster.port, user="postgres", dbname="postgres") as trusted:
        assert trusted.execute("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'").fetchone() == (
            True,
        )
    # Nothing of the secret is left in the file the job was given; the file stays (its directory is not the job's).
    assert password_file.read_bytes() == b""
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o400


def test_a_second_run_of_the_same_container_changes_nothing(cluster: Cluster) -> None:
    password_file = _secret_file(cluster, ROLE_PASSWORD + "\n")
    assert _bootstrap(cluster, password_file).returncode == 0
    # `docker start` of the exited job: its file is empty, and an empty password is never applied.
    again = _bootstrap(cluster, password_file)
    assert again.returncode != 0
    assert f"bootstrap_db: {password_file} is empty; run the bootstrap again with `pulumi up --replace" in again.stderr
    assert _login_error(cluster, "mlflow", ROLE_PASSWORD) is None


def test_then_wait_keeps_the_read_only_secret_marks_itself_done_and_stops_on_sigterm(cluster: Cluster) -> None:
    """Swarm's way (components/db_bootstrap.py): a service that stays up, healthy once the ready file exists."""
    password_file = _secret_file(cluster, ROLE_PASSWORD + "\n")
    ready = Path(tempfile.mkdtemp(dir=cluster.home)) / "bootstrap-done"
    env = _environment(cluster, password_file)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--then-wait", str(ready)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), process.communicate()[1] if process.poll() is not None else "no ready file in 60 s"
        # Still running (idle), the role in force, and the swarm secret untouched (it cannot be written).
        assert process.poll() is None
        assert _login_error(cluster, "mlflow", ROLE_PASSWORD) is None
        assert password_file.read_text(encoding="utf-8") == ROLE_PASSWORD + "\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- An external database: the admin URL over verify-full TLS, an admin that is no superuser ---


@pytest.fixture(scope="module")
def managed() -> Iterator[ManagedPostgres]:
    try:
        find_bindir()
    except PostgresUnavailableError as error:
        if os.environ.get("REQUIRE_POSTGRES") == "1" or os.environ.get("CI"):
            pytest.fail(f"REQUIRE_POSTGRES=1 (or CI) but {error}")
        pytest.skip(str(error))
    # Issued for 127.0.0.1 only: "localhost" reaches the same server under a name it does not carry.
    with managed_postgres(["127.0.0.1"], ["127.0.0.1"]) as server:
        yield server


def _bootstrap_with_url(
    managed: ManagedPostgres, url: str, ca_pem: str, role: str = "mlflow"
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    directory = Path(tempfile.mkdtemp(dir=managed.socket_dir))
    files = {"postgres-password": ROLE_PASSWORD + "\n", "database-admin-url": url + "\n", "ca.pem": ca_pem}
    for name, content in files.items():
        (directory / name).write_text(content, encoding="utf-8")
        (directory / name).chmod(0o444 if name == "ca.pem" else 0o400)
    directory.chmod(0o555)
    env = {
        "PATH": os.environ["PATH"],
        "POSTGRES_ADMIN_URL_FILE": str(directory / "database-admin-url"),
        "POSTGRES_USER": role,
        "POSTGRES_PASSWORD_FILE": str(directory / "postgres-password"),
        "POSTGRES_DB": role,
        "POSTGRES_AUTH_DB": f"{role}_auth",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(directory / "ca.pem"),
    }
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, check=False)
    return result, directory / "database-admin-url", directory / "postgres-password"


def test_an_admin_that_is_no_superuser_sets_up_an_unprivileged_owner_over_tls(managed: ManagedPostgres) -> None:
    with managed.superuser() as connection:
        assert connection.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'dbadmin'"
        ).fetchone() == (False, True, True)
    result, url_file, password_file = _bootstrap_with_url(
        managed, managed.admin_url("127.0.0.1"), managed.ca.certificate
    )
    assert result.returncode == 0, result.stderr
    assert "admin 'dbadmin' keeps its own" in result.stderr
    # Both secret files emptied; nothing of either secret on the job's output.
    assert (url_file.read_bytes(), password_file.read_bytes()) == (b"", b"")
    assert ADMIN_PASSWORD not in result.stderr + result.stdout
    assert ROLE_PASSWORD not in result.stderr + result.stdout
    with managed.superuser() as connection:
        attributes = connection.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
            "FROM pg_roles WHERE rolname = 'mlflow'"
        ).fetchone()
        assert attributes == (False, False, False, False, False, True)
        # MLflow's role is a member of nothing (the admin is a member of it, to hand it ownership).
        memberships = connection.execute(
            "SELECT g.rolname, u.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE 'mlflow' IN (g.rolname, u.rolname)"
        ).fetchall()
        assert memberships == [("mlflow", "dbadmin")]
        rows = connection.execute(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE 'mlflow%%'"
        ).fetchall()
        owners = {str(name): str(owner) for name, owner in rows}
        assert owners == {"mlflow": "mlflow", "mlflow_auth": "mlflow", "mlflow_tmp": "dbadmin"}
    # MLflow's role logs in over verified TLS with the declared password; the connection is encrypted.
    with psycopg.connect(
        host="127.0.0.1", port=managed.port, user="mlflow", password=ROLE_PASSWORD, dbname="mlflow",
        sslmode="verify-full", sslrootcert=str(url_file.parent / "ca.pem"),
    ) as mlflow:  # fmt: skip
        assert mlflow.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    # A second run (a new job: fresh files) changes nothing and succeeds: every statement is idempotent.
    again, _, _ = _bootstrap_with_url(managed, managed.admin_url("127.0.0.1"), managed.ca.certificate)
    assert again.returncode == 0, again.stderr


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines, result
    return lines[-1]


def test_a_wrong_ca_stops_the_bootstrap_with_one_line_naming_the_setting(managed: ManagedPostgres) -> None:
    other_ca = self_signed(["Some Other CA"], ca=True).certificate
    result, _, _ = _bootstrap_with_url(managed, managed.admin_url("127.0.0.1"), other_ca, role="mlflow_wrong_ca")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    line = _last_line(result)
    where = f"127.0.0.1:{managed.port}"
    assert line.startswith(
        f"bootstrap_db: externalDatabaseCaCertificate does not verify the certificate of the server at {where} ("
    ), line
    assert "certificate verify failed" in line
    assert ADMIN_PASSWORD not in result.stderr
    with managed.superuser() as connection:
        assert connection.execute("SELECT 1 FROM pg_roles WHERE rolname = 'mlflow_wrong_ca'").fetchone() is None


def test_a_host_name_the_certificate_does_not_carry_stops_the_bootstrap_in_one_line(managed: ManagedPostgres) -> None:
    result, _, _ = _bootstrap_with_url(
        managed, managed.admin_url("localhost"), managed.ca.certificate, role="mlflow_wrong_host"
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    line = _last_line(result)
    assert line.startswith(
        "bootstrap_db: externalDatabaseUrl names host 'localhost', which the certificate of the server at "
        f"localhost:{managed.port} is not issued for ("
    ), line
    assert "does not match host name" in line
    assert ADMIN_PASSWORD not in result.stderr


def test_an_admin_without_createrole_stops_the_bootstrap_in_one_line(managed: ManagedPostgres) -> None:
    with managed.superuser() as connection:
        connection.execute("DROP ROLE IF EXISTS weak")
        connection.execute(f"CREATE ROLE weak LOGIN CREATEDB PASSWORD '{ADMIN_PASSWORD}'")
    url = managed.admin_url("127.0.0.1").replace("dbadmin:", "weak:")
    result, _, _ = _bootstrap_with_url(managed, url, managed.ca.certificate, role="mlflow_weak")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    line = _last_line(result)
    assert line.startswith("bootstrap_db: externalDatabaseUrl's admin role 'weak' could not set up MLflow's role"), line
    assert line.endswith("it needs CREATEROLE and CREATEDB")
