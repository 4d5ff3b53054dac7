"""Puts the stack's database roles and passwords in force; run by DatabaseBootstrap.

Two ways in, one set of rules. Postgres in the stack: over its local socket, which
the official image trusts, as the cluster's superuser, so it works whatever
passwords the data directory was made with. An external database
(POSTGRES_ADMIN_URL_FILE, from externalDatabaseUrl): over TCP with the admin URL,
with sslmode verify-full against PGSSLROOTCERT, as an admin that need not be a
superuser (RDS's rds_superuser, Cloud SQL's cloudsqlsuperuser, Azure's
azure_pg_admin have CREATEROLE and CREATEDB, not SUPERUSER): nothing below needs
more than those. On every run it:
- (in the stack) moves a stack made before this layout (MLflow connecting as the
  bootstrap superuser, named like MLflow's role) to it: the superuser is renamed to
  POSTGRES_SUPERUSER and a new, unprivileged role takes MLflow's name;
- makes MLflow's role a plain login role (no SUPERUSER, CREATEDB, CREATEROLE,
  REPLICATION, BYPASSRLS, no membership such as pg_execute_server_program) with
  the generated password;
- (in the stack) removes the superuser's password (PASSWORD NULL): password
  authentication then always fails for it, so no client on the network can log in
  as the superuser with any password; the local socket, which only this job
  shares, stays trusted (an external admin's password is the operator's to keep);
- creates the tracking and auth databases if missing and gives MLflow's role
  ownership of them and of every object in them (restored or migrated data).

The password (and the admin URL) are read from their files, which are then emptied
before anything else happens: the exited container stays (Pulumi keeps its record of the run), and
holds no secret. With `--then-wait READY_FILE` (a swarm, which has no one-shot
workload) it runs as a service instead: it keeps the files, read-only swarm secrets
held in memory and gone with the task, writes READY_FILE once done (its health check)
and idles until it is stopped. The password is sent only as a SCRAM verifier computed here by libpq, so
neither the server's statement log nor an error report can show it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

_CONNECT_ATTEMPTS = 30
# An external database is already up: only a transient failure (refused, timed out) is retried, briefly.
_URL_CONNECT_ATTEMPTS = 5
# Renames the legacy superuser: a session cannot rename its own role.
_MIGRATION_ROLE = "mlflow_platform_migration"


# settings.py keeps the tracking database's name short enough for both suffixes.
SCRATCH_DATABASE_SUFFIX = "_tmp"

Connection = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True)
class Admin:
    """The role that makes roles and databases, and how it connects (to `postgres` or a named database)."""

    role: str
    local: bool
    """The stack's own superuser over the socket; else an external admin (CREATEROLE and CREATEDB suffice)."""
    connect: Callable[[str | None], Connection]


def _log(message: str) -> None:
    print(f"bootstrap_db: {message}", file=sys.stderr, flush=True)


def _take_secret(variable: str, *, keep: bool = False) -> str:
    """The secret in the file `variable` names; the file is left empty unless `keep`.

    It is the job's own 0400 file, in a directory it cannot write (so it cannot be
    deleted): as its owner the job makes it writable, overwrites it and truncates it.
    `keep`: a swarm secret, read-only and in memory; it goes with the task.
    """
    path = os.environ[variable]
    with open(path, encoding="utf-8") as handle:
        secret = handle.read()
    if not secret.strip():
        # This container ran before (`docker start` of the exited job): a new run comes from a new container.
        sys.exit(f"bootstrap_db: {path} is empty; run the bootstrap again with `pulumi up --replace <its URN>`")
    if keep:
        return secret.rstrip("\n")
    os.chmod(path, 0o600)
    with open(path, "r+b") as handle:
        handle.write(b"\0" * len(secret.encode()))
        handle.flush()
        os.fsync(handle.fileno())
        handle.truncate(0)
    os.chmod(path, 0o400)
    return secret.rstrip("\n")


def _connect(user: str, database: str = "postgres") -> Connection:
    return psycopg.connect(host=os.environ["POSTGRES_SOCKET_DIR"], user=user, dbname=database, autocommit=True)


def _role_exists(connection: Connection, role: str) -> bool:
    return connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _connect_as_superuser(superuser: str, user: str) -> Connection:
    """The superuser's session; migrates a legacy cluster whose only superuser is MLflow's role."""
    for attempt in range(1, _CONNECT_ATTEMPTS + 1):
        try:
            return _connect(superuser)
        except psycopg.OperationalError as error:
            if f'role "{superuser}" does not exist' in str(error):
                break
            if attempt == _CONNECT_ATTEMPTS:
                raise
            _log(f"Postgres not ready ({type(error).__name__}), retrying")
            time.sleep(2)
    # Made by an earlier version: initdb created MLflow's role as the bootstrap superuser.
    _log(f"legacy layout: '{user}' is the cluster's superuser; renaming it to '{superuser}'")
    with _connect(user) as legacy:
        if not _role_exists(legacy, _MIGRATION_ROLE):
            legacy.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(_MIGRATION_ROLE)))
    with _connect(_MIGRATION_ROLE) as migration:
        migration.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(user), sql.Identifier(superuser)))
    connection = _connect(superuser)
    connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(_MIGRATION_ROLE)))
    return connection


def _socket_admin(superuser: str, user: str) -> tuple[Admin, Connection]:
    """Postgres in the stack: its superuser over the trusted local socket (after a legacy migration)."""
    connection = _connect_as_superuser(superuser, user)
    return Admin(superuser, True, lambda database: _connect(superuser, database or "postgres")), connection


def connection_failure(error: psycopg.OperationalError, host: str, port: int, user: str) -> str | None:
    """One line naming the setting to fix, or None for a failure worth retrying (refused, timed out)."""
    text = str(error)
    # libpq reports each address it tried; the last line is the reason.
    reason = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), text)
    where = f"{host}:{port}"
    if "does not match host name" in text:
        return (
            f"externalDatabaseUrl names host '{host}', which the certificate of the server at {where} is not "
            f"issued for ({reason}): accepted: a host name (or address) its certificate names"
        )
    if "certificate verify failed" in text or "root certificate" in text:
        return (
            f"externalDatabaseCaCertificate does not verify the certificate of the server at {where} ({reason}): "
            "accepted: the PEM CA certificate(s) that server's certificate chains to"
        )
    if "password authentication failed" in text or "no pg_hba.conf entry" in text or "does not exist" in text:
        return f"externalDatabaseUrl: the admin role '{user}' cannot log in at {where} ({reason})"
    if "Connection refused" in text or "timeout" in text.lower() or "could not receive data" in text:
        return None
    return f"externalDatabaseUrl: cannot connect to the server at {where} ({reason})"


def _url_admin(url: str) -> tuple[Admin, Connection]:
    """An external database: the admin URL, over TLS verified against PGSSLROOTCERT, host name included.

    sslmode and sslrootcert are given as keywords, which win over anything in the URL.
    """
    parts = urlsplit(url)
    host, port, user = parts.hostname or "", parts.port or 5432, unquote(parts.username or "")
    root_certificate = os.environ["PGSSLROOTCERT"]

    def connect(database: str | None) -> Connection:
        conninfo = make_conninfo(url, sslmode="verify-full", sslrootcert=root_certificate, connect_timeout=10)
        if database:
            conninfo = make_conninfo(conninfo, dbname=database)
        return psycopg.connect(conninfo, autocommit=True)

    for attempt in range(1, _URL_CONNECT_ATTEMPTS + 1):
        try:
            connection = connect(None)
            break
        except psycopg.OperationalError as error:
            failure = connection_failure(error, host, port, user)
            if failure is None and attempt < _URL_CONNECT_ATTEMPTS:
                _log(f"{host}:{port} not reachable ({type(error).__name__}), retrying")
                time.sleep(2)
                continue
            sys.exit(f"bootstrap_db: {failure or connection_failure(error, host, port, '') or error}")
    return Admin(user, False, connect), connection


def _verifier(connection: Connection, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier libpq computes client-side (what psql's \\password sends)."""
    return connection.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


# Attributes that only a superuser may change (even to turn them off, PostgreSQL 15 and 16's
# AlterRole): named in an ALTER only when the role has them, so an admin that is not a superuser
# can keep a role in shape that never had them, and fails loudly on one that has.
_SUPERUSER_ONLY = {"rolsuper": "NOSUPERUSER", "rolreplication": "NOREPLICATION", "rolbypassrls": "NOBYPASSRLS"}
_ATTRIBUTES = "LOGIN NOCREATEDB NOCREATEROLE INHERIT"


def _apply_roles(connection: Connection, admin: Admin, user: str, user_password: str) -> None:
    role = sql.Identifier(user)
    password = sql.Literal(_verifier(connection, user, user_password))
    columns = ", ".join(_SUPERUSER_ONLY)
    current = connection.execute(f"SELECT {columns} FROM pg_roles WHERE rolname = %s", (user,)).fetchone()  # noqa: S608 - constant column names
    if current is None:
        attributes = f"{_ATTRIBUTES} {' '.join(_SUPERUSER_ONLY.values())}"
        statement = sql.SQL("CREATE ROLE {} {} PASSWORD {}").format(role, sql.SQL(attributes), password)
    else:
        removed = [clause for has, clause in zip(current, _SUPERUSER_ONLY.values(), strict=True) if has]
        attributes = " ".join([_ATTRIBUTES, *removed])
        statement = sql.SQL("ALTER ROLE {} {} PASSWORD {}").format(role, sql.SQL(attributes), password)
    connection.execute(statement)
    # No inherited powers either (pg_execute_server_program, pg_read_server_files, rds_superuser, ...).
    granted = connection.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
        (user,),
    ).fetchall()
    for (group,) in granted:
        connection.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(str(group)), role))
    if admin.local:
        # Set by initdb (the image requires one), or by an earlier release of this job.
        connection.execute(sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(admin.role)))
        _log(f"role '{user}' (unprivileged) has the declared password; superuser '{admin.role}' has none")
        return
    # Without SUPERUSER, CREATE DATABASE ... OWNER and ALTER DATABASE/TABLE/SCHEMA ... OWNER TO
    # need the admin to be a member of the new owner (PostgreSQL 16 and later: able to SET ROLE
    # to it, which GRANT gives by default). That way round only: MLflow's role gains nothing
    # from the admin. Harmless, if unneeded, for an admin that is a superuser.
    connection.execute(sql.SQL("GRANT {} TO {}").format(role, sql.Identifier(admin.role)))
    _log(f"role '{user}' (unprivileged) has the declared password; admin '{admin.role}' keeps its own")


# Every relation, type and routine outside the system schemas that MLflow's role
# does not own yet; sequences owned by a column follow their table.
_FOREIGN_OBJECTS = """
SELECT 'TABLE', c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relowner <> %(role)s::regrole
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
UNION ALL
SELECT 'TYPE', t.oid::regtype::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
   AND t.typtype IN ('e', 'd', 'r', 'm') AND t.typowner <> %(role)s::regrole
UNION ALL
SELECT 'ROUTINE', p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.proowner <> %(role)s::regrole
"""


def _database_exists(connection: Connection, database: str) -> bool:
    return connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


def _own_database(admin: Admin, user: str, database: str) -> None:
    with admin.connect(None) as connection:
        if not _database_exists(connection, database):
            _log(f"creating database {database}")
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user))
            )
        connection.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(user))
        )
    with admin.connect(database) as connection:
        objects = connection.execute(_FOREIGN_OBJECTS, {"role": user}).fetchall()
        for kind, name in objects:
            connection.execute(
                sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(str(kind)), sql.SQL(str(name)), sql.Identifier(user))
            )
        if objects:
            _log(f"database {database}: {len(objects)} objects handed to '{user}'")


def _scratch_database(admin: Admin, user: str, database: str) -> None:
    """The empty database where `mlflow-backup verify` proves a dump loads.

    Made here, so the role needs no CREATEDB; owned by the admin, so the role owns
    only the tracking and auth databases. The role may connect, and owns the `public`
    schema, which verify drops and re-creates (CREATE on the database) to empty it.
    """
    with admin.connect(None) as connection:
        if not _database_exists(connection, database):
            _log(f"creating scratch database {database}")
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        # Stacks of an earlier release made the role its owner.
        connection.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(admin.role))
        )
        connection.execute(
            sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(user)
            )
        )
    with admin.connect(database) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS public"))
        connection.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(user)))


def _stop(_signal: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def _wait_until_stopped(ready_file: Path) -> None:
    """Marks the bootstrap done for the health check, then idles until the engine stops the task."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ready_file.write_text("done\n", encoding="utf-8")
    _log(f"idle until stopped ({ready_file} marks it done)")
    while True:
        signal.pause()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bootstrap_db.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--then-wait",
        metavar="READY_FILE",
        type=Path,
        help="keep the (read-only) secret files, write READY_FILE once done, then idle until stopped",
    )
    ready_file: Path | None = parser.parse_args(argv).then_wait
    keep = ready_file is not None
    user = os.environ["POSTGRES_USER"]
    user_password = _take_secret("POSTGRES_PASSWORD_FILE", keep=keep)
    if os.environ.get("POSTGRES_ADMIN_URL_FILE"):
        admin, connection = _url_admin(_take_secret("POSTGRES_ADMIN_URL_FILE", keep=keep))
    else:
        admin, connection = _socket_admin(os.environ["POSTGRES_SUPERUSER"], user)
    try:
        with connection:
            _apply_roles(connection, admin, user, user_password)
        tracking = os.environ["POSTGRES_DB"]
        for database in (tracking, os.environ["POSTGRES_AUTH_DB"]):
            _own_database(admin, user, database)
        _scratch_database(admin, user, f"{tracking}{SCRATCH_DATABASE_SUFFIX}")
    except psycopg.Error as error:
        if admin.local:
            raise
        # One line, naming the setting: what the admin role lacks on the external database.
        reason = " ".join(str(error).split())
        sys.exit(
            f"bootstrap_db: externalDatabaseUrl's admin role '{admin.role}' could not set up MLflow's role "
            f"and databases ({reason}): it needs CREATEROLE and CREATEDB"
        )
    _log("done")
    if ready_file is not None:
        _wait_until_stopped(ready_file)


if __name__ == "__main__":
    main()
