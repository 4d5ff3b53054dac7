"""A Postgres outside the stack (externalDatabaseUrl): RDS, Cloud SQL, Azure, or a team's own.

Declares no Postgres container, volume or socket. What it has in common with
`PostgresDatabase` is what the rest of the stack needs of a database: where it is
(host, port), the generated password of MLflow's role, the pinned Postgres image (the
backups' pg_dump and pg_restore; their major must be at least the server's), and how
`DatabaseBootstrap` gets in with the power to make roles and databases: here the admin
URL, over TLS verified against the database's CA (`ca_certificate`).
"""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from components.context import StackContext
from components.db_bootstrap import UrlAdmin
from components.secrets import generated_password
from components.settings import DatabaseSettings
from components.settings.model import ExternalDatabaseSettings


class ExternalDatabaseArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to."""
    database: DatabaseSettings
    """The pinned client image, the generated password's length."""
    external: ExternalDatabaseSettings
    """The admin URL (secret) and the CA its server's certificate chains to."""
    secrets_rotation: str
    """Keeper of MLflow's role's password: a new value rotates it."""


class ExternalDatabase(pulumi.ComponentResource):
    """MLflow's role and databases on a managed Postgres, reached over verified TLS."""

    password: random.RandomPassword
    image: docker.RemoteImage
    image_reference: pulumi.Output[str]
    """What the backups run: the image's ID (standalone) or its pinned reference (swarm)."""
    container: None
    admin: UrlAdmin
    host: str
    port: int
    ca_certificate: str

    def __init__(self, name: str, args: ExternalDatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:database:ExternalDatabase", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        external = args["external"]
        if external.location is None:
            raise ValueError("ExternalDatabase needs externalDatabaseUrl (settings refuse a stack without one)")
        self.password = generated_password(
            f"{name}-password", args["database"].password_length, args["secrets_rotation"], child
        )
        target = args["stack"].target
        self.image = target.pulled_image(self, f"{name}-client-image", args["database"].image)
        self.image_reference = target.pulled_image_reference(self.image)
        self.container = None
        # Secret end to end: it holds the admin's password.
        self.admin = UrlAdmin(url=pulumi.Output.secret(external.url))
        self.host, self.port = external.location.host, external.location.port
        self.ca_certificate = external.ca_certificate
        self.register_outputs({"host": self.host, "port": self.port, "image_id": self.image.image_id})
