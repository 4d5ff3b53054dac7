"""The standalone target: each workload a `docker.Container` on one engine, each volume a `docker.Volume`.

The only module that calls pulumi-docker's container and volume constructors. What
every workload shares lives here once: no capabilities, no privilege gain, a memory
limit with no swap on top, rotated logs, the stack's labels, secret files uploaded
0400 into an in-container volume, and `protect` on every volume of a stack that
protects its data. Components describe (components/workload.py); this realises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pulumi
import pulumi_docker as docker

from components.context import StackContext
from components.target import Job, Runner, pulled_image
from components.workload import FRONT, NETWORK_ORDER, RESTART_ALWAYS, SECRETS_DIR, Attachment, File, Workload

LOG_DRIVER = "json-file"
# Blocks setuid binaries and file capabilities from raising privileges.
NO_NEW_PRIVILEGES = "no-new-privileges:true"
# The ulimit that bounds a workload's processes and threads.
TASK_LIMIT = "nproc"
# A one-shot job runs once per change; the engine must not start it again.
_RESTART_NEVER = "no"
_LabelArgs = TypeVar("_LabelArgs", docker.ContainerLabelArgs, docker.VolumeLabelArgs, docker.NetworkLabelArgs)


@dataclass(frozen=True)
class _Lifecycle:
    """How the engine starts, waits for and stops a container: a service's or a job's way."""

    restart: str
    wait: bool | None = None
    wait_timeout: int | None = None
    stop_signal: str | None = None
    stop_timeout: int | None = None
    must_run: bool | None = None
    attach: bool | None = None
    logs: bool | None = None


class StandaloneTarget:
    """Realises workloads as containers, with the stack's shared settings applied to each."""

    def __init__(self, context: StackContext) -> None:
        self.context = context

    @property
    def runs_jobs_once(self) -> bool:
        """A job is a container that runs to completion; `pulumi up` waits for its exit code."""
        return True

    def pulled_image(
        self, owner: pulumi.Resource, resource_name: str, reference: pulumi.Input[str]
    ) -> docker.RemoteImage:
        """An image from a registry, by the pinned reference."""
        return pulled_image(owner, resource_name, reference)

    def pulled_image_reference(self, image: docker.RemoteImage) -> pulumi.Output[str]:
        """The image ID: a changed reference that pulls another image replaces the container."""
        return image.image_id

    def built_image(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        image_name: pulumi.Input[str],
        context: str,
        build_args: Mapping[str, pulumi.Input[str]],
    ) -> docker.Image:
        """An image built from a directory of this project, on the engine that runs it; never pushed."""
        return docker.Image(
            resource_name,
            image_name=image_name,
            build=docker.DockerBuildArgs(
                context=context,
                # Relative to the project, not the context, since pulumi-docker 4.0.1
                # (https://github.com/pulumi/pulumi-docker/releases/tag/v4.0.1).
                dockerfile=f"{context}/Dockerfile",
                args=dict(build_args),
            ),
            skip_push=True,
            opts=pulumi.ResourceOptions(parent=owner),
        )

    def network(
        self, owner: pulumi.Resource, resource_name: str, docker_name: pulumi.Input[str], *, internal: bool = False
    ) -> docker.Network:
        """A user-defined bridge network: workloads on it resolve each other by alias.

        `internal`: Docker gives it no gateway and drops whatever would leave its subnet,
        so its containers reach only each other. Docker publishes no port of a container
        whose only network is internal: a workload that publishes one needs another network too.
        """
        return docker.Network(
            resource_name,
            name=docker_name,
            driver="bridge",
            # Left out unless set, so the front network's inputs stay what they always were.
            internal=True if internal else None,
            labels=_labels(docker.NetworkLabelArgs, self.context.labels("network")),
            opts=pulumi.ResourceOptions(parent=owner),
        )

    def volume(
        self, owner: pulumi.Resource, resource_name: str, docker_name: pulumi.Input[str], role: str
    ) -> docker.Volume:
        """A named volume, protected (and kept on delete) in a stack that protects its data."""
        protect = self.context.protect_data
        return docker.Volume(
            resource_name,
            name=docker_name,
            labels=_labels(docker.VolumeLabelArgs, self.context.labels(role)),
            opts=pulumi.ResourceOptions(parent=owner, protect=protect, retain_on_delete=protect),
        )

    def service(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        workload: Workload,
        depends_on: Sequence[pulumi.Input[pulumi.Resource]] = (),
    ) -> docker.Container:
        """A long-running container, restarted by the engine, health-gated when it says so."""
        # Only a health check can be waited for.
        wait = workload.wait_healthy and workload.health is not None
        return self._container(
            owner,
            resource_name,
            workload,
            depends_on,
            _Lifecycle(
                restart=RESTART_ALWAYS,
                wait=wait,
                wait_timeout=self.context.startup_timeout_seconds if wait else None,
                stop_signal=workload.stop_signal,
                stop_timeout=workload.stop_grace_seconds,
            ),
        )

    def job(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        workload: Workload,
        depends_on: Sequence[pulumi.Input[pulumi.Resource]] = (),
    ) -> Job:
        """A container that runs once per change; `pulumi up` waits for it and fails if it failed."""
        container = self._container(
            owner,
            resource_name,
            workload,
            depends_on,
            # logs: the provider keeps an attached container's output, so a failure can say why.
            _Lifecycle(restart=_RESTART_NEVER, must_run=False, attach=True, logs=True),
        )
        name, what = workload.name, workload.role.replace("-", " ")

        def require_success(exit_code: int | None, logs: str | None) -> Runner:
            # pulumi-docker records the exit code of an attached container but does not
            # fail on it: fail here, before anything that needs the job's work starts.
            # The jobs end on one line that says what failed (and hold no secret: the
            # end-to-end tests scan every log), which `pulumi up` then shows.
            if exit_code != 0:
                last = next((line.strip() for line in reversed((logs or "").splitlines()) if line.strip()), "")
                reason = f": {last}" if last else ""
                raise pulumi.RunError(f"the {what} exited with code {exit_code}{reason}; see `docker logs {name}`")
            return container

        return Job(
            container,
            pulumi.Output.all(container.exit_code, container.container_logs).apply(
                lambda ended: require_success(*ended)
            ),
        )

    def _container(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        workload: Workload,
        depends_on: Sequence[pulumi.Input[pulumi.Resource]],
        lifecycle: _Lifecycle,
    ) -> docker.Container:
        uid = workload.user.split(":", 1)[0]
        labels = _labels(docker.ContainerLabelArgs, self.context.labels(workload.role))
        labels += [docker.ContainerLabelArgs(label=key, value=value) for key, value in workload.extra_labels.items()]
        log = self.context.log_rotation
        networks = self._networks(workload)
        health = workload.health
        return docker.Container(
            resource_name,
            name=workload.name,
            image=workload.image,
            user=workload.user,
            entrypoints=list(workload.entrypoint) if workload.entrypoint is not None else None,
            command=workload.command,
            envs=list(workload.environment) or None,
            uploads=[_upload(file, uid) for file in workload.files],
            volumes=[
                *(
                    docker.ContainerVolumeArgs(
                        volume_name=mount.volume, container_path=mount.path, read_only=mount.read_only or None
                    )
                    for mount in workload.mounts
                ),
                # Anonymous, so it goes with the container: the provider uploads before the
                # start, and Docker refuses uploads into a read-only root but not into a volume.
                docker.ContainerVolumeArgs(container_path=SECRETS_DIR),
            ],
            ports=[
                docker.ContainerPortArgs(internal=port.target, external=port.published, ip=port.ip, protocol="tcp")
                for port in workload.ports
            ]
            if workload.ports is not None
            else None,
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=list(health.test),
                interval=health.interval,
                timeout=health.timeout,
                retries=health.retries,
                start_period=health.start_period,
            )
            if health is not None
            else None,
            read_only=workload.read_only_root or None,
            tmpfs=dict(workload.tmpfs) or None,
            shm_size=workload.shm_size_mb,
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=[NO_NEW_PRIVILEGES],
            # pulumi-docker has no pids limit; RLIMIT_NPROC, soft and hard alike so the
            # workload cannot raise it (components/task_limits.py says what it counts).
            ulimits=[docker.ContainerUlimitArgs(name=TASK_LIMIT, soft=workload.max_tasks, hard=workload.max_tasks)],
            memory=workload.memory_mb,
            # Equal to the limit: no swap on top, so a leak is killed instead of thrashing the host.
            memory_swap=workload.memory_mb,
            log_driver=LOG_DRIVER,
            log_opts={"max-size": log.max_size, "max-file": str(log.max_files)},
            labels=labels,
            networks_advanced=networks or None,
            network_mode=None if networks else "none",
            restart=lifecycle.restart,
            must_run=lifecycle.must_run,
            attach=lifecycle.attach,
            logs=lifecycle.logs,
            wait=lifecycle.wait,
            wait_timeout=lifecycle.wait_timeout,
            stop_signal=lifecycle.stop_signal,
            stop_timeout=lifecycle.stop_timeout,
            # `docker stop` and engine shutdowns wait stop_timeout; pulumi-docker's own
            # replace and destroy would not wait at all (its default is 0 s).
            destroy_grace_seconds=lifecycle.stop_timeout,
            # Names are fixed: the old container must go before its replacement starts
            # (the provider would otherwise create first, and Docker refuses a second name).
            opts=pulumi.ResourceOptions(parent=owner, depends_on=list(depends_on), delete_before_replace=True),
        )

    def _networks(self, workload: Workload) -> list[docker.ContainerNetworksAdvancedArgs]:
        """One entry per stack network the workload joins, front first, each with its aliases there."""
        attachments = (
            workload.networks
            if workload.networks is not None
            else [Attachment(network, workload.network_aliases) for network in self.context.joins]
        )
        by_network = {attachment.network: attachment for attachment in attachments}
        if len(by_network) != len(attachments):
            raise ValueError(f"workload {workload.name} names one of the stack's networks twice")
        if workload.ports and FRONT not in by_network:
            # Docker would create it and publish nothing: the internal network has no way in from the host.
            raise ValueError(f"workload {workload.name} publishes ports but is not on the stack's front network")
        return [
            docker.ContainerNetworksAdvancedArgs(
                name=self.context.network_name(network),
                aliases=list(aliases) if (aliases := by_network[network].aliases) is not None else None,
            )
            for network in NETWORK_ORDER
            if network in by_network
        ]


def _labels(kind: type[_LabelArgs], labels: dict[str, str]) -> list[_LabelArgs]:
    return [kind(label=key, value=value) for key, value in sorted(labels.items())]


def _upload(file: File, workload_uid: str) -> docker.ContainerUploadArgs:
    if file.secret:
        return docker.ContainerUploadArgs(
            file=file.path,
            content=pulumi.Output.secret(file.content),
            owner=workload_uid,
            group=workload_uid,
            permissions=file.mode,
        )
    return docker.ContainerUploadArgs(
        file=file.path, content=file.content, owner=file.owner, group=file.owner, permissions=file.mode
    )
