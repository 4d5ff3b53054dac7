"""What a target is: the one interface components realise their workloads through.

`StandaloneTarget` (components/standalone.py) makes containers and volumes on one engine;
`SwarmTarget` (components/swarm.py) makes services, swarm secrets and configs on a swarm
manager. Components hold what a target returns through the types here, so the same
component code runs on either, and `StackContext.target` picks one from the settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pulumi
import pulumi_docker as docker

if TYPE_CHECKING:
    from components.context import StackContext
    from components.workload import Workload

Runner = docker.Container | docker.Service
"""What runs a workload: a container on one host, a service in a swarm."""


@dataclass(frozen=True)
class NodeVolume:
    """A named volume no resource declares: each swarm node's engine creates it on first use.

    A `local` volume lives on the node whose task mounted it, so a swarm has no one place to
    declare it in; the target mounts it by name (with the stack's labels) instead.
    """

    name: pulumi.Output[str]


StackVolume = docker.Volume | NodeVolume
"""A named volume of the stack, declared (standalone) or made by the node that mounts it (swarm)."""


@dataclass(frozen=True)
class Job:
    """A one-shot workload and an Output that fails the deployment unless it completed."""

    container: Runner
    succeeded: pulumi.Output[Runner]


class Target(Protocol):
    """Turns workload descriptions into resources; only a target calls the provider's constructors."""

    context: StackContext

    @property
    def runs_jobs_once(self) -> bool:
        """A job runs to completion and exits; false: it runs as a service that stays up (idle)
        once done, healthy from then on, since the engine has no one-shot workload."""

    def pulled_image(
        self, owner: pulumi.Resource, resource_name: str, reference: pulumi.Input[str]
    ) -> docker.RemoteImage: ...

    def pulled_image_reference(self, image: docker.RemoteImage) -> pulumi.Output[str]:
        """What workloads run a pulled image by: its ID on one engine, its pinned reference on a cluster."""

    def built_image(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        image_name: pulumi.Input[str],
        context: str,
        build_args: Mapping[str, pulumi.Input[str]],
    ) -> docker.Image: ...

    def network(
        self, owner: pulumi.Resource, resource_name: str, docker_name: pulumi.Input[str], *, internal: bool = False
    ) -> docker.Network: ...

    def volume(self, owner: pulumi.Resource, resource_name: str, docker_name: str, role: str) -> StackVolume: ...

    def service(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        workload: Workload,
        depends_on: Sequence[pulumi.Input[pulumi.Resource]] = (),
    ) -> Runner: ...

    def job(
        self,
        owner: pulumi.Resource,
        resource_name: str,
        workload: Workload,
        depends_on: Sequence[pulumi.Input[pulumi.Resource]] = (),
    ) -> Job: ...


def pulled_image(owner: pulumi.Resource, resource_name: str, reference: pulumi.Input[str]) -> docker.RemoteImage:
    """An image from a registry, by the pinned reference, for either target."""
    # keep_locally: a destroy must not delete an image other stacks may run.
    return docker.RemoteImage(
        resource_name, name=reference, keep_locally=True, opts=pulumi.ResourceOptions(parent=owner)
    )
