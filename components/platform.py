"""Wires network, database, image, server, backups, gc and the TLS front door into one stack."""

from __future__ import annotations

import dataclasses
from typing import TypedDict

import pulumi

from components.backups import BackupService
from components.context import DatabaseEndpoint, StackContext
from components.db_bootstrap import DatabaseBootstrap
from components.external_database import ExternalDatabase
from components.gc import GarbageCollector
from components.mlflow_facts import ADMIN_USERNAME, SERVER_PORT
from components.mlflow_image import MlflowImage
from components.mlflow_server import MlflowServer, database_connections
from components.network import StackNetwork
from components.postgres import PostgresDatabase
from components.proxy import TlsProxy, TlsProxyArgs
from components.settings import StackSettings
from components.workload import DATABASE, FRONT

POSTGRES_ALIAS = "postgres"
MLFLOW_ALIAS = "mlflow"


class MlflowPlatformArgs(TypedDict):
    settings: StackSettings
    """The validated settings of this stack."""


class MlflowPlatform(pulumi.ComponentResource):
    """An MLflow tracking server on Postgres, on networks of its own."""

    network: StackNetwork
    database: PostgresDatabase | ExternalDatabase
    bootstrap: DatabaseBootstrap
    image: MlflowImage
    server: MlflowServer
    backups: BackupService
    gc: GarbageCollector
    proxy: TlsProxy | None
    tracking_uri: str
    backend_store_uri: pulumi.Output[str]
    admin_password: pulumi.Output[str] | None
    admin_username: str | None
    ca_certificate: pulumi.Output[str] | None

    def __init__(self, name: str, args: MlflowPlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:stack:MlflowPlatform", name, None, opts)
        settings = args["settings"]
        child = pulumi.ResourceOptions(parent=self)
        stack = settings.context()
        self.network = StackNetwork(f"{name}-network", {"stack": stack}, opts=child)
        stack = dataclasses.replace(
            stack,
            network=self.network.name,
            database_network=self.network.database_name,
            network_id=self.network.network_id,
            database_network_id=self.network.database_network_id,
        )
        # MLflow reaches Postgres (on the internal network alone) and the proxy reaches MLflow (on the front one).
        server_stack = dataclasses.replace(stack, joins=(FRONT, DATABASE))

        self.database = self._database(name, settings, stack)
        endpoint = DatabaseEndpoint(
            host=self.database.host,
            port=self.database.port,
            database=settings.database.name,
            role=settings.database.user,
            password=self.database.password.result,
            auth_database=settings.database.auth_name,
            ca_certificate=self.database.ca_certificate,
        )
        self.image = MlflowImage(f"{name}-image", {"stack": stack, "server": settings.server}, opts=child)
        self.bootstrap = DatabaseBootstrap(
            f"{name}-db-bootstrap",
            {
                "stack": stack,
                "image": self.image.repo_digest,
                "admin": self.database.admin,
                "database": endpoint,
            },
            opts=child,
        )
        # Nothing flows from Postgres or the bootstrap into these: they start once Postgres
        # is healthy and the bootstrap has put the secrets in force.
        database_ready: list[pulumi.Input[pulumi.Resource]] = [self.bootstrap.succeeded]
        if self.database.container is not None:
            database_ready.insert(0, self.database.container)
        self.server = MlflowServer(
            f"{name}-server",
            {
                "stack": server_stack,
                "image": self.image.repo_digest,
                "database": endpoint,
                "server": settings.server,
                "artifacts": settings.artifacts,
                "alias": MLFLOW_ALIAS,
                # The port clients send in Host; behind the proxy MLflow publishes nothing.
                "host_port": settings.public_port,
                # The URL the UI is served from, so the origin its writes carry.
                "public_origin": settings.tracking_uri,
                "publish": not settings.proxied,
                "secrets_rotation": settings.secrets_rotation,
                "start_after": database_ready,
                "pre_upgrade_backup": True,
                "replicas": settings.cluster.replicas,
            },
            opts=child,
        )
        artifacts = self.server.artifacts_volume.name
        # Started alongside the server: before a schema upgrade the server's
        # entrypoint asks the backup workload for a backup and waits for it.
        self.backups = BackupService(
            f"{name}-backups",
            {
                "stack": stack,
                "image": self.database.image_reference,
                "image_reference": settings.database.image,
                "mlflow_image": self.image.repo_digest,
                "artifacts_in_bucket": settings.artifacts.in_bucket,
                "artifacts_volume_name": artifacts,
                "database": endpoint,
                "admin_username": ADMIN_USERNAME if settings.server.auth_enabled else "",
                "mlflow_version": settings.server.mlflow_version,
                "backups": settings.backups,
                "start_after": database_ready,
            },
            opts=child,
        )
        self.gc = GarbageCollector(
            f"{name}-gc",
            {
                "stack": stack,
                "image": self.image.repo_digest,
                "artifacts_volume_name": artifacts,
                "artifacts": settings.artifacts,
                "database": endpoint,
                "mlflow_version": settings.server.mlflow_version,
                "gc": settings.gc,
                "telemetry_enabled": settings.server.telemetry_enabled,
                "start_after": [self.server.container],
            },
            opts=child,
        )
        self.proxy = self._front_door(name, settings, stack) if settings.proxied else None
        self.ca_certificate = self.proxy.ca_certificate if self.proxy else None

        self.tracking_uri = settings.tracking_uri
        self.backend_store_uri = endpoint.sqlalchemy_uri()
        self.admin_password = (
            pulumi.Output.secret(self.server.admin_password.result) if self.server.admin_password else None
        )
        self.admin_username = ADMIN_USERNAME if settings.server.auth_enabled else None
        self.register_outputs({"tracking_uri": self.tracking_uri, "backend_store_uri": self.backend_store_uri})

    def _database(self, name: str, settings: StackSettings, stack: StackContext) -> PostgresDatabase | ExternalDatabase:
        """Postgres in the stack, or none at all with an external database (externalDatabaseUrl)."""
        child = pulumi.ResourceOptions(parent=self)
        if settings.external_database.enabled:
            return ExternalDatabase(
                f"{name}-database",
                {
                    "stack": stack,
                    "database": settings.database,
                    "external": settings.external_database,
                    "secrets_rotation": settings.secrets_rotation,
                },
                opts=child,
            )
        return PostgresDatabase(
            f"{name}-postgres",
            {
                "stack": stack,
                "database": settings.database,
                "alias": POSTGRES_ALIAS,
                "secrets_rotation": settings.secrets_rotation,
                "client_connections": database_connections(settings.server.workers, settings.server.auth_enabled),
            },
            opts=child,
        )

    def _front_door(self, name: str, settings: StackSettings, stack: StackContext) -> TlsProxy:
        """The only published workload: HTTPS in front of the server, which then publishes nothing."""
        args: TlsProxyArgs = {
            "stack": stack,
            "tls": settings.tls,
            "public_host": settings.server.public_host,
            "bind_address": settings.server.bind_address,
            "upstream": f"{MLFLOW_ALIAS}:{SERVER_PORT}",
            "ca_resource_name": f"{name}-ca",
            "start_after": [self.server.container],
        }
        if stack.swarm:
            # Each healthy task an upstream of its own, rather than the service's virtual IP,
            # so that Caddy's retries move a request to another task.
            args["upstream_tasks"] = f"tasks.{self.server.workload_name}"
        return TlsProxy(f"{name}-proxy", args, opts=pulumi.ResourceOptions(parent=self))
