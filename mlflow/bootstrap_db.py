"""Puts the stack's database roles and passwords in force; run by DatabaseBootstrap.

Connects over Postgres's local socket, which the official image trusts, so it
works whatever passwords the data directory was made with. On every run it:
- moves a stack made before this layout (MLflow connecting as the bootstrap
  superuser, named like MLflow's role) to it: the superuser is renamed to
  POSTGRES_SUPERUSER and a new, unprivileged role takes MLflow's name;
- makes MLflow's role a plain login role (no SUPERUSER, CREATEDB, CREATEROLE,
  REPLICATION, BYPASSRLS, no membership such as pg_execute_server_program) with
  the generated password;
- removes the superuser's password (PASSWORD NULL): password authentication then
  always fails for it, so no client on the network can log in as the superuser
  with any password; the local socket, which only this job shares, stays trusted;
- creates the tracking and auth databases if missing and gives MLflow's role
  ownership of them and of every object in them (restored or migrated data).

The password is read from its file, which is then emptied before anything else
happens: the exited container stays (Pulumi keeps its record of the run), and
holds no secret. With `--then-wait READY_FILE` (a swarm, which has no one-shot
workload) it runs as a service instead: it keeps the file, a read-only swarm secret
held in memory and gone with the task, writes READY_FILE once done (its health check)
and idles until it is stopped. It is sent only as a SCRAM verifier computed here by libpq, so
neither the server's statement log nor an error report can show it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import psycopg
from psycopg import sql

_CONNECT_ATTEMPTS = 30
# Renames the legacy superuser: a session cannot rename its own role.
_MIGRATION_ROLE = "mlflow_platform_migration"


# settings.py keeps the tracking database's name short enough for both suffixes.
SCRATCH_DATABASE_SUFFIX = "_tmp"


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


def _connect(user: str, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(host=os.environ["POSTGRES_SOCKET_DIR"], user=user, dbname=database, autocommit=True)


def _role_exists(connection: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    return connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _connect_as_superuser(superuser: str, user: str) -> psycopg.Connection[tuple[object, ...]]:
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


def _verifier(connection: psycopg.Connection[tuple[object, ...]], role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier libpq computes client-side (what psql's \\password sends)."""
    return connection.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


def _apply_roles(
    connection: psycopg.Connection[tuple[object, ...]], superuser: str, user: str, user_password: str
) -> None:
    role = sql.Identifier(user)
    password = _verifier(connection, user, user_password)
    attributes = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT")
    verb = "ALTER" if _role_exists(connection, user) else "CREATE"
    connection.execute(
        sql.SQL("{} ROLE {} {} PASSWORD {}").format(sql.SQL(verb), role, attributes, sql.Literal(password))
    )
    # No inherited powers either (pg_execute_server_program, pg_read_server_files, ...).
    granted = connection.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
        (user,),
    ).fetchall()
    for (group,) in granted:
        connection.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(str(group)), role))
    # Set by initdb (the image requires one), or by an earlier release of this job.
    connection.execute(sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(superuser)))
    _log(f"role '{user}' (unprivileged) has the declared password; superuser '{superuser}' has none")


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


def _own_database(superuser: str, user: str, database: str) -> None:
    with _connect(superuser) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            _log(f"creating database {database}")
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user))
            )
        connection.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(user))
        )
    with _connect(superuser, database) as connection:
        objects = connection.execute(_FOREIGN_OBJECTS, {"role": user}).fetchall()
        for kind, name in objects:
            connection.execute(
                sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(str(kind)), sql.SQL(str(name)), sql.Identifier(user))
            )
        if objects:
            _log(f"database {database}: {len(objects)} objects handed to '{user}'")


def _scratch_database(superuser: str, user: str, database: str) -> None:
    """The empty database where `mlflow-backup verify` proves a dump loads.

    Made here, so the role needs no CREATEDB; owned by the superuser, so the role owns
    only the tracking and auth databases. The role may connect, and owns the `public`
    schema, which verify drops and re-creates (CREATE on the database) to empty it.
    """
    with _connect(superuser) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            _log(f"creating scratch database {database}")
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        # Stacks of an earlier release made the role its owner.
        connection.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(superuser))
        )
        connection.execute(
            sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(user)
            )
        )
    with _connect(superuser, database) as connection:
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
        help="keep the (read-only) secret file, write READY_FILE once done, then idle until stopped",
    )
    ready_file: Path | None = parser.parse_args(argv).then_wait
    superuser, user = os.environ["POSTGRES_SUPERUSER"], os.environ["POSTGRES_USER"]
    user_password = _take_secret("POSTGRES_PASSWORD_FILE", keep=ready_file is not None)
    with _connect_as_superuser(superuser, user) as connection:
        _apply_roles(connection, superuser, user, user_password)
    tracking = os.environ["POSTGRES_DB"]
    for database in (tracking, os.environ["POSTGRES_AUTH_DB"]):
        _own_database(superuser, user, database)
    _scratch_database(superuser, user, f"{tracking}{SCRATCH_DATABASE_SUFFIX}")
    _log("done")
    if ready_file is not None:
        _wait_until_stopped(ready_file)


if __name__ == "__main__":
    main()
