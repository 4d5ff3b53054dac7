"""A throwaway PostgreSQL that stands in for a managed one (RDS, Cloud SQL): TLS only, an admin that is no superuser.

Debian's `postgresql` binaries on the host, as tests/postgres_server.py runs them, but
configured the way a managed database is reached: every TCP connection must use TLS
(`hostnossl ... reject`), the server's certificate is issued by a test CA for the
names given, and the admin role the stack gets has CREATEROLE and CREATEDB, not
SUPERUSER (RDS's rds_superuser). The cluster's own superuser is reachable over the
local socket only, for the tests' own checks.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from tests.certs import KeyPair, issued_by, self_signed
from tests.postgres_server import find_bindir

ADMIN = "dbadmin"
# URI-reserved characters: the URL must be percent-encoded where it is written.
ADMIN_PASSWORD = "Adm1n/Pa55@word:9zQ%x"


@dataclass(frozen=True)
class ManagedPostgres:
    port: int
    socket_dir: Path
    ca: KeyPair
    """The CA the server's certificate is issued by (PEM in `ca.certificate`)."""
    names: tuple[str, ...]
    """The host names and addresses that certificate is issued for."""

    def admin_url(self, host: str, database: str = "postgres") -> str:
        return f"postgresql://{ADMIN}:{quote(ADMIN_PASSWORD, safe='')}@{host}:{self.port}/{database}"

    def superuser(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """The cluster's superuser over the local socket: what the tests inspect the result with."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=database, autocommit=True
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def managed_postgres(listen: Sequence[str], names: Sequence[str]) -> Iterator[ManagedPostgres]:
    """A cluster listening on `listen` with a certificate for `names`; stopped and removed afterwards."""
    bindir = find_bindir()
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="mlflow-platform-managed-pg-"))
    ca = self_signed(["Managed Postgres Test CA"], ca=True)
    server = issued_by(ca, list(names))
    (home / "server.crt").write_text(server.certificate, encoding="utf-8")
    (home / "server.key").write_text(server.key, encoding="utf-8")
    (home / "server.key").chmod(0o600)
    if prefix:
        for path in (home, home / "server.crt", home / "server.key"):
            shutil.chown(path, "postgres", "postgres")
    data, port = home / "data", _free_port()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust"]
    subprocess.run([*prefix, *initdb, "--encoding=UTF8", "--locale=C"], check=True, capture_output=True)
    # A managed database's rule: over the network, TLS and a password, or nothing.
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostnossl all all all reject\nhostssl all all all scram-sha-256\n", encoding="utf-8"
    )
    options = (
        f"-c listen_addresses={','.join(listen)} -p {port} -k {home} -c fsync=off -c ssl=on "
        f"-c ssl_cert_file={home / 'server.crt'} -c ssl_key_file={home / 'server.key'}"
    )
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-o", options, "-w", "start"]
    subprocess.run([*prefix, *start], check=True, capture_output=True)
    try:
        managed = ManagedPostgres(port, home, ca, tuple(names))
        with managed.superuser() as connection:
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD {}").format(
                    sql.Identifier(ADMIN), sql.Literal(ADMIN_PASSWORD)
                )
            )
        yield managed
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(home, ignore_errors=True)
