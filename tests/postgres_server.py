"""A throwaway PostgreSQL cluster for tests: Debian's `postgresql` binaries, a temp dir, loopback only.

initdb refuses to run as root, so as root the cluster belongs to the `postgres`
system user the package creates. The server listens on 127.0.0.1 on a free port,
with scram-sha-256 password authentication, like the official image.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "mlflow"
# A '%' and URI-reserved characters: percent-encoded in every URI, so the auth
# config's escaping of '%' is exercised by every test that uses this cluster.
SUPERUSER_PASSWORD = "s3cret%pa ss@word:/"
_FIX = "install Debian's PostgreSQL: `apt-get install -y postgresql` (CI's .ci/run does)"


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries on this machine; the message names the fix."""


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned directories."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not candidates:
        raise PostgresUnavailableError(f"no PostgreSQL server binaries (initdb, pg_ctl) found; {_FIX}")
    return candidates[-1].parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def uri(self, database: str, *, password: str | None = None) -> str:
        secret = self.password if password is None else password
        credentials = f"{quote(self.user, safe='')}:{quote(secret, safe='')}"
        return f"postgresql+psycopg://{credentials}@{self.host}:{self.port}/{database}"


# `make mutation` starts one server for the whole run and names it here as JSON
# ({"host", "port", "user", "password"}): a server per mutant would cost seconds each.
SHARED_ENV = "TEST_POSTGRES_SERVER"


def shared_server() -> PostgresServer | None:
    described = os.environ.get(SHARED_ENV)
    if not described:
        return None
    fields = json.loads(described)
    return PostgresServer(str(fields["host"]), int(fields["port"]), str(fields["user"]), str(fields["password"]))


def describe(server: PostgresServer) -> str:
    return json.dumps({"host": server.host, "port": server.port, "user": server.user, "password": server.password})


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a new temp dir; stopped (immediately) and removed afterwards."""
    bindir = find_bindir()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    # Directly under the system temp dir: pytest's own (0700, root's) is closed to `postgres`.
    directory = Path(tempfile.mkdtemp(prefix="mlflow-platform-pg-"))
    data, password_file, log = directory / "data", directory / "password", directory / "server.log"
    password_file.write_text(SUPERUSER_PASSWORD + "\n", encoding="utf-8")
    if as_root:
        shutil.chown(directory, "postgres", "postgres")
        shutil.chown(password_file, "postgres", "postgres")
    port = _free_port()

    def run(*command: str) -> None:
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr or result.stdout}{detail}")

    run(
        str(bindir / "initdb"),
        "-D", str(data),
        "-U", SUPERUSER,
        f"--pwfile={password_file}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=off -c full_page_writes=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        server = PostgresServer("127.0.0.1", port, SUPERUSER, SUPERUSER_PASSWORD)
        _wait_for_tcp(server)
        yield server
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_tcp(server: PostgresServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((server.host, server.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
