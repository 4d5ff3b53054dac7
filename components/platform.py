"""Wires network, database, image and server into one stack."""

from __future__ import annotations

from typing import TypedDict
from urllib.parse import quote

import pulumi

from components.backups import BackupService
from components.db_bootstrap import DatabaseBootstrap
from components.docker_common import stack_labels
from components.gc import GarbageCollector
from components.internal_ca import InternalCa
from components.mlflow_image import MlflowImage
from components.mlflow_server import ADMIN_USERNAME, SERVER_PORT, MlflowServer, database_connections
from components.network import StackNetwork
from components.postgres import PostgresDatabase
from components.proxy import CaddySite, TlsProxy
from components.settings import AUTH_DATABASE_SUFFIX, StackSettings

POSTGRES_ALIAS = "postgres"
MLFLOW_ALIAS = "mlflow"


class MlflowPlatformArgs(TypedDict):
    settings: StackSettings
    """The validated settings of this stack."""


class MlflowPlatform(pulumi.ComponentResource):
    """An MLflow tracking server on Postgres, on a network of its own."""

    network: StackNetwork
    database: PostgresDatabase
    bootstrap: DatabaseBootstrap
    image: MlflowImage
    server: MlflowServer
    backups: BackupService
    gc: GarbageCollector
    tracking_uri: str
    backend_store_uri: pulumi.Output[str]
    admin_password: pulumi.Output[str] | None
    admin_username: str | None
    internal_ca: InternalCa | None
    proxy: TlsProxy | None
    ca_certificate: pulumi.Output[str] | None

    def __init__(self, name: str, args: MlflowPlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:stack:MlflowPlatform", name, None, opts)
        settings = args["settings"]
        child = pulumi.ResourceOptions(parent=self)
        # Docker names are per engine: the stack in every name lets dev and staging share one.
        prefix = f"{settings.project}-{settings.stack}"

        def labels(role: str) -> dict[str, str]:
            return stack_labels(settings.project, settings.stack, role)

        self.network = StackNetwork(f"{name}-network", {"name": prefix, "labels": labels("network")}, opts=child)
        self.database = PostgresDatabase(
            f"{name}-postgres",
            {
                "image": settings.postgres_image,
                "container_name": f"{prefix}-postgres",
                "volume_name": f"{prefix}-pgdata",
                "socket_volume_name": f"{prefix}-pgsocket",
                "network_name": self.network.name,
                "alias": POSTGRES_ALIAS,
                "password_length": settings.postgres_password_length,
                "secrets_rotation": settings.secrets_rotation,
                "memory_mb": settings.postgres_memory_mb,
                "client_connections": database_connections(settings.workers, settings.auth_enabled),
                "log_max_size": settings.log_max_size,
                "log_max_files": settings.log_max_files,
                "protect_data": settings.protect_data,
                "startup_timeout_seconds": settings.startup_timeout_seconds,
                "labels": labels("database"),
            },
            opts=child,
        )
        self.image = MlflowImage(
            f"{name}-image",
            {
                "image_name": f"{settings.project}/mlflow:{settings.mlflow_version}-{settings.stack}",
                "mlflow_version": settings.mlflow_version,
                "base_image": settings.base_image,
                "use_wheelhouse": settings.use_wheelhouse,
            },
            opts=child,
        )
        self.bootstrap = DatabaseBootstrap(
            f"{name}-db-bootstrap",
            {
                "image": self.image.repo_digest,
                "container_name": f"{prefix}-db-bootstrap",
                "socket_volume_name": self.database.socket_volume.name,
                "postgres_container": self.database.container,
                "superuser": self.database.superuser,
                "superuser_password": self.database.superuser_password.result,
                "user": settings.postgres_user,
                "password": self.database.password.result,
                "database": settings.postgres_database,
                "auth_database": f"{settings.postgres_database}{AUTH_DATABASE_SUFFIX}",
                "log_max_size": settings.log_max_size,
                "log_max_files": settings.log_max_files,
                "labels": labels("database-bootstrap"),
            },
            opts=child,
        )
        self.server = MlflowServer(
            f"{name}-server",
            {
                "image": self.image.repo_digest,
                "container_name": f"{prefix}-mlflow",
                "artifacts_volume_name": f"{prefix}-artifacts",
                "network_name": self.network.name,
                "alias": MLFLOW_ALIAS,
                "postgres_host": POSTGRES_ALIAS,
                "postgres_port": self.database.port,
                "database": settings.postgres_database,
                "user": settings.postgres_user,
                "password": self.database.password.result,
                "public_host": settings.public_host,
                "bind_address": settings.bind_address,
                # Behind the proxy MLflow publishes nothing; clients send the HTTPS port in Host.
                "host_port": settings.https_port if settings.proxied else settings.host_port,
                "publish": not settings.proxied,
                "workers": settings.workers,
                "memory_mb": settings.mlflow_memory_mb,
                "extra_allowed_hosts": settings.allowed_hosts,
                "cors_allowed_origins": settings.cors_allowed_origins,
                "auth_enabled": settings.auth_enabled,
                "auth_cache_ttl_seconds": settings.auth_cache_ttl_seconds,
                "admin_password_length": settings.admin_password_length,
                "secrets_rotation": settings.secrets_rotation,
                "protect_data": settings.protect_data,
                "log_max_size": settings.log_max_size,
                "log_max_files": settings.log_max_files,
                "startup_timeout_seconds": settings.startup_timeout_seconds,
                "labels": labels("tracking-server"),
                "start_after": [self.database.container, self.bootstrap.succeeded],
                "metrics_enabled": settings.metrics_enabled,
                "telemetry_enabled": settings.telemetry_enabled,
                "pre_upgrade_backup": True,
            },
            opts=child,
        )
        # Started alongside the server: before a schema upgrade the server's
        # entrypoint asks this container for a backup and waits for it.
        self.backups = BackupService(
            f"{name}-backups",
            {
                "image": self.database.image.image_id,
                "image_reference": settings.postgres_image,
                "container_name": f"{prefix}-backup",
                "volume_name": f"{prefix}-backups",
                "artifacts_volume_name": self.server.artifacts_volume.name,
                "network_name": self.network.name,
                "postgres_host": POSTGRES_ALIAS,
                "postgres_port": self.database.port,
                "database": settings.postgres_database,
                "user": settings.postgres_user,
                "password": self.database.password.result,
                "admin_username": ADMIN_USERNAME if settings.auth_enabled else "",
                "mlflow_version": settings.mlflow_version,
                "interval_seconds": settings.backup_interval_seconds,
                "keep": settings.backup_keep,
                "protect_data": settings.protect_data,
                "log_max_size": settings.log_max_size,
                "log_max_files": settings.log_max_files,
                "startup_timeout_seconds": settings.startup_timeout_seconds,
                "labels": labels("backup"),
                "start_after": [self.database.container, self.bootstrap.succeeded],
            },
            opts=child,
        )
        self.gc = GarbageCollector(
            f"{name}-gc",
            {
                "image": self.image.repo_digest,
                "container_name": f"{prefix}-gc",
                "artifacts_volume_name": self.server.artifacts_volume.name,
                "network_name": self.network.name,
                "postgres_host": POSTGRES_ALIAS,
                "postgres_port": self.database.port,
                "database": settings.postgres_database,
                "user": settings.postgres_user,
                "password": self.database.password.result,
                "mlflow_version": settings.mlflow_version,
                "older_than": settings.gc_older_than,
                "interval_seconds": settings.gc_interval_hours * 3600,
                "telemetry_enabled": settings.telemetry_enabled,
                "log_max_size": settings.log_max_size,
                "log_max_files": settings.log_max_files,
                "labels": labels("gc"),
                "start_after": [self.server.container],
            },
            opts=child,
        )

        self.internal_ca = None
        self.proxy = None
        self.ca_certificate = None
        if settings.proxied:
            if settings.tls_mode == "internal":
                self.internal_ca = InternalCa(
                    f"{name}-ca",
                    {"common_name": f"{prefix} root CA", "protect": settings.protect_data},
                    opts=child,
                )
                self.ca_certificate = self.internal_ca.certificate_pem
            self.proxy = TlsProxy(
                f"{name}-proxy",
                {
                    "base_image": settings.proxy_image,
                    "image_name": f"{settings.project}/proxy:{settings.stack}",
                    "container_name": f"{prefix}-proxy",
                    "data_volume_name": f"{prefix}-proxy-data",
                    "network_name": self.network.name,
                    "site": CaddySite(
                        public_host=settings.public_host,
                        tls_mode=settings.tls_mode,
                        https_port=settings.https_port,
                        upstream=f"{MLFLOW_ALIAS}:{SERVER_PORT}",
                        max_upload_mb=settings.max_upload_mb,
                        acme_email=settings.acme_email,
                        acme_directory_url=settings.acme_directory_url,
                        acme_ca_root=bool(settings.acme_ca_certificate),
                    ),
                    "bind_address": settings.bind_address,
                    "http_port": settings.http_port,
                    "ca_certificate": self.ca_certificate,
                    "ca_private_key": self.internal_ca.private_key_pem if self.internal_ca else None,
                    "tls_certificate": settings.tls_certificate,
                    "tls_private_key": (
                        pulumi.Output.secret(settings.tls_private_key) if settings.tls_mode == "provided" else None
                    ),
                    "acme_ca_certificate": settings.acme_ca_certificate,
                    "memory_mb": settings.proxy_memory_mb,
                    "protect_data": settings.protect_data,
                    "log_max_size": settings.log_max_size,
                    "log_max_files": settings.log_max_files,
                    "startup_timeout_seconds": settings.startup_timeout_seconds,
                    "labels": labels("proxy"),
                    "start_after": [self.server.container],
                },
                opts=child,
            )

        self.tracking_uri = settings.tracking_uri
        self.backend_store_uri = pulumi.Output.secret(
            pulumi.Output.concat(
                "postgresql+psycopg://",
                quote(settings.postgres_user, safe=""),
                ":",
                self.database.password.result.apply(lambda password: quote(password, safe="")),
                f"@{POSTGRES_ALIAS}:{self.database.port}/{settings.postgres_database}",
            )
        )
        self.admin_password = (
            pulumi.Output.secret(self.server.admin_password.result) if self.server.admin_password else None
        )
        self.admin_username = ADMIN_USERNAME if settings.auth_enabled else None
        self.register_outputs({"tracking_uri": self.tracking_uri, "backend_store_uri": self.backend_store_uri})
