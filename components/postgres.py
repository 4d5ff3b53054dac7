"""PostgreSQL for the tracking store: pinned image, data volume, a superuser that only bootstraps.

The cluster's superuser (`postgres`, the official image's default) gets a generated
password only because the image's initdb requires one; `DatabaseBootstrap` removes
it (so the superuser cannot log in over the network at all) and makes and keeps
MLflow's role in shape over the local socket, which this component shares through
a volume. The container is on the stack's internal database network only, with a
read-only root file system.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from components.context import StackContext
from components.db_bootstrap import SocketAdmin
from components.postgres_facts import (
    DATA_MOUNT,
    PGDATA,
    POSTGRES_PORT,
    POSTGRES_USER,
    SOCKET_DIR,
    SUPERUSER,
    SUPERUSER_PASSWORD_FILE,
)
from components.secrets import generated_password
from components.settings import DatabaseSettings
from components.target import Runner, StackVolume
from components.task_limits import POSTGRES_TASKS
from components.workload import DATABASE, Attachment, File, HealthCheck, Mount, Workload, secret_file

# A scratch volume of its own: Docker refuses uploads into a read-only root, and one at
# /usr/local/bin would hide the image's entrypoint behind a copy of it.
_ENTRYPOINT_DIR = "/opt/mlflow-platform"
_ENTRYPOINT = f"{_ENTRYPOINT_DIR}/postgres-entrypoint"
_ENTRYPOINT_SOURCE = Path(__file__).resolve().parent.parent / "mlflow" / "postgres" / "entrypoint.sh"
# SIGINT is Postgres's "fast shutdown": sessions end, a checkpoint is written, the
# next start needs no crash recovery. The checkpoint of a busy cluster can take a
# while; Docker's default 10 s (and pulumi-docker's 0 s on destroy) would SIGKILL it.
STOP_SIGNAL = "SIGINT"
STOP_TIMEOUT_SECONDS = 120
_ROLE = "database"


# Where the image writes outside its volumes under a read-only root: the official entrypoint's
# scratch files while it initialises a cluster (bash here-documents; nss_wrapper's passwd for
# a uid without one). The data and socket directories are volumes, /dev/shm is shm_size's.
_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}  # noqa: S108 - a private tmpfs, not a shared /tmp


# Connections kept free for maintenance (psql, pg_dump, the health probe) on top of the
# server's own, and the floor: Postgres's default.
_SPARE_CONNECTIONS = 20
_MIN_MAX_CONNECTIONS = 100


def server_command(memory_mb: int, client_connections: int) -> list[str]:
    """`postgres -c ...`: memory settings sized to the container's limit, durability spelled out.

    Postgres's defaults assume a 128 MB machine (shared_buffers 128MB, effective_cache_size
    4GB whatever the memory). A quarter of the limit for shared buffers and three quarters
    as the planner's cache estimate are the usual starting points; the rest is left to
    backends and the page cache, which the container's limit also counts. fsync and
    synchronous_commit are Postgres's defaults, repeated so no tuning turns them off: an
    acknowledged metric must survive a crash (tests/test_e2e_production.py).
    """
    settings = {
        "max_connections": str(max(_MIN_MAX_CONNECTIONS, client_connections + _SPARE_CONNECTIONS)),
        "shared_buffers": f"{max(16, memory_mb // 4)}MB",
        "effective_cache_size": f"{max(32, memory_mb * 3 // 4)}MB",
        "maintenance_work_mem": f"{max(16, min(1024, memory_mb // 16))}MB",
        "fsync": "on",
        "synchronous_commit": "on",
    }
    command = ["postgres"]
    for name, value in settings.items():
        command += ["-c", f"{name}={value}"]
    return command


class PostgresDatabaseArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to."""
    database: DatabaseSettings
    """The pinned image, the generated passwords' length, the memory limit."""
    alias: str
    """Host name other containers on the database network use for it."""
    secrets_rotation: str
    """Keeper of the generated passwords: a new value rotates them."""
    client_connections: int
    """The most connections the clients (the server's workers) open at once."""


class PostgresDatabase(pulumi.ComponentResource):
    """A Postgres container reachable only on the stack's internal database network, health-gated."""

    password: random.RandomPassword
    superuser_password: random.RandomPassword
    superuser: str
    image: docker.RemoteImage
    image_reference: pulumi.Output[str]
    """What workloads run the image by (its ID on one host, its pinned reference on a swarm)."""
    volume: StackVolume
    socket_volume: StackVolume
    container: Runner
    alias: str
    host: str
    port: int
    admin: SocketAdmin
    ca_certificate: str

    def __init__(self, name: str, args: PostgresDatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:database:PostgresDatabase", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # MLflow's role's password (DatabaseBootstrap applies it). Same resource name
        # as when it was the superuser's, so existing stacks keep their value.
        length, rotation = args["database"].password_length, args["secrets_rotation"]
        self.password = generated_password(f"{name}-password", length, rotation, child)
        # The official image refuses to initialise a data directory without a superuser
        # password; DatabaseBootstrap removes it again (PASSWORD NULL) on every data
        # directory. Nothing connects with it.
        self.superuser = SUPERUSER
        self.superuser_password = generated_password(f"{name}-superuser-password", length, rotation, child)
        stack = args["stack"]
        target = stack.target
        self.image = target.pulled_image(self, f"{name}-image", args["database"].image)
        self.image_reference = target.pulled_image_reference(self.image)
        self.volume = target.volume(self, f"{name}-data", stack.name("pgdata"), _ROLE)
        # Holds no data (Postgres recreates its socket on every start), but is
        # protected like the others so that every volume of a shared stack is.
        self.socket_volume = target.volume(self, f"{name}-socket", stack.name("pgsocket"), _ROLE)
        self.alias = args["alias"]
        self.port = POSTGRES_PORT
        self.container = target.service(self, f"{name}-container", self._workload(args))
        # What the rest of the stack needs of a database, as ExternalDatabase has it too.
        self.host = self.alias
        self.admin = SocketAdmin(socket_volume_name=self.socket_volume.name, postgres_container=self.container)
        # On the internal network only: no TLS (nothing but the stack's own containers reach it).
        self.ca_certificate = ""
        self.register_outputs(
            {
                "container_name": self.container.name,
                "volume_name": self.volume.name,
                "socket_volume_name": self.socket_volume.name,
                "image_id": self.image.image_id,
            }
        )

    def _workload(self, args: PostgresDatabaseArgs) -> Workload:
        return Workload(
            name=args["stack"].name("postgres"),
            role=_ROLE,
            # The image ID (one host) or pinned reference (swarm), not the tag: a changed
            # postgresImage replaces the container.
            image=self.image_reference,
            # Started as postgres itself, the official entrypoint needs no root and no
            # capabilities (it only chowns when started as root).
            user=POSTGRES_USER,
            max_tasks=POSTGRES_TASKS,
            # Checks the data directory's major version, then runs the image's own entrypoint.
            entrypoint=[_ENTRYPOINT],
            command=server_command(args["database"].memory_mb, args["client_connections"]),
            environment=[
                # The superuser and its database: the tracking and auth databases and
                # MLflow's role are DatabaseBootstrap's.
                f"POSTGRES_USER={self.superuser}",
                f"POSTGRES_PASSWORD_FILE={SUPERUSER_PASSWORD_FILE}",
                f"PGDATA={PGDATA}",
                pulumi.Output.concat("POSTGRES_IMAGE_REFERENCE=", args["database"].image),
            ],
            files=[
                secret_file(SUPERUSER_PASSWORD_FILE, self.superuser_password.result),
                File(_ENTRYPOINT, _ENTRYPOINT_SOURCE.read_text(encoding="utf-8"), mode="0755"),
            ],
            mounts=[
                Mount(DATA_MOUNT, self.volume.name),
                Mount(SOCKET_DIR, self.socket_volume.name),
                Mount(_ENTRYPOINT_DIR),
            ],
            read_only_root=True,
            tmpfs=_TMPFS,
            # Docker's 64 MiB /dev/shm is too small for parallel query workers.
            shm_size_mb=256,
            # Only on the internal network: no route out, and nothing but its clients reaches it.
            networks=[Attachment(DATABASE, [self.alias])],
            health=HealthCheck(
                # Over TCP: during first start the entrypoint runs a socket-only
                # server for init scripts, which a socket probe would call ready.
                test=["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", self.superuser, "-d", "postgres"],
                # Every 2 s (pg_isready costs nothing): before Docker 25 the first probe runs an
                # interval after the start, and MLflow, the bootstrap and `up` wait for it, as does
                # every stop-first restart of a running stack. 30 failures (a minute): unhealthy.
                interval="2s",
                timeout="5s",
                retries=30,
                start_period="30s",
            ),
            memory_mb=args["database"].memory_mb,
            stop_signal=STOP_SIGNAL,
            stop_grace_seconds=STOP_TIMEOUT_SECONDS,
            # Two postmasters on one data directory would corrupt it.
            single_writer=True,
        )
