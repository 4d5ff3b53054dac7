"""The backup container: scheduled dumps of both databases plus the artifacts, and their restore."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.docker_common import (
    RESTART_POLICY,
    SECRETS_DIR,
    container_labels,
    hardening,
    secrets_volume,
    volume_labels,
)
from components.mlflow_server import ARTIFACTS_DIR, MLFLOW_UID

# The script is uploaded into the container, so the stack's own pinned Postgres
# image runs it unchanged: no image to build, and pg_dump always matches the server.
SCRIPT_SOURCE = Path(__file__).resolve().parent.parent / "mlflow" / "backup" / "mlflow-backup"
SCRIPT_PATH = "/usr/local/bin/mlflow-backup"
CONFIG_PATH = "/etc/mlflow-backup/backup.conf"
PGPASS_FILE = f"{SECRETS_DIR}/pgpass"
# The official image's PGDATA: a directory owned by postgres with mode 1777, the
# only empty writable directory the image ships. A fresh volume mounted there
# takes that mode (Docker copies a mount point's ownership into an empty volume),
# so a container running as another non-root uid can write to it.
BACKUP_DIR = "/var/lib/postgresql/data"
# Runs as the MLflow server's uid: the server writes artifacts 0600 (its umask is
# 077), so only that uid can read them for a backup and write them back on restore.
BACKUP_UID = MLFLOW_UID
MEMORY_MB = 512
# `docker stop` lets a running dump finish its current step (the script traps SIGTERM
# between steps); a backup cut off after this leaves a .partial directory that the
# next start removes, never a listed backup.
STOP_TIMEOUT_SECONDS = 60
_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=256m"}  # noqa: S108 - a private tmpfs, not a shared /tmp


class BackupServiceArgs(TypedDict):
    image: pulumi.Input[str]
    """The database's image, by ID: the same Postgres major as the server."""
    image_reference: str
    """The same image by reference, for the restore command printed to operators."""
    container_name: str
    """Docker name of the container."""
    volume_name: str
    """Docker name of the backups volume; fixed, so a redeploy finds the backups again."""
    artifacts_volume_name: pulumi.Input[str]
    """The artifacts volume, mounted read-only."""
    network_name: pulumi.Input[str]
    """The stack network, where Postgres is reachable."""
    postgres_host: str
    """Postgres's alias on the network."""
    postgres_port: int
    """Postgres's port on the network."""
    database: str
    """Tracking database; the auth database is this name plus `_auth`."""
    user: str
    """Database role: the MLflow role, owner of both databases."""
    password: pulumi.Input[str]
    """Database password (secret); uploaded as a 0400 pgpass file."""
    admin_username: str
    """The MLflow admin whose current password a restore keeps; empty without auth."""
    mlflow_version: str
    """Recorded in each manifest."""
    interval_seconds: int
    """Time between scheduled backups."""
    keep: int
    """Backups kept; older ones are deleted after each backup."""
    protect_data: bool
    """Protect the backups volume from deletion by destroy or replacement."""
    log_max_size: str
    """json-file log size that triggers rotation."""
    log_max_files: int
    """Rotated log files kept."""
    startup_timeout_seconds: int
    """How long `pulumi up` waits for the container to be healthy."""
    labels: dict[str, str]
    """Labels that identify the stack."""
    start_after: Sequence[pulumi.Input[pulumi.Resource]]
    """Resources that must exist first: the health-gated Postgres container."""


def backup_config(args: BackupServiceArgs, network_name: str, artifacts_volume_name: str) -> str:
    """The script's settings, as shell assignments; every value is a checked identifier or number."""
    values = {
        "PGHOST": args["postgres_host"],
        "PGPORT": str(args["postgres_port"]),
        "PGUSER": args["user"],
        "PGPASSFILE": PGPASS_FILE,
        "TRACKING_DB": args["database"],
        "AUTH_DB": f"{args['database']}_auth",
        "ADMIN_USERNAME": args["admin_username"],
        "MLFLOW_VERSION": args["mlflow_version"],
        "BACKUP_DIR": BACKUP_DIR,
        "ARTIFACTS_DIR": ARTIFACTS_DIR,
        "INTERVAL_SECONDS": str(args["interval_seconds"]),
        "KEEP": str(args["keep"]),
        # For the one-off restore command the script prints.
        "CONTAINER_NAME": args["container_name"],
        "NETWORK_NAME": network_name,
        "ARTIFACTS_VOLUME": artifacts_volume_name,
        "IMAGE": args["image_reference"],
    }
    return "".join(f"{key}='{value}'\n" for key, value in values.items())


class BackupService(pulumi.ComponentResource):
    """A container that backs up the stack on a schedule and restores a backup on request."""

    volume: docker.Volume
    container: docker.Container

    def __init__(self, name: str, args: BackupServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:backups:BackupService", name, None, opts)
        self.volume = docker.Volume(
            f"{name}-volume",
            name=args["volume_name"],
            labels=volume_labels(args["labels"]),
            opts=pulumi.ResourceOptions(
                parent=self, protect=args["protect_data"], retain_on_delete=args["protect_data"]
            ),
        )
        config = pulumi.Output.all(args["network_name"], args["artifacts_volume_name"]).apply(
            lambda names: backup_config(args, names[0], names[1])
        )
        # libpq's password file: host:port:database:user:password.
        pgpass: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.concat(
                f"{args['postgres_host']}:{args['postgres_port']}:*:{args['user']}:", args["password"], "\n"
            )
        )
        self.container = docker.Container(
            f"{name}-container",
            name=args["container_name"],
            image=args["image"],
            user=f"{BACKUP_UID}:{BACKUP_UID}",
            entrypoints=[SCRIPT_PATH],
            command=["schedule"],
            envs=[f"MLFLOW_BACKUP_CONFIG={CONFIG_PATH}", "TMPDIR=/tmp"],
            uploads=[
                docker.ContainerUploadArgs(
                    file=SCRIPT_PATH,
                    content=SCRIPT_SOURCE.read_text(encoding="utf-8"),
                    owner="0",
                    group="0",
                    permissions="0755",
                ),
                docker.ContainerUploadArgs(file=CONFIG_PATH, content=config, owner="0", group="0", permissions="0444"),
                docker.ContainerUploadArgs(
                    file=PGPASS_FILE, content=pgpass, owner=BACKUP_UID, group=BACKUP_UID, permissions="0400"
                ),
            ],
            volumes=[
                docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path=BACKUP_DIR),
                docker.ContainerVolumeArgs(
                    volume_name=args["artifacts_volume_name"], container_path=ARTIFACTS_DIR, read_only=True
                ),
                # Anonymous volumes: uploads cannot go into a read-only root file
                # system. Docker first copies the image's /usr/local/bin (its
                # entrypoint) into the fresh volume, so only the script is added.
                docker.ContainerVolumeArgs(container_path=str(Path(SCRIPT_PATH).parent)),
                docker.ContainerVolumeArgs(container_path=str(Path(CONFIG_PATH).parent)),
                secrets_volume(),
            ],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args["network_name"])],
            healthcheck=docker.ContainerHealthcheckArgs(
                # Unhealthy once the newest backup is older than twice the interval:
                # a stopped or failing schedule shows in `docker ps`.
                tests=["CMD", SCRIPT_PATH, "health"],
                interval="10s",
                timeout="10s",
                retries=3,
                start_period="5m",
            ),
            restart=RESTART_POLICY,
            read_only=True,
            tmpfs=_TMPFS,
            **hardening(MEMORY_MB, args["log_max_size"], args["log_max_files"]),
            labels=container_labels(args["labels"]),
            wait=True,
            wait_timeout=args["startup_timeout_seconds"],
            stop_signal="SIGTERM",
            stop_timeout=STOP_TIMEOUT_SECONDS,
            destroy_grace_seconds=STOP_TIMEOUT_SECONDS,
            # Its name is fixed: the provider creates a replacement before deleting the
            # old container unless told otherwise, and Docker refuses a second name.
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args["start_after"]), delete_before_replace=True),
        )
        self.register_outputs({"container_name": self.container.name, "volume_name": self.volume.name})
