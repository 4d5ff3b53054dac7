"""An MLflow tracking server on PostgreSQL in Docker, one stack per environment."""

import pulumi

from components.platform import MlflowPlatform
from components.postgres import PostgresDatabase
from components.settings import load_settings

# Validated before anything is declared: a bad value stops here with the key,
# the value and what is accepted.
settings = load_settings()
platform = MlflowPlatform("mlflow", {"settings": settings})

pulumi.export("tracking_uri", platform.tracking_uri)
# In-network URI, for `docker run --network <network>` maintenance jobs (backups,
# `mlflow gc`). Secret: it carries the database password.
pulumi.export("backend_store_uri", platform.backend_store_uri)
pulumi.export("network_name", platform.network.name)
pulumi.export("artifacts_volume_name", platform.server.artifacts_volume.name)
pulumi.export("mlflow_container_name", platform.server.container.name)
pulumi.export("mlflow_image_name", platform.image.image_name)
pulumi.export("backup_container_name", platform.backups.container.name)
pulumi.export("backups_volume_name", platform.backups.volume.name)
pulumi.export("gc_container_name", platform.gc.container.name)
pulumi.export("mlflow_version", settings.server.mlflow_version)
# standalone: the *_container_name outputs name containers; swarm: they name services.
pulumi.export("engine", settings.cluster.engine)
if settings.cluster.swarm:
    pulumi.export("mlflow_service_name", platform.server.workload_name)
    pulumi.export("mlflow_replicas", settings.cluster.replicas)
    pulumi.export("postgres_node_label", settings.cluster.postgres_node_label)
pulumi.export("auth_enabled", settings.server.auth_enabled)
if isinstance(platform.database, PostgresDatabase):
    # None with externalDatabaseUrl: the database is outside the stack.
    pulumi.export("postgres_volume_name", platform.database.volume.name)
    pulumi.export("postgres_container_name", platform.database.container.name)
if platform.proxy is not None:
    pulumi.export("tls_mode", settings.tls.mode)
    pulumi.export("proxy_container_name", platform.proxy.container.name)
    pulumi.export("proxy_volume_name", platform.proxy.data_volume.name)
if platform.ca_certificate is not None:
    # Public: clients trust it with MLFLOW_TRACKING_SERVER_CERT_PATH.
    pulumi.export("ca_certificate", platform.ca_certificate)
if platform.admin_password is not None:
    pulumi.export("admin_username", platform.admin_username)
    pulumi.export("admin_password", platform.admin_password)
