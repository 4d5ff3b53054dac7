"""Puts the declared database secrets and roles in force on every data directory.

The official Postgres image applies POSTGRES_PASSWORD only when it initialises an
empty data directory, so kept, restored or migrated data would keep whatever
passwords it was made with. This one-shot job (the MLflow image's bootstrap_db.py)
connects to Postgres over its local socket, which the image trusts, and sets:
MLflow's role (not a superuser, no CREATEDB/CREATEROLE, owner of the tracking and
auth databases only) with the generated password; no password at all for the
superuser, which then cannot log in over the network, only over the socket; and
moves stacks made with MLflow connecting as the superuser to that layout. Its
inputs hold the secret it applies, so it is replaced, and runs again, whenever
that changes, as well as when the Postgres container is replaced.

With an external database (externalDatabaseUrl) there is no socket: the job connects
over TCP with the admin URL (a 0400 secret file it empties too), verifies the server
with sslmode verify-full against the CA, and applies the same rules to MLflow's role
and databases, as an admin that need not be a superuser (managed Postgres).

The container stays (exited) for `pulumi up --refresh` to find, so it is not run
again on every update; the job empties its secret file as soon as it has read it,
so what stays holds no secret.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypedDict

import pulumi

from components.context import DatabaseEndpoint, StackContext
from components.mlflow_facts import (
    BOOTSTRAP_SCRIPT,
    DB_ADMIN_URL_FILE,
    DB_PASSWORD_FILE,
    MLFLOW_USER,
    database_files,
    database_tls_environment,
)
from components.postgres_facts import SOCKET_DIR, SUPERUSER
from components.target import Runner
from components.task_limits import MLFLOW_TASKS
from components.workload import FRONT, Attachment, HealthCheck, Mount, Workload, secret_file

# Python, psycopg and nothing else: a fraction of what the server needs.
_MEMORY_MB = 256
# Marks which Postgres container the bootstrap ran against: a replaced Postgres
# container (new image, restored volume) replaces the bootstrap too.
POSTGRES_CONTAINER_LABEL = "org.mlflow-platform.bootstrapped-container"
# On a target without one-shot jobs (swarm) the bootstrap stays up once done; this file,
# on its private tmpfs, tells its health check (and so `pulumi up`) that it is done.
READY_FILE = "/tmp/bootstrap-done"  # noqa: S108 - on the task's private tmpfs
_READY_HEALTH = HealthCheck(
    test=["CMD", "test", "-e", READY_FILE], interval="5s", timeout="5s", retries=3, start_period="2m"
)


@dataclass(frozen=True)
class SocketAdmin:
    """Postgres in the stack: its superuser, over the local socket the container shares."""

    socket_volume_name: pulumi.Input[str]
    """Volume holding Postgres's local socket."""
    postgres_container: Runner
    """The health-gated Postgres container (or service) the bootstrap runs against."""


@dataclass(frozen=True)
class UrlAdmin:
    """An external database: an admin role (CREATEROLE and CREATEDB; no superuser needed), over TLS."""

    url: pulumi.Output[str]
    """Secret: postgresql://user:password@host:port/database (externalDatabaseUrl)."""


class DatabaseBootstrapArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to."""
    image: pulumi.Input[str]
    """The MLflow image (it carries bootstrap_db.py, Python and psycopg)."""
    admin: SocketAdmin | UrlAdmin
    """How the bootstrap connects with the power to make roles and databases."""
    database: DatabaseEndpoint
    """MLflow's role, its password and the two databases it owns (and an external one's CA)."""


class DatabaseBootstrap(pulumi.ComponentResource):
    """Runs bootstrap_db.py once per change and fails the deployment if it fails."""

    container: Runner
    succeeded: pulumi.Output[Runner]

    def __init__(self, name: str, args: DatabaseBootstrapArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:database:DatabaseBootstrap", name, None, opts)
        admin = args["admin"]
        target = args["stack"].target
        workload = _workload(args)
        if not target.runs_jobs_once:
            workload = _staying_up(workload)
        after = [admin.postgres_container] if isinstance(admin, SocketAdmin) else []
        job = target.job(self, f"{name}-container", workload, depends_on=after)
        self.container = job.container
        self.succeeded = job.succeeded
        self.register_outputs({"container_name": self.container.name})


def _workload(args: DatabaseBootstrapArgs) -> Workload:
    """The job: over Postgres's local socket in the stack, or with the admin URL against an external database.

    A changed secret, URL or CA changes the job's files, so it is replaced and runs again.
    """
    admin, database = args["admin"], args["database"]
    job = Workload(
        name=args["stack"].name("db-bootstrap"),
        role="database-bootstrap",
        image=args["image"],
        user=MLFLOW_USER,
        max_tasks=MLFLOW_TASKS,
        entrypoint=["python", BOOTSTRAP_SCRIPT],
        memory_mb=_MEMORY_MB,
    )
    mlflow_role = [
        f"POSTGRES_USER={database.role}",
        f"POSTGRES_PASSWORD_FILE={DB_PASSWORD_FILE}",
        f"POSTGRES_DB={database.database}",
        f"POSTGRES_AUTH_DB={database.auth_database}",
    ]
    if isinstance(admin, UrlAdmin):
        # TLS verified against the database's CA; the URL holds the admin's password.
        return dataclasses.replace(
            job,
            environment=[
                f"POSTGRES_ADMIN_URL_FILE={DB_ADMIN_URL_FILE}",
                *mlflow_role,
                *database_tls_environment(database),
            ],
            files=[secret_file(DB_ADMIN_URL_FILE, pulumi.Output.secret(admin.url)), *database_files(database)],
            # The database is outside the stack: the front network has the route out.
            networks=[Attachment(FRONT)],
        )
    return dataclasses.replace(
        job,
        environment=[f"POSTGRES_SOCKET_DIR={SOCKET_DIR}", f"POSTGRES_SUPERUSER={SUPERUSER}", *mlflow_role],
        files=[secret_file(DB_PASSWORD_FILE, database.password)],
        # Read-only is enough to connect to a socket.
        mounts=[Mount(SOCKET_DIR, admin.socket_volume_name, read_only=True)],
        # The socket is its only way to Postgres; it needs no network at all.
        networks=[],
        extra_labels={POSTGRES_CONTAINER_LABEL: admin.postgres_container.id},
    )


def _staying_up(workload: Workload) -> Workload:
    """The bootstrap as a service that stays up once done (a swarm has no one-shot workload).

    It keeps its secret file (a swarm secret: read-only, in memory, gone with the task) and is
    healthy once done, which `pulumi up` waits for before MLflow starts.
    """
    return dataclasses.replace(
        workload,
        command=["--then-wait", READY_FILE],
        tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=1m"},  # noqa: S108 - a private tmpfs
        health=_READY_HEALTH,
        stop_signal="SIGTERM",
        stop_grace_seconds=10,
    )
