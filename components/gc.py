"""The gc workload: `mlflow gc` on a schedule, purging long-deleted runs and their artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import pulumi

from components import artifact_store
from components.context import DatabaseEndpoint, StackContext
from components.mlflow_facts import ARTIFACTS_DIR, GC_COMMAND, MLFLOW_USER, database_environment, database_files
from components.settings import ArtifactSettings, GcSettings
from components.target import Runner
from components.task_limits import MLFLOW_TASKS
from components.workload import DATABASE, FRONT, Attachment, HealthCheck, Mount, Workload

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
    stack: StackContext
    """The stack it belongs to."""
    image: pulumi.Input[str]
    """The MLflow image, by ID: the same MLflow as the server."""
    artifacts_volume_name: pulumi.Input[str]
    """The artifacts volume, mounted read-write: gc deletes purged runs' artifacts (not mounted with a bucket)."""
    artifacts: ArtifactSettings
    """Where the artifacts are: with a bucket, gc deletes purged runs' objects there, with the server's credentials."""
    database: DatabaseEndpoint
    """The tracking database and the role gc connects as."""
    mlflow_version: str
    """The image's MLflow release: one whose gc fails on Postgres is warned about."""
    gc: GcSettings
    """`mlflow gc --older-than` (how long a run stays deleted before it is purged), and how often."""
    telemetry_enabled: bool
    """Let MLflow send its usage telemetry; off unless true."""
    start_after: Sequence[pulumi.Resource]
    """Resources that must exist first: the server, which creates and upgrades the schema."""


class GarbageCollector(pulumi.ComponentResource):
    """`mlflow gc --older-than` every interval, the first 10 minutes after start; output in the container log."""

    container: Runner

    def __init__(self, name: str, args: GarbageCollectorArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:gc:GarbageCollector", name, None, opts)
        # A warning, not a refusal: an older release is still a valid start of an upgrade.
        if (warning := gc_warning(args["mlflow_version"])) is not None:
            pulumi.log.warn(warning, resource=self)
        stack = args["stack"]
        self.container = stack.target.service(
            self, f"{name}-container", _workload(args), depends_on=args["start_after"]
        )
        self.register_outputs({"container_name": self.container.name})


def _workload(args: GarbageCollectorArgs) -> Workload:
    artifacts = args["artifacts"]
    files = database_files(args["database"])
    if artifacts.in_bucket:
        store = artifact_store.environment(artifacts)
        files += artifact_store.files(artifacts)
        mounts = []
    else:
        store = [f"ARTIFACTS_DIR={ARTIFACTS_DIR}"]
        mounts = [Mount(ARTIFACTS_DIR, args["artifacts_volume_name"])]
    environment = [
        *database_environment(args["database"]),
        *store,
        f"GC_OLDER_THAN={args['gc'].older_than}",
        f"GC_INTERVAL_SECONDS={args['gc'].interval_seconds}",
        "HOME=/tmp",
        "TMPDIR=/tmp",
    ]
    if not args["telemetry_enabled"]:
        environment.append("MLFLOW_DISABLE_TELEMETRY=true")
    return Workload(
        name=args["stack"].name("gc"),
        role="gc",
        image=args["image"],
        user=MLFLOW_USER,
        max_tasks=MLFLOW_TASKS,
        entrypoint=[GC_COMMAND],
        command=["loop"],
        environment=environment,
        files=files,
        mounts=mounts,
        # Postgres on the internal network; the front one keeps a way out (an object store).
        networks=[Attachment(FRONT), Attachment(DATABASE)],
        # The image's own check probes the server's port, which this workload has not.
        health=HealthCheck(
            test=["CMD", GC_COMMAND, "health"], interval="10s", timeout="10s", retries=3, start_period="5m"
        ),
        # Not waited for: the server does not need it, and a gc that fails must not block
        # a deployment (before MLflow 3.17.0 `gc --older-than` fails on Postgres, see
        # gc_warning); it shows as unhealthy in `docker ps` and logs each failure.
        wait_healthy=False,
        tmpfs=_TMPFS,
        memory_mb=MEMORY_MB,
        stop_signal="SIGTERM",
        stop_grace_seconds=STOP_TIMEOUT_SECONDS,
    )
