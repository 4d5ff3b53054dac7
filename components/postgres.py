"""PostgreSQL for the tracking store: pinned image, data volume, a superuser that only bootstraps.

The cluster's superuser (`postgres`, the official image's default) gets its own
generated password; MLflow's role is made and kept in shape by `DatabaseBootstrap`
over the local socket, which this component shares through a volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from components.docker_common import (
    RESTART_POLICY,
    SECRETS_DIR,
    container_labels,
    hardening,
    secrets_volume,
    volume_labels,
)
from components.secrets import generated_password
from components.settings import SUPERUSER

POSTGRES_PORT = 5432
# The official image's postgres user and group.
POSTGRES_UID = "999"
_DATA_MOUNT = "/var/lib/postgresql/data"
# A subdirectory: initdb refuses a mount point that holds anything (lost+found on
# some volume drivers), and the official image documents this layout.
_PGDATA = f"{_DATA_MOUNT}/pgdata"
SUPERUSER_PASSWORD_FILE = f"{SECRETS_DIR}/postgres-superuser-password"
# The official image's socket directory: local connections there are trusted, so
# whoever mounts the socket volume is the superuser (only the bootstrap does).
SOCKET_DIR = "/var/run/postgresql"
_ENTRYPOINT = "/usr/local/bin/mlflow-platform-postgres-entrypoint"
_ENTRYPOINT_SOURCE = Path(__file__).resolve().parent.parent / "mlflow" / "postgres" / "entrypoint.sh"
# SIGINT is Postgres's "fast shutdown": sessions end, a checkpoint is written, the
# next start needs no crash recovery. The checkpoint of a busy cluster can take a
# while; Docker's default 10 s (and pulumi-docker's 0 s on destroy) would SIGKILL it.
STOP_SIGNAL = "SIGINT"
STOP_TIMEOUT_SECONDS = 120


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
    image: pulumi.Input[str]
    """Postgres image reference, pinned to a tag or digest."""
    container_name: pulumi.Input[str]
    """Docker name of the container."""
    volume_name: pulumi.Input[str]
    """Docker name of the data volume; fixed, so a redeploy finds the data again."""
    socket_volume_name: pulumi.Input[str]
    """Docker name of the volume that holds the server's local socket."""
    network_name: pulumi.Input[str]
    """Network the container joins; its only way in."""
    alias: str
    """Host name other containers on the network use for it."""
    password_length: int
    """Length of the generated passwords."""
    secrets_rotation: str
    """Keeper of the generated superuser password: a new value rotates it."""
    memory_mb: pulumi.Input[int]
    """Memory limit in MiB; swap is not allowed on top."""
    client_connections: int
    """The most connections the clients (the server's workers) open at once."""
    log_max_size: str
    """json-file log size that triggers rotation."""
    log_max_files: int
    """Rotated log files kept."""
    protect_data: bool
    """Protect the data volume from deletion by destroy or replacement."""
    startup_timeout_seconds: pulumi.Input[int]
    """How long `pulumi up` waits for the container to be healthy."""
    labels: dict[str, str]
    """Labels that identify the stack."""


class PostgresDatabase(pulumi.ComponentResource):
    """A Postgres container reachable only on the stack network, health-gated."""

    password: random.RandomPassword
    superuser_password: random.RandomPassword
    superuser: str
    image: docker.RemoteImage
    volume: docker.Volume
    socket_volume: docker.Volume
    container: docker.Container
    alias: str
    port: int

    def __init__(self, name: str, args: PostgresDatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:database:PostgresDatabase", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # MLflow's role's password (DatabaseBootstrap applies it). Same resource name
        # as when it was the superuser's, so existing stacks keep their value.
        self.password = generated_password(f"{name}-password", args["password_length"], args["secrets_rotation"], child)
        # initdb sets it on a new data directory; DatabaseBootstrap sets it on every
        # other (kept or restored data, a rotation). Nothing connects with it.
        self.superuser = SUPERUSER
        self.superuser_password = generated_password(
            f"{name}-superuser-password", args["password_length"], args["secrets_rotation"], child
        )
        # keep_locally: a destroy must not delete an image other stacks may run.
        self.image = docker.RemoteImage(f"{name}-image", name=args["image"], keep_locally=True, opts=child)
        self.volume = docker.Volume(
            f"{name}-data",
            name=args["volume_name"],
            labels=volume_labels(args["labels"]),
            opts=pulumi.ResourceOptions(
                parent=self, protect=args["protect_data"], retain_on_delete=args["protect_data"]
            ),
        )
        # Holds no data (Postgres recreates its socket on every start), but is
        # protected like the others so that every volume of a shared stack is.
        self.socket_volume = docker.Volume(
            f"{name}-socket",
            name=args["socket_volume_name"],
            labels=volume_labels(args["labels"]),
            opts=pulumi.ResourceOptions(
                parent=self, protect=args["protect_data"], retain_on_delete=args["protect_data"]
            ),
        )
        self.alias = args["alias"]
        self.port = POSTGRES_PORT
        self.container = docker.Container(
            f"{name}-container",
            name=args["container_name"],
            # The image ID, not the tag: a changed postgresImage replaces the container.
            image=self.image.image_id,
            # Started as postgres itself, the official entrypoint needs no root and no
            # capabilities (it only chowns when started as root).
            user=f"{POSTGRES_UID}:{POSTGRES_UID}",
            # Checks the data directory's major version, then runs the image's own entrypoint.
            entrypoints=[_ENTRYPOINT],
            command=pulumi.Output.from_input(args["memory_mb"]).apply(
                lambda memory_mb: server_command(memory_mb, args["client_connections"])
            ),
            envs=[
                # The superuser and its database: the tracking and auth databases and
                # MLflow's role are DatabaseBootstrap's.
                f"POSTGRES_USER={self.superuser}",
                f"POSTGRES_PASSWORD_FILE={SUPERUSER_PASSWORD_FILE}",
                f"PGDATA={_PGDATA}",
                pulumi.Output.concat("POSTGRES_IMAGE_REFERENCE=", args["image"]),
            ],
            uploads=[
                docker.ContainerUploadArgs(
                    file=SUPERUSER_PASSWORD_FILE,
                    content=pulumi.Output.secret(self.superuser_password.result),
                    owner=POSTGRES_UID,
                    group=POSTGRES_UID,
                    permissions="0400",
                ),
                docker.ContainerUploadArgs(
                    file=_ENTRYPOINT, content=_ENTRYPOINT_SOURCE.read_text(encoding="utf-8"), permissions="0755"
                ),
            ],
            volumes=[
                docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path=_DATA_MOUNT),
                docker.ContainerVolumeArgs(volume_name=self.socket_volume.name, container_path=SOCKET_DIR),
                secrets_volume(),
            ],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args["network_name"], aliases=[self.alias])],
            healthcheck=docker.ContainerHealthcheckArgs(
                # Over TCP: during first start the entrypoint runs a socket-only
                # server for init scripts, which a socket probe would call ready.
                tests=["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", self.superuser, "-d", "postgres"],
                interval="5s",
                timeout="5s",
                retries=12,
                start_period="30s",
            ),
            restart=RESTART_POLICY,
            **hardening(args["memory_mb"], args["log_max_size"], args["log_max_files"]),
            # Docker's 64 MiB /dev/shm is too small for parallel query workers.
            shm_size=256,
            labels=container_labels(args["labels"]),
            wait=True,
            wait_timeout=args["startup_timeout_seconds"],
            stop_signal=STOP_SIGNAL,
            # `docker stop` and engine shutdowns wait this long ...
            stop_timeout=STOP_TIMEOUT_SECONDS,
            # ... and so does a replacement or destroy (pulumi-docker's default is 0 s).
            destroy_grace_seconds=STOP_TIMEOUT_SECONDS,
            # The name is fixed: the old container must go before its replacement starts.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.register_outputs(
            {
                "container_name": self.container.name,
                "volume_name": self.volume.name,
                "socket_volume_name": self.socket_volume.name,
                "image_id": self.image.image_id,
            }
        )
