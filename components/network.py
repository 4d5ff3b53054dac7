"""The stack's own Docker network: the only way to reach Postgres."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.docker_common import network_labels


class StackNetworkArgs(TypedDict):
    name: pulumi.Input[str]
    """Docker name of the network; one per stack so stacks on one engine never share it."""
    labels: dict[str, str]
    """Labels that identify the stack."""


class StackNetwork(pulumi.ComponentResource):
    """A user-defined bridge network: containers on it resolve each other by alias."""

    network: docker.Network
    name: pulumi.Output[str]

    def __init__(self, name: str, args: StackNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:network:StackNetwork", name, None, opts)
        # Not `internal`: Docker publishes no ports for a container whose only
        # network is internal, and the MLflow port must reach the host.
        self.network = docker.Network(
            f"{name}-network",
            name=args["name"],
            driver="bridge",
            labels=network_labels(args["labels"]),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = self.network.name
        self.register_outputs({"name": self.name})
