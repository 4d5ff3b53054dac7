"""The stack's own network: the only way to reach Postgres."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.context import StackContext


class StackNetworkArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to; the network is named after it, so stacks on one engine never share one."""


class StackNetwork(pulumi.ComponentResource):
    """The network the stack's workloads reach each other on, by alias."""

    network: docker.Network
    name: pulumi.Output[str]

    def __init__(self, name: str, args: StackNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:network:StackNetwork", name, None, opts)
        stack = args["stack"]
        self.network = stack.target.network(self, f"{name}-network", stack.prefix)
        self.name = self.network.name
        self.register_outputs({"name": self.name})
