"""The gc container: `mlflow gc` on a schedule, purging long-deleted runs and their artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.docker_common import (
    RESTART_POLICY,
    SECRETS_DIR,
    container_labels,
    hardening,
    secrets_volume,
)
from components.mlflow_server import ARTIFACTS_DIR, MLFLOW_UID

GC_COMMAND = "/usr/local/bin/mlflow-gc"
_DB_PASSWORD_FILE = f"{SECRETS_DIR}/postgres-password"
MEMORY_MB = 512
# The loop exits on SIGTERM; a gc cut short is simply run again on the next schedule.
STOP_TIMEOUT_SECONDS = 30
_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}  # noqa: S108 - a private tmpfs, not a shared /tmp
# The first release whose `gc --older-than` works on Postgres: before it, the age
# filter is bound as text (`bigint < character varying`, mlflow/mlflow#25574).
FIRST_WORKING_GC = (3, 17, 0)


def gc_warning(mlflow_version: str) -> str | None:
    """What `pulumi up` says when this release's gc cannot purge anything; None when it can."""
    release = tuple(int(part) for part in mlflow_version.split(".")[:3])
    if release >= FIRST_WORKING_GC:
        return None
    return (
        f"mlflowVersion {mlflow_version}: `mlflow gc --older-than` fails on Postgres before MLflow "
        f"{'.'.join(map(str, FIRST_WORKING_GC))} (mlflow/mlflow#25574), so deleted runs are not purged and "
        "the gc container stays unhealthy until mlflowVersion is raised"
    )


class GarbageCollectorArgs(TypedDict):
    image: pulumi.Input[str]
    """The MLflow image, by ID: the same MLflow as the server."""
    container_name: str
    """Docker name of the container."""
    artifacts_volume_name: pulumi.Input[str]
    """The artifacts volume, mounted read-write: gc deletes purged runs' artifacts."""
    network_name: pulumi.Input[str]
    """The stack network, where Postgres is reachable."""
    postgres_host: str
    """Postgres's alias on the network."""
    postgres_port: int
    """Postgres's port on the network."""
    database: str
    """Tracking database."""
    user: str
    """Database role."""
    password: pulumi.Input[str]
    """Database password (secret); uploaded as a 0400 file."""
    mlflow_version: str
    """The image's MLflow release: one whose gc fails on Postgres is warned about."""
    older_than: str
    """`mlflow gc --older-than`: how long a run stays deleted before it is purged."""
    interval_seconds: int
    """Time between gc runs."""
    telemetry_enabled: bool
    """Let MLflow send its usage telemetry; off unless true."""
    log_max_size: str
    """json-file log size that triggers rotation."""
    log_max_files: int
    """Rotated log files kept."""
    labels: dict[str, str]
    """Labels that identify the stack."""
    start_after: Sequence[pulumi.Resource]
    """Resources that must exist first: the server, which creates and upgrades the schema."""


class GarbageCollector(pulumi.ComponentResource):
    """`mlflow gc --older-than` every interval, the first 10 minutes after start; output in the container log."""

    container: docker.Container

    def __init__(self, name: str, args: GarbageCollectorArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:gc:GarbageCollector", name, None, opts)
        # A warning, not a refusal: an older release is still a valid start of an upgrade.
        if (warning := gc_warning(args["mlflow_version"])) is not None:
            pulumi.log.warn(warning, resource=self)
        envs = [
            f"POSTGRES_HOST={args['postgres_host']}",
            f"POSTGRES_PORT={args['postgres_port']}",
            f"POSTGRES_DB={args['database']}",
            f"POSTGRES_USER={args['user']}",
            f"POSTGRES_PASSWORD_FILE={_DB_PASSWORD_FILE}",
            f"ARTIFACTS_DIR={ARTIFACTS_DIR}",
            f"GC_OLDER_THAN={args['older_than']}",
            f"GC_INTERVAL_SECONDS={args['interval_seconds']}",
            "HOME=/tmp",
            "TMPDIR=/tmp",
        ]
        if not args["telemetry_enabled"]:
            envs.append("MLFLOW_DISABLE_TELEMETRY=true")
        self.container = docker.Container(
            f"{name}-container",
            name=args["container_name"],
            image=args["image"],
            user=f"{MLFLOW_UID}:{MLFLOW_UID}",
            entrypoints=[GC_COMMAND],
            command=["loop"],
            envs=envs,
            uploads=[
                docker.ContainerUploadArgs(
                    file=_DB_PASSWORD_FILE,
                    content=pulumi.Output.secret(args["password"]),
                    owner=MLFLOW_UID,
                    group=MLFLOW_UID,
                    permissions="0400",
                )
            ],
            volumes=[
                docker.ContainerVolumeArgs(volume_name=args["artifacts_volume_name"], container_path=ARTIFACTS_DIR),
                secrets_volume(),
            ],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args["network_name"])],
            # The image's own check probes the server's port, which this container has not.
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", GC_COMMAND, "health"], interval="10s", timeout="10s", retries=3, start_period="5m"
            ),
            restart=RESTART_POLICY,
            read_only=True,
            tmpfs=_TMPFS,
            **hardening(MEMORY_MB, args["log_max_size"], args["log_max_files"]),
            labels=container_labels(args["labels"]),
            # Not waited for: the server does not need it, and a gc that fails must not
            # block a deployment (before MLflow 3.17.0, 3.12 included, `gc --older-than`
            # fails on Postgres: its experiment age filter is bound as text, `bigint <
            # character varying`); it shows as unhealthy in `docker ps` and logs each failure.
            wait=False,
            stop_signal="SIGTERM",
            stop_timeout=STOP_TIMEOUT_SECONDS,
            destroy_grace_seconds=STOP_TIMEOUT_SECONDS,
            # Its name is fixed: the provider creates a replacement before deleting the
            # old container unless told otherwise, and Docker refuses a second name.
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args["start_after"]), delete_before_replace=True),
        )
        self.register_outputs({"container_name": self.container.name})
