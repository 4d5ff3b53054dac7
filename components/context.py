"""What every component of a stack shares, passed as one object instead of copied field by field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import pulumi

from components.workload import DATABASE, FRONT, SECRETS_DIR, StackNetworkRole

if TYPE_CHECKING:
    from components.target import Target

STANDALONE = "standalone"
SWARM = "swarm"


@dataclass(frozen=True)
class LogRotation:
    """Docker's json-file driver never rotates by itself: a chatty server fills the disk."""

    max_size: str
    max_files: int


@dataclass(frozen=True)
class ImageRegistry:
    """Where a swarm's built images are pushed, so that every node can pull them (imageRegistry)."""

    server: str
    """host[:port][/path]: the images are named `<server>/<project>/<name>:<tag>`."""
    username: str = ""
    # Secret: kept out of repr, and wrapped in Output.secret wherever it is used.
    password: str = field(default="", repr=False)
    """Empty with `username` for a registry that needs no login."""

    @property
    def host(self) -> str:
        """host[:port], the registry's address for a login."""
        return self.server.split("/", 1)[0]


@dataclass(frozen=True)
class StackContext:
    """The stack a component belongs to: how its things are named, labelled, connected and kept."""

    project: str
    stack: str
    log_rotation: LogRotation
    protect_data: bool
    """`protect` and `retainOnDelete` on every volume: a destroy or replacement keeps the data."""
    startup_timeout_seconds: int
    """How long `pulumi up` waits for a workload to become healthy."""
    network: pulumi.Input[str] = ""
    """The front network's name (the stack network, with a route out); set once it is declared."""
    database_network: pulumi.Input[str] = ""
    """The database network's name (internal: no route out); set once it is declared."""
    network_id: pulumi.Input[str] = ""
    """The front network's ID: a service names its networks by ID (swarm stores IDs, whatever it was given)."""
    database_network_id: pulumi.Input[str] = ""
    """The database network's ID."""
    joins: tuple[StackNetworkRole, ...] = (FRONT,)
    """The networks a workload of this stack joins when its description names none (`Workload.networks`)."""
    engine: str = STANDALONE
    """`standalone`: containers on one engine; `swarm`: services on a swarm manager (settings' `engine`)."""
    data_node_label: str = ""
    """Swarm: `key=value` of the node that runs Postgres and holds every named volume (postgresNodeLabel)."""
    registry: ImageRegistry | None = None
    """Swarm: where built images are pushed for the nodes to pull; None keeps them on the manager."""

    def network_name(self, network: StackNetworkRole) -> pulumi.Input[str]:
        """The Docker name of one of the stack's networks; refused while it is not declared."""
        name = {FRONT: self.network, DATABASE: self.database_network}[network]
        if name == "":
            raise ValueError(f"the stack's {network} network is not declared (StackContext has no name for it)")
        return name

    def network_target(self, network: StackNetworkRole) -> pulumi.Input[str]:
        """The ID of one of the stack's networks; its name where the ID is not set."""
        found = {FRONT: self.network_id, DATABASE: self.database_network_id}[network]
        return found if found != "" else self.network_name(network)

    @property
    def prefix(self) -> str:
        # Docker names are per engine: the stack in every name lets dev and staging share one.
        return f"{self.project}-{self.stack}"

    def name(self, suffix: str) -> str:
        """The engine-wide name of one of the stack's things."""
        return f"{self.prefix}-{suffix}"

    def labels(self, role: str) -> dict[str, str]:
        """Labels that let an operator find everything one stack owns (`docker ps --filter label=...`)."""
        return {
            "com.pulumi.project": self.project,
            "com.pulumi.stack": self.stack,
            "org.mlflow-platform.role": role,
        }

    @property
    def swarm(self) -> bool:
        return self.engine == SWARM

    @property
    def target(self) -> Target:
        """What realises the stack's workloads: containers on one engine, or services on a swarm."""
        # Imported here: both targets import this module.
        if self.swarm:
            from components.swarm import SwarmTarget

            return SwarmTarget(self)
        from components.standalone import StandaloneTarget

        return StandaloneTarget(self)


# An external database's CA (public) in every container that connects to it: libpq
# verifies the server against it (PGSSLROOTCERT, or sslrootcert in a URI).
DATABASE_CA_FILE = f"{SECRETS_DIR}/database-ca.pem"


@dataclass(frozen=True)
class DatabaseEndpoint:
    """Where MLflow's database is and who connects: what the server, backups and gc need of it."""

    host: str
    port: int
    database: str
    role: str
    password: pulumi.Output[str]
    """Secret."""
    auth_database: str
    """The basic-auth app's database, owned by the same role."""
    ca_certificate: str = ""
    """An external database's CA (PEM): every connection then verifies it (sslmode verify-full).
    Empty: Postgres in the stack, on its internal network."""

    @property
    def external(self) -> bool:
        """Outside the stack (externalDatabaseUrl), reached over the front network's route out."""
        return bool(self.ca_certificate)

    def _tls_query(self) -> str:
        if not self.external:
            return ""
        return f"?sslmode=verify-full&sslrootcert={DATABASE_CA_FILE}"

    def sqlalchemy_uri(self) -> pulumi.Output[str]:
        """The in-network URI of the tracking database, for maintenance jobs; secret (it holds the password)."""
        return pulumi.Output.secret(
            pulumi.Output.concat(
                "postgresql+psycopg://",
                quote(self.role, safe=""),
                ":",
                self.password.apply(lambda password: quote(password, safe="")),
                f"@{self.host}:{self.port}/{self.database}",
                self._tls_query(),
            )
        )
