"""The stack's own networks: a front one with a route out, and an internal one, the only way to reach Postgres."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.context import StackContext

# The database network's name is the stack's prefix plus this (`<project>-<stack>-db`).
DATABASE_NETWORK_SUFFIX = "db"


class StackNetworkArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to; the networks are named after it, so stacks on one engine never share one."""


class StackNetwork(pulumi.ComponentResource):
    """The networks the stack's workloads reach each other on, by alias.

    `network` (`<project>-<stack>`, the stack network of every earlier release, so it is
    never replaced) holds the proxy and the workloads that may need a route out (MLflow,
    backups, gc). `database` (`<project>-<stack>-db`) is `internal`: Docker gives it no
    route out, and only Postgres and the workloads that talk to it are on it, so neither
    the internet-facing proxy nor anything else reaches Postgres, and Postgres reaches
    nothing beyond the stack.
    """

    network: docker.Network
    database: docker.Network
    name: pulumi.Output[str]
    database_name: pulumi.Output[str]
    network_id: pulumi.Output[str]
    database_network_id: pulumi.Output[str]

    def __init__(self, name: str, args: StackNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:network:StackNetwork", name, None, opts)
        stack = args["stack"]
        self.network = stack.target.network(self, f"{name}-network", stack.prefix)
        self.database = stack.target.network(
            self, f"{name}-database", stack.name(DATABASE_NETWORK_SUFFIX), internal=True
        )
        self.name = self.network.name
        self.database_name = self.database.name
        self.network_id = self.network.id
        self.database_network_id = self.database.id
        self.register_outputs({"name": self.name, "database_name": self.database_name})
