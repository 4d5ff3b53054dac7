"""The backup container: scheduled dumps of both databases plus the artifacts, and their restore;
with a backup bucket, the backup-offsite container that copies every backup off the host."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import pulumi

from components import artifact_store
from components.context import DatabaseEndpoint, StackContext
from components.mlflow_facts import ARTIFACTS_DIR, DB_CA_FILE, MLFLOW_UID, database_tls_environment
from components.settings import BackupSettings, BucketLocation
from components.target import Runner, StackVolume
from components.task_limits import MLFLOW_TASKS
from components.workload import (
    DATABASE,
    FRONT,
    SECRETS_DIR,
    Attachment,
    HealthCheck,
    Mount,
    Workload,
    config_file,
    secret_file,
)

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
_NAME = "backup"
_ROLE = "backup"
# The off-host copier: mlflow/backup/offsite.py, uploaded into the MLflow image (which has boto3).
OFFSITE_SCRIPT_SOURCE = SCRIPT_SOURCE.parent / "offsite.py"
OFFSITE_SCRIPT_PATH = "/opt/mlflow-offsite/mlflow-offsite"
OFFSITE_CREDENTIALS_FILE = f"{SECRETS_DIR}/backup-store-credentials"
OFFSITE_CA_FILE = f"{SECRETS_DIR}/backup-store-ca.pem"
OFFSITE_MEMORY_MB = 384  # one 64 MiB part in flight, plus Python and boto3
_OFFSITE_NAME = "backup-offsite"


class BackupServiceArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to."""
    image: pulumi.Input[str]
    """The database's image, by ID: the same Postgres major as the server."""
    image_reference: str
    """The same image by reference, for the restore command printed to operators."""
    mlflow_image: pulumi.Input[str]
    """The MLflow image, by ID: the backup-offsite container's (it has boto3; the Postgres image has no S3 client)."""
    artifacts_in_bucket: bool
    """The artifacts are in a bucket (artifactStore s3): backups hold the databases only."""
    artifacts_volume_name: pulumi.Input[str]
    """The artifacts volume, mounted read-only."""
    database: DatabaseEndpoint
    """Both databases and their owner, the MLflow role; its password goes into a 0400 pgpass file."""
    admin_username: str
    """The MLflow admin whose current password a restore keeps; empty without auth."""
    mlflow_version: str
    """Recorded in each manifest."""
    backups: BackupSettings
    """Time between scheduled backups, and how many are kept (older ones go after each backup)."""
    start_after: Sequence[pulumi.Input[pulumi.Resource]]
    """Resources that must exist first: the health-gated Postgres container."""


def backup_config(args: BackupServiceArgs, network_name: str, artifacts_volume_name: str) -> str:
    """The script's settings, as shell assignments; every value is a checked identifier or number.

    `network_name` is the network the one-off restore container joins to reach the database: the
    internal one for Postgres in the stack, the front one (its route out) for an external database.
    """
    database = args["database"]
    values = {
        "PGHOST": database.host,
        "PGPORT": str(database.port),
        "PGUSER": database.role,
        "PGPASSFILE": PGPASS_FILE,
        "TRACKING_DB": database.database,
        "AUTH_DB": database.auth_database,
        "ADMIN_USERNAME": args["admin_username"],
        "MLFLOW_VERSION": args["mlflow_version"],
        "BACKUP_DIR": BACKUP_DIR,
        "ARTIFACTS_DIR": ARTIFACTS_DIR,
        "INTERVAL_SECONDS": str(args["backups"].interval_seconds),
        "KEEP": str(args["backups"].keep),
        # For the one-off restore command the script prints.
        "CONTAINER_NAME": args["stack"].name(_NAME),
        "NETWORK_NAME": network_name,
        "ARTIFACTS_VOLUME": artifacts_volume_name,
        "IMAGE": args["image_reference"],
        "ARTIFACTS_IN_BUCKET": "1" if args["artifacts_in_bucket"] else "0",
        "OFFSITE": "1" if args["backups"].copied_offsite else "0",
        "OFFSITE_CONTAINER": args["stack"].name(_OFFSITE_NAME),
    }
    assignments = "".join(f"{key}='{value}'\n" for key, value in values.items())
    tls = dict(variable.split("=", 1) for variable in database_tls_environment(database))
    if tls:
        # An external database: pg_dump, pg_restore and psql over TLS, verified against its CA.
        # Exported here (the script exports only PGHOST..PGPASSFILE), so the one-off restore
        # container, which sources the same file, verifies it too.
        assignments += "".join(f"{key}='{value}'\n" for key, value in tls.items())
        assignments += f"export {' '.join(tls)}\n"
    return assignments


class BackupService(pulumi.ComponentResource):
    """A container that backs up the stack on a schedule and restores a backup on request."""

    volume: StackVolume
    container: Runner
    offsite: Runner | None

    def __init__(self, name: str, args: BackupServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:backups:BackupService", name, None, opts)
        stack = args["stack"]
        self.volume = stack.target.volume(self, f"{name}-volume", stack.name("backups"), _ROLE)
        self.container = stack.target.service(
            self, f"{name}-container", self._workload(args), depends_on=args["start_after"]
        )
        self.offsite = None
        if args["backups"].copied_offsite:
            self.offsite = stack.target.service(
                self, f"{name}-offsite", self._offsite_workload(args), depends_on=[self.container]
            )
        self.register_outputs({"container_name": self.container.name, "volume_name": self.volume.name})

    def _workload(self, args: BackupServiceArgs) -> Workload:
        stack, database = args["stack"], args["database"]
        network = stack.network_name(FRONT if database.external else DATABASE)
        config = pulumi.Output.all(network, args["artifacts_volume_name"]).apply(
            lambda names: backup_config(args, names[0], names[1])
        )
        # libpq's password file: host:port:database:user:password.
        pgpass = pulumi.Output.concat(f"{database.host}:{database.port}:*:{database.role}:", database.password, "\n")
        return Workload(
            name=stack.name(_NAME),
            role=_ROLE,
            image=args["image"],
            user=f"{BACKUP_UID}:{BACKUP_UID}",
            max_tasks=MLFLOW_TASKS,
            entrypoint=[SCRIPT_PATH],
            command=["schedule"],
            environment=[f"MLFLOW_BACKUP_CONFIG={CONFIG_PATH}", "TMPDIR=/tmp"],
            files=[
                config_file(SCRIPT_PATH, SCRIPT_SOURCE.read_text(encoding="utf-8"), mode="0755"),
                config_file(CONFIG_PATH, config),
                secret_file(PGPASS_FILE, pgpass),
                *([config_file(DB_CA_FILE, database.ca_certificate)] if database.external else []),
            ],
            mounts=[
                Mount(BACKUP_DIR, self.volume.name),
                Mount(ARTIFACTS_DIR, args["artifacts_volume_name"], read_only=True),
                # Scratch volumes: uploads cannot go into a read-only root file system.
                # Docker first copies the image's /usr/local/bin (its entrypoint) into the
                # fresh volume, so only the script is added.
                Mount(str(Path(SCRIPT_PATH).parent)),
                Mount(str(Path(CONFIG_PATH).parent)),
            ],
            # Postgres on the internal network; the front one keeps a way out (an object store).
            networks=[Attachment(FRONT), Attachment(DATABASE)],
            health=HealthCheck(
                # Unhealthy once the newest backup is older than twice the interval:
                # a stopped or failing schedule shows in `docker ps`.
                test=["CMD", SCRIPT_PATH, "health"],
                interval="10s",
                timeout="10s",
                retries=3,
                start_period="5m",
            ),
            tmpfs=_TMPFS,
            memory_mb=MEMORY_MB,
            stop_signal="SIGTERM",
            stop_grace_seconds=STOP_TIMEOUT_SECONDS,
            # One schedule: two would dump and prune the same backups directory at once.
            single_writer=True,
        )

    def _offsite_workload(self, args: BackupServiceArgs) -> Workload:
        """Copies each new backup to the backup bucket and brings one back for `--from offsite`.

        The same uid as the backup container (both read and write the backups volume); no network
        to Postgres, only the front one, the way out to the store; the bucket's key pair as a file.
        """
        offsite = args["backups"].offsite
        return Workload(
            name=args["stack"].name(_OFFSITE_NAME),
            role=_OFFSITE_NAME,
            image=args["mlflow_image"],
            user=f"{BACKUP_UID}:{BACKUP_UID}",
            max_tasks=MLFLOW_TASKS,
            entrypoint=[OFFSITE_SCRIPT_PATH],
            command=["serve"],
            environment=[*offsite_environment(offsite), f"BACKUP_DIR={BACKUP_DIR}", "HOME=/tmp", "TMPDIR=/tmp"],
            files=[
                config_file(OFFSITE_SCRIPT_PATH, OFFSITE_SCRIPT_SOURCE.read_text(encoding="utf-8"), mode="0755"),
                *artifact_store.bucket_files(offsite, OFFSITE_CREDENTIALS_FILE, OFFSITE_CA_FILE),
            ],
            mounts=[Mount(BACKUP_DIR, self.volume.name), Mount(str(Path(OFFSITE_SCRIPT_PATH).parent))],
            networks=[Attachment(FRONT)],
            # Healthy once the start-up check passed and a pass copied every backup: a bucket it
            # cannot use stops `pulumi up` here, before any backup is said to be off the host.
            health=HealthCheck(
                test=["CMD", OFFSITE_SCRIPT_PATH, "health"], interval="5s", timeout="10s", retries=3, start_period="2m"
            ),
            tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=16m"},  # noqa: S108 - a private tmpfs
            memory_mb=OFFSITE_MEMORY_MB,
            stop_signal="SIGTERM",
            stop_grace_seconds=STOP_TIMEOUT_SECONDS,
        )


def offsite_environment(offsite: BucketLocation) -> list[str]:
    """Where the backup bucket is, for mlflow-offsite; never a key (those are in the credentials file)."""
    envs = [f"OFFSITE_BUCKET={offsite.bucket}", f"OFFSITE_PREFIX={offsite.prefix}"]
    if offsite.endpoint:
        envs.append(f"OFFSITE_ENDPOINT={offsite.endpoint}")
    if offsite.region:
        envs.append(f"AWS_DEFAULT_REGION={offsite.region}")
    if offsite.path_style:
        envs.append("OFFSITE_PATH_STYLE=true")
    if offsite.access_key_id:
        envs.append(f"AWS_SHARED_CREDENTIALS_FILE={OFFSITE_CREDENTIALS_FILE}")
    if offsite.ca_certificate:
        envs.append(f"AWS_CA_BUNDLE={OFFSITE_CA_FILE}")
    return envs
