"""The swarm target: each workload a `docker.Service` on a swarm manager, its files swarm secrets and configs.

The only module that calls pulumi-docker's service, secret and service-config constructors.
It realises the same descriptions as components/standalone.py (components/workload.py), and
applies what every service shares once: the stack's labels, rotated logs, a memory limit,
a read-only root, no capabilities, rolling updates that start the new task before stopping
the old one and roll back on failure, and RLIMIT_NPROC.

What a 20.10 swarm cannot apply, and pulumi-docker's Service cannot declare:
- `no-new-privileges`: a service has no security options (SwarmKit's Privileges gained
  NoNewPrivileges only in Docker 27, API 1.46; pulumi-docker's `privileges` has credential
  spec and SELinux context only). No workload runs a setuid binary or one with file
  capabilities (the proxy image drops Caddy's), and every capability is dropped, so a gain
  has nothing to gain from; README "Swarm" and the policy pack say so.
- ulimits and a pids limit: RLIMIT_NPROC is set by a shell around the workload's own
  entrypoint (`_with_task_limit`), which then execs it, so the limit holds for it as on one host.
- a host address to publish on: a published port is bound on every interface of the node
  (the settings refuse any bindAddress but 0.0.0.0 or :: with engine swarm).

Swarm's virtual IPs and its ingress routing mesh need the kernel's IPVS, which not every
host has (the CI machines' kernels do not: a VIP or an ingress port accepts nothing, and
nothing logs why). So every service resolves by DNS round robin to its tasks' own
addresses (`dnsrr`), and the front door publishes its ports in host mode on the node that
runs it (the one labelled for Postgres, where its certificate volume lives): neither needs
IPVS, and the proxy balances over MLflow's tasks itself.
- a tmpfs owner or noexec: Docker mounts a service's tmpfs noexec, nosuid and nodev always;
  one the description wants owned by the workload's uid is made world-writable with the
  sticky bit instead (only the workload's own uid runs inside the task to write there).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

import pulumi
import pulumi_docker as docker

from components.context import StackContext
from components.target import Job, NodeVolume, Runner, pulled_image
from components.workload import DATABASE, FRONT, NETWORK_ORDER, Attachment, File, Mount, Workload

LOG_DRIVER = "json-file"
# Restarted after any exit: a task that ends is replaced, whatever its exit code.
RESTART_CONDITION = "any"
RESTART_DELAY = "5s"
# Rolling updates: one task at a time, the new one healthy before the old one stops, and
# back to the previous spec when a new task fails (swarm then rolls back the same way).
UPDATE_PARALLELISM = 1
START_FIRST = "start-first"
STOP_FIRST = "stop-first"
# DNS round robin over the tasks' own addresses instead of a virtual IP (see the module's docstring).
ENDPOINT_MODE = "dnsrr"
ROLLBACK = "rollback"
PAUSE = "pause"
# Monitored after each task update when the workload has no health check of its own.
_DEFAULT_MONITOR_SECONDS = 30
# How often pulumi-docker asks whether the tasks have converged.
CONVERGE_DELAY = "5s"
# Sets RLIMIT_NPROC, soft and hard alike, then execs the workload's own entrypoint and command
# ("$@"). Debian's dash calls the limit -p, busybox and bash -u: the first that works is used,
# and `set -e` stops the task (instead of running it unlimited) if neither does.
TASK_LIMIT_SCRIPT = 'set -e; ulimit -u {limit} 2>/dev/null || ulimit -p {limit}; exec "$@"'
TASK_LIMIT_SHELL = "/bin/sh"
# Secret files: readable by their owner only, as the standalone target uploads them.
SECRET_FILE_MODE = 0o400
# Swarm refuses a secret or config name longer than 64 characters; auto-naming adds 8 (`-` and 7 hex).
FILE_OBJECT_NAME_LIMIT = 64 - 8
# A tmpfs the description owns by uid (which swarm cannot set): world-writable with the sticky bit.
SHARED_TMPFS_MODE = 0o1777
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION = re.compile(r"^(\d+)([smh])$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600}
_LabelArgs = TypeVar(
    "_LabelArgs",
    docker.ServiceLabelArgs,
    docker.ServiceTaskSpecContainerSpecLabelArgs,
    docker.NetworkLabelArgs,
    docker.SecretLabelArgs,
    docker.ServiceConfigLabelArgs,
    docker.ServiceTaskSpecContainerSpecMountVolumeOptionsLabelArgs,
)


class SwarmTarget:
    """Realises workloads as swarm services, with the stack's shared settings applied to each."""

    def __init__(self, context: StackContext) -> None:
        self.context = context

    @property
    def runs_jobs_once(self) -> bool:
        """pulumi-docker's Service has no job mode: a job runs as a service that stays up once done."""
        return False

    def pulled_image(
        self, owner: pulumi.Resource, resource_name: str, reference: pulumi.Input[str]
    ) -> docker.RemoteImage:
        """An image from a registry, pulled on the manager too (the nodes pull it by reference)."""
        return pulled_image(owner, resource_name, reference)

    def pulled_image_reference(self, image: docker.RemoteImage) -> pulumi.Output[str]:
        """The pinned reference: an image ID means nothing to another node, which pulls by name."""
        return image.name

    def built_image(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        image_name: pulumi.Input[str],
        context: str,
        build_args: Mapping[str, pulumi.Input[str]],
    ) -> docker.Image:
        """An image built on the manager; with imageRegistry, pushed there for every node to pull.

        Services run it by `repo_digest`: after a push the registry's digest (`<registry>/...@sha256:`),
        which any node can pull; without a registry the manager's image ID, which only the manager
        has (a single-node swarm).
        """
        registry = self.context.registry
        build = docker.DockerBuildArgs(
            context=context,
            # Relative to the project, not the context, since pulumi-docker 4.0.1.
            dockerfile=f"{context}/Dockerfile",
            args=dict(build_args),
        )
        opts = pulumi.ResourceOptions(parent=owner)
        if registry is None:
            return docker.Image(resource_name, image_name=image_name, build=build, skip_push=True, opts=opts)
        return docker.Image(
            resource_name,
            image_name=pulumi.Output.concat(registry.server, "/", image_name),
            build=build,
            skip_push=False,
            registry=docker.RegistryArgs(
                server=registry.host,
                username=registry.username or None,
                password=pulumi.Output.secret(registry.password) if registry.username else None,
            ),
            opts=opts,
        )

    def network(
        self, owner: pulumi.Resource, resource_name: str, docker_name: pulumi.Input[str], *, internal: bool = False
    ) -> docker.Network:
        """An overlay network spanning the swarm's nodes; services on it resolve each other by alias.

        Attachable, so a one-off maintenance container (`docker run --network ...`: a restore, a
        psql session) can join it as on one host. `internal`: no route out of the overlay.
        """
        return docker.Network(
            resource_name,
            name=docker_name,
            driver="overlay",
            attachable=True,
            internal=True if internal else None,
            labels=_labels(docker.NetworkLabelArgs, self.context.labels("network")),
            opts=pulumi.ResourceOptions(parent=owner),
        )

    def volume(self, owner: pulumi.Resource, resource_name: str, docker_name: str, role: str) -> NodeVolume:
        """A named volume, made by the engine of the node whose task first mounts it; nothing declared.

        It lives on that node: every workload that mounts one is pinned to the stack's data node
        (postgresNodeLabel), so its tasks always find their data there. Swarm never removes a named
        volume with its service, so a destroy keeps the data as `protect` does on one host.
        """
        del owner, resource_name, role
        return NodeVolume(name=pulumi.Output.from_input(docker_name))

    def service(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        workload: Workload,
        depends_on: Sequence[pulumi.Input[pulumi.Resource]] = (),
    ) -> docker.Service:
        """A replicated service, health-gated when it says so, updated one task at a time."""
        return self._service(owner, resource_name, workload, depends_on)

    def job(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        workload: Workload,
        depends_on: Sequence[pulumi.Input[pulumi.Resource]] = (),
    ) -> Job:
        """A one-shot workload as a one-task service that stays up once done (no job mode in pulumi-docker).

        Its description must say when it is done (a health check, healthy once its work
        succeeded): `pulumi up` waits for that, and what depends on the job starts after it.
        A failed run exits, and swarm runs it again until the wait for convergence gives up.
        """
        if workload.health is None or not workload.wait_healthy:
            raise ValueError(
                f"workload {workload.name}: a job on swarm runs as a service; its description needs a "
                "health check that passes once the job is done (Target.runs_jobs_once is false)"
            )
        if workload.replicas != 1:
            raise ValueError(f"workload {workload.name}: a job runs once, not in {workload.replicas} replicas")
        service = self._service(owner, resource_name, workload, depends_on)
        return Job(service, service.id.apply(lambda _: _runner(service)))

    def _service(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        workload: Workload,
        depends_on: Sequence[pulumi.Input[pulumi.Resource]],
    ) -> docker.Service:
        context = self.context
        labels = {**context.labels(workload.role), **workload.extra_labels}
        uid = workload.user.split(":", 1)[0]
        files_opts = pulumi.ResourceOptions(parent=owner)
        secrets = [
            self._secret(_file_object_name(resource_name, file), file, uid, workload.role, files_opts)
            for file in workload.files
            if file.secret
        ]
        configs = [
            self._config(_file_object_name(resource_name, file), file, workload.role, files_opts)
            for file in workload.files
            if not file.secret
        ]
        health = workload.health
        log = context.log_rotation
        # Only a health check can be waited for; without one, convergence means no more than "started".
        wait = workload.wait_healthy and health is not None
        # A host-mode port is the node's: a second task on it could not bind it until the first stops.
        order = STOP_FIRST if workload.single_writer or workload.ports else START_FIRST
        monitor = f"{_monitor_seconds(workload)}s"
        commands, args = _with_task_limit(workload)
        return docker.Service(
            resource_name,
            name=workload.name,
            labels=_labels(docker.ServiceLabelArgs, labels),
            mode=docker.ServiceModeArgs(replicated=docker.ServiceModeReplicatedArgs(replicas=workload.replicas)),
            task_spec=docker.ServiceTaskSpecArgs(
                container_spec=docker.ServiceTaskSpecContainerSpecArgs(
                    image=workload.image,
                    user=workload.user,
                    commands=commands,
                    args=args,
                    env=_environment(workload.environment),
                    labels=_labels(docker.ServiceTaskSpecContainerSpecLabelArgs, labels),
                    mounts=self._mounts(workload) or None,
                    secrets=secrets or None,
                    configs=configs or None,
                    healthcheck=docker.ServiceTaskSpecContainerSpecHealthcheckArgs(
                        tests=list(health.test),
                        interval=health.interval,
                        timeout=health.timeout,
                        retries=health.retries,
                        start_period=health.start_period,
                    )
                    if health is not None
                    else None,
                    read_only=workload.read_only_root or None,
                    cap_drops=["ALL"],
                    stop_signal=workload.stop_signal,
                    stop_grace_period=f"{workload.stop_grace_seconds}s"
                    if workload.stop_grace_seconds is not None
                    else None,
                ),
                networks_advanceds=self._networks(workload),
                placement=self._placement(workload),
                resources=docker.ServiceTaskSpecResourcesArgs(
                    limits=docker.ServiceTaskSpecResourcesLimitsArgs(
                        memory_bytes=pulumi.Output.from_input(workload.memory_mb).apply(lambda mb: mb * 1024 * 1024)
                    )
                ),
                restart_policy=docker.ServiceTaskSpecRestartPolicyArgs(
                    condition=RESTART_CONDITION, delay=RESTART_DELAY
                ),
                log_driver=docker.ServiceTaskSpecLogDriverArgs(
                    name=LOG_DRIVER, options={"max-size": log.max_size, "max-file": str(log.max_files)}
                ),
            ),
            endpoint_spec=docker.ServiceEndpointSpecArgs(
                # No virtual IP (IPVS): the service's name and aliases resolve to its tasks.
                mode=ENDPOINT_MODE,
                ports=[
                    # On the node that runs the task; the routing mesh would need IPVS.
                    docker.ServiceEndpointSpecPortArgs(
                        target_port=port.target, published_port=port.published, protocol="tcp", publish_mode="host"
                    )
                    for port in workload.ports
                ]
                if workload.ports
                else None,
            ),
            update_config=docker.ServiceUpdateConfigArgs(
                parallelism=UPDATE_PARALLELISM, order=order, failure_action=ROLLBACK, monitor=monitor
            ),
            # A rollback that fails too stops where it is, for an operator to look at.
            rollback_config=docker.ServiceRollbackConfigArgs(
                parallelism=UPDATE_PARALLELISM, order=order, failure_action=PAUSE, monitor=monitor
            ),
            # Healthy within the stack's start-up timeout, then watched for the monitor before the
            # update counts as done: the wait covers both.
            converge_config=docker.ServiceConvergeConfigArgs(
                delay=CONVERGE_DELAY, timeout=f"{context.startup_timeout_seconds + _monitor_seconds(workload)}s"
            )
            if wait
            else None,
            auth=self._registry_auth(),
            opts=pulumi.ResourceOptions(
                parent=owner,
                depends_on=list(depends_on),
                # Named services: a replacement must remove the old one before the new can take its name;
                # that also stops every old task before a new one starts, which is what a trigger asks for.
                delete_before_replace=True,
                replacement_trigger=workload.stop_all_on_change,
            ),
        )

    def _secret(
        self, resource_name: str, file: File, uid: str, role: str, opts: pulumi.ResourceOptions
    ) -> docker.ServiceTaskSpecContainerSpecSecretArgs:
        # Auto-named: swarm secrets are immutable, so a new value (secretsRotation) is a new
        # secret, created before the service rolls to it and the old one is deleted.
        secret = docker.Secret(
            resource_name,
            data=pulumi.Output.secret(file.content).apply(_base64),
            labels=_labels(docker.SecretLabelArgs, self.context.labels(role)),
            opts=opts,
        )
        return docker.ServiceTaskSpecContainerSpecSecretArgs(
            secret_id=secret.id,
            secret_name=secret.name,
            file_name=file.path,
            # The workload's uid, whatever its user's group, as the standalone target uploads it.
            file_uid=uid,
            file_gid=uid,
            file_mode=SECRET_FILE_MODE,
        )

    def _config(
        self, resource_name: str, file: File, role: str, opts: pulumi.ResourceOptions
    ) -> docker.ServiceTaskSpecContainerSpecConfigArgs:
        config = docker.ServiceConfig(
            resource_name,
            data=pulumi.Output.from_input(file.content).apply(_base64),
            labels=_labels(docker.ServiceConfigLabelArgs, self.context.labels(role)),
            opts=opts,
        )
        owner = file.owner or "0"
        return docker.ServiceTaskSpecContainerSpecConfigArgs(
            config_id=config.id,
            config_name=config.name,
            file_name=file.path,
            file_uid=owner,
            file_gid=owner,
            file_mode=int(file.mode, 8),
        )

    def _mounts(self, workload: Workload) -> list[docker.ServiceTaskSpecContainerSpecMountArgs]:
        labels = _labels(
            docker.ServiceTaskSpecContainerSpecMountVolumeOptionsLabelArgs, self.context.labels(workload.role)
        )
        mounts = [_volume_mount(mount, labels) for mount in workload.mounts]
        mounts += [_tmpfs_mount(path, options) for path, options in workload.tmpfs.items()]
        if workload.shm_size_mb is not None:
            # A service has no shm size: a tmpfs of that size at /dev/shm replaces Docker's 64 MiB one.
            mounts.append(
                docker.ServiceTaskSpecContainerSpecMountArgs(
                    target="/dev/shm",  # noqa: S108 - the task's own shared memory
                    type="tmpfs",
                    tmpfs_options=docker.ServiceTaskSpecContainerSpecMountTmpfsOptionsArgs(
                        size_bytes=workload.shm_size_mb * _SIZE_UNITS["m"]
                    ),
                )
            )
        return mounts

    def _networks(self, workload: Workload) -> list[docker.ServiceTaskSpecNetworksAdvancedArgs]:
        """One entry per stack network the workload joins, front first, each with its aliases there."""
        attachments = (
            workload.networks
            if workload.networks is not None
            else [Attachment(network, workload.network_aliases) for network in self.context.joins]
        )
        if not attachments:
            # A service has no network mode "none": a task without networks lands on its node's
            # default bridge, which routes out. The internal database network does not.
            attachments = [Attachment(DATABASE)]
        by_network = {attachment.network: attachment for attachment in attachments}
        if len(by_network) != len(attachments):
            raise ValueError(f"workload {workload.name} names one of the stack's networks twice")
        if workload.ports and FRONT not in by_network:
            raise ValueError(f"workload {workload.name} publishes ports but is not on the stack's front network")
        return [
            docker.ServiceTaskSpecNetworksAdvancedArgs(
                # `name` is deprecated in pulumi-docker: Docker takes a name or an ID, stores the ID.
                id=self.context.network_target(network),
                aliases=list(aliases) if (aliases := by_network[network].aliases) is not None else None,
            )
            for network in NETWORK_ORDER
            if network in by_network
        ]

    def _placement(self, workload: Workload) -> docker.ServiceTaskSpecPlacementArgs:
        """Pinned to the data node when it mounts a named volume (which lives there); else spread over nodes."""
        if any(mount.volume is not None for mount in workload.mounts):
            if not self.context.data_node_label:
                raise ValueError(f"workload {workload.name} mounts a named volume, but the stack has no data node")
            key, value = self.context.data_node_label.split("=", 1)
            return docker.ServiceTaskSpecPlacementArgs(constraints=[f"node.labels.{key}=={value}"])
        return docker.ServiceTaskSpecPlacementArgs(prefs=["spread=node.id"])

    def _registry_auth(self) -> docker.ServiceAuthArgs | None:
        """The login the nodes pull the pushed images with (imageRegistryUsername); none for an open registry."""
        registry = self.context.registry
        if registry is None or not registry.username:
            return None
        return docker.ServiceAuthArgs(
            server_address=registry.host,
            username=registry.username,
            password=pulumi.Output.secret(registry.password),
        )


def _runner(service: docker.Service) -> Runner:
    return service


def _with_task_limit(workload: Workload) -> tuple[list[str], pulumi.Input[Sequence[str]] | None]:
    """(commands, args): the entrypoint wrapped in the shell that sets RLIMIT_NPROC, and the command.

    In a service's spec `commands` is the container's entrypoint and `args` its command; Docker
    appends the one to the other, so the shell receives `entrypoint... command...` as "$@".
    """
    entrypoint = workload.entrypoint if workload.entrypoint is not None else workload.image_entrypoint
    if entrypoint is None:
        raise ValueError(
            f"workload {workload.name} names no entrypoint (nor its image's): the swarm target runs it "
            "under a shell that sets its task limit, and must know what to exec"
        )
    script = TASK_LIMIT_SCRIPT.format(limit=workload.max_tasks)
    # "sh" is $0; everything after it is "$@".
    return [TASK_LIMIT_SHELL, "-c", script, "sh", *entrypoint], workload.command


def _environment(entries: Sequence[pulumi.Input[str]]) -> pulumi.Output[dict[str, str]] | None:
    """`KEY=value` entries as the service's env map."""
    if not entries:
        return None

    def as_map(values: list[str]) -> dict[str, str]:
        pairs = [value.split("=", 1) for value in values]
        return {pair[0]: pair[1] for pair in pairs}

    return pulumi.Output.all(*entries).apply(as_map)


def _volume_mount(
    mount: Mount, labels: list[docker.ServiceTaskSpecContainerSpecMountVolumeOptionsLabelArgs]
) -> docker.ServiceTaskSpecContainerSpecMountArgs:
    """A named volume (labelled like the stack when its node creates it), or with no name a scratch one."""
    if mount.volume is None:
        # Anonymous: removed with the task's container.
        return docker.ServiceTaskSpecContainerSpecMountArgs(target=mount.path, type="volume")
    return docker.ServiceTaskSpecContainerSpecMountArgs(
        target=mount.path,
        type="volume",
        source=mount.volume,
        read_only=mount.read_only or None,
        volume_options=docker.ServiceTaskSpecContainerSpecMountVolumeOptionsArgs(labels=labels),
    )


def _tmpfs_mount(path: str, options: str) -> docker.ServiceTaskSpecContainerSpecMountArgs:
    """A `--tmpfs` option string (size=, mode=, uid=) as a service's tmpfs mount, which takes size and mode only."""
    values = dict(option.split("=", 1) for option in options.split(",") if "=" in option)
    mode = int(values["mode"], 8) if "mode" in values else None
    if values.get("uid", "0") != "0" or values.get("gid", "0") != "0":
        mode = SHARED_TMPFS_MODE
    size = values.get("size")
    return docker.ServiceTaskSpecContainerSpecMountArgs(
        target=path,
        type="tmpfs",
        tmpfs_options=docker.ServiceTaskSpecContainerSpecMountTmpfsOptionsArgs(
            size_bytes=_bytes(size) if size is not None else None, mode=mode
        ),
    )


def _bytes(size: str) -> int:
    """`512m` -> bytes, as Docker's tmpfs size option reads it."""
    match = re.fullmatch(r"(\d+)([kmg]?)", size.lower())
    if match is None:
        raise ValueError(f"not a tmpfs size: {size!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _seconds(duration: str) -> int:
    match = _DURATION.match(duration)
    if match is None:
        raise ValueError(f"not a duration in s, m or h: {duration!r}")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def _monitor_seconds(workload: Workload) -> int:
    """How long swarm watches each updated task for failure once it runs.

    With a health check, the engine reports a task running only once its container is healthy
    (a task that never gets there fails the update by itself), so the watch covers a task that
    soon stops being healthy: as many failed probes as make it unhealthy, and one more interval.
    A start period in it would only hold every update (and `pulumi up`) that much longer.
    """
    health = workload.health
    if health is None:
        return _DEFAULT_MONITOR_SECONDS
    return _seconds(health.interval) * (health.retries + 1)


def _file_slug(file: File) -> str:
    """A resource-name part from the file's path: `/run/secrets/tls.key` -> `run-secrets-tls-key`."""
    return re.sub(r"[^a-z0-9]+", "-", file.path.lower()).strip("-")


def _file_object_name(resource_name: str, file: File) -> str:
    """The logical name of a file's secret or config, which auto-naming makes its swarm name.

    A name too long for swarm keeps its start and ends in a digest of the whole, so it stays
    unique and the same from one `up` to the next.
    """
    name = f"{resource_name}-{_file_slug(file)}"
    if len(name) <= FILE_OBJECT_NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[: FILE_OBJECT_NAME_LIMIT - len(digest) - 1].rstrip('-')}-{digest}"


def _base64(content: str) -> str:
    return base64.b64encode(content.encode("utf-8")).decode("ascii")


def _labels(kind: type[_LabelArgs], labels: Mapping[str, pulumi.Input[str]]) -> list[_LabelArgs]:
    return [kind(label=key, value=value) for key, value in sorted(labels.items())]
