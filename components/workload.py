"""What runs, as plain typed data: one description per workload, whatever engine runs it.

A component says *what* its workload is (image, command, files, mounts, health check,
limits, ports); a target (`components/standalone.py` today, swarm services next) says
*how* that becomes resources. Nothing here imports a provider: the same description
is realised as a `docker.Container` on one host or as a service in a cluster, the way
a Compose file or a Kubernetes pod spec is.

What every workload of the stack shares (no capabilities, no privilege gain, rotated
logs, stack labels, secret files in memory-backed places) is not described here: the
target applies it to every workload, so none can miss it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pulumi

# Every workload takes its secrets from files here, never from its environment.
SECRETS_DIR = "/run/secrets"
# Restarted after a crash or an engine restart, but not after an operator's `docker stop`.
RESTART_ALWAYS = "unless-stopped"

# The stack's two networks, by what they are for (their Docker names are the stack context's).
StackNetworkRole = Literal["front", "database"]
FRONT: StackNetworkRole = "front"
"""The network with a route out: the proxy, MLflow and the workloads that may need egress. Never Postgres."""
DATABASE: StackNetworkRole = "database"
"""The internal network (no route out): Postgres, and only the workloads that talk to it."""
# The order every workload's networks are attached in, whatever order a description names them in.
NETWORK_ORDER: tuple[StackNetworkRole, ...] = (FRONT, DATABASE)


@dataclass(frozen=True)
class File:
    """A file placed in the workload before it starts.

    `secret` files belong to the workload's own user with mode 0400 and their content
    stays a secret end to end; the others are public and usually root-owned, so the
    workload cannot rewrite what it is configured with.
    """

    path: str
    content: pulumi.Input[str]
    secret: bool = False
    owner: str | None = None
    mode: str = "0444"


def secret_file(path: str, content: pulumi.Input[str]) -> File:
    """A 0400 file owned by the workload's user, its content kept secret."""
    return File(path=path, content=content, secret=True, mode="0400")


def config_file(path: str, content: pulumi.Input[str], *, mode: str = "0444") -> File:
    """A public, root-owned file: configuration, a script, a certificate."""
    return File(path=path, content=content, owner="0", mode=mode)


@dataclass(frozen=True)
class Mount:
    """A volume at `path`: a named one (`volume`), or with no name a scratch volume
    that lives and dies with the workload (uploads need one under a read-only root)."""

    path: str
    volume: pulumi.Input[str] | None = None
    read_only: bool = False


@dataclass(frozen=True)
class HealthCheck:
    """Docker's health check: `pulumi up` and the engine wait on it."""

    test: Sequence[str]
    interval: str
    timeout: str
    retries: int
    start_period: str


@dataclass(frozen=True)
class Port:
    """A port published on the host (`ip:published` -> `target` inside)."""

    target: int
    published: int
    ip: str


@dataclass(frozen=True)
class Attachment:
    """One of the stack's networks a workload joins, and the names it is reached by there."""

    network: StackNetworkRole
    aliases: Sequence[str] | None = None
    """None joins without aliases."""


@dataclass(frozen=True)
class Workload:
    """One long-running process (or one-shot job) of the stack."""

    name: str
    """Docker name of what runs it (container today, service next)."""
    role: str
    """What it is in the stack, for the labels an operator filters by."""
    image: pulumi.Input[str]
    """By ID or digest: a changed image replaces the workload."""
    user: str
    """uid:gid it runs as; owner of its secret files."""
    memory_mb: pulumi.Input[int]
    """Memory limit; no swap on top."""
    max_tasks: int
    """Processes and threads its uid may run (RLIMIT_NPROC, counted per uid: components/task_limits.py)."""
    entrypoint: Sequence[str] | None = None
    command: pulumi.Input[Sequence[str]] | None = None
    environment: Sequence[pulumi.Input[str]] = ()
    """`KEY=value` entries; never a secret (those are `files`)."""
    files: Sequence[File] = ()
    mounts: Sequence[Mount] = ()
    read_only_root: bool = True
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    shm_size_mb: int | None = None
    health: HealthCheck | None = None
    wait_healthy: bool = True
    """`pulumi up` returns only once it is healthy (needs `health`)."""
    stop_signal: str | None = None
    stop_grace_seconds: int | None = None
    """How long a stop, a replacement or a destroy waits before killing it."""
    networks: Sequence[Attachment] | None = None
    """The stack networks it joins and its aliases on each; () none at all (a job that talks over a
    socket). None: the networks its stack context gives (`StackContext.joins`), each with `network_aliases`."""
    network_aliases: Sequence[str] | None = None
    """Names it is reached by on each network it joins when `networks` is None; None: no aliases."""
    ports: Sequence[Port] | None = None
    """Published ports; None publishes nothing and says nothing about it."""
    extra_labels: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Labels beyond the stack's own (for example what a job ran against)."""
    replicas: int = 1
    """Tasks a cluster runs at once (rolled one at a time); one container on a single engine, whatever this says."""
    stop_all_on_change: str | None = None
    """A value whose change must stop every instance before any new one starts: the MLflow release,
    whose schema migration must not run while servers of the old release still answer. A cluster then
    replaces the service (all old tasks stopped first) instead of rolling it; a container on a single
    engine stops before its replacement starts whatever changed."""
    single_writer: bool = False
    """Two instances must never run at once (Postgres on its data directory): a cluster stops the old
    task before it starts the new one, instead of starting the new one first."""
    image_entrypoint: Sequence[str] | None = None
    """The image's own ENTRYPOINT, named when `entrypoint` is None: a target that wraps the process
    (swarm sets RLIMIT_NPROC in a shell before it execs it) must know what it execs."""
