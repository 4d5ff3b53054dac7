"""Every input of every container, in full, for known configurations (the dev and staging stacks).

A test should fail when any safety-relevant detail changes: the whole health check,
the whole command, every upload's path, owner, group and mode, tmpfs options,
security options, capabilities, memory and swap, user, published ports, env,
volumes, read-only. So each container's inputs are compared as one literal dict;
a key added, removed or changed anywhere fails with pytest's dict diff.

Values another resource or file produces are not written out: the image a container
runs (`ImageOf`), a generated secret (`SecretOf`, `PgpassOf`, `KeyOf`), the stack's
root certificate (`CertOf`), an uploaded script (`SourceOf`, the repository file) and
the proxy's Caddyfile (`CaddyfileFor`, whose lines tests/test_proxy.py asserts). They
are resolved to exactly that value, so they too are compared in full.

Adding a container: add its Docker name and expected dict under each stack in
EXPECTED. `test_every_container_has_an_expected_spec` fails until you do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from components.proxy import CaddySite, caddyfile
from tests.harness import EngineMocks, declaration
from tools.stack_config import PROJECT_DIR

CONTAINER = "docker:index/container:Container"


@dataclass(frozen=True)
class ImageOf:
    """The image input: the output `key` of the image resource whose name ends with `resource`."""

    type: str
    resource: str
    key: str


@dataclass(frozen=True)
class SecretOf:
    """An upload's content: the `result` of the RandomPassword whose name ends with `resource`."""

    resource: str


@dataclass(frozen=True)
class SourceOf:
    """An uploaded script: the repository file it is read from, byte for byte."""

    path: str


@dataclass(frozen=True)
class PgpassOf:
    """A libpq password file for MLflow's role, holding the given generated password."""

    password: SecretOf


@dataclass(frozen=True)
class CertOf:
    """The certificate a pulumi-tls SelfSignedCert produced (the stack's root CA)."""

    resource: str


@dataclass(frozen=True)
class KeyOf:
    """The private key a pulumi-tls PrivateKey produced (secret)."""

    resource: str


@dataclass(frozen=True)
class CaddyfileFor:
    """The proxy's Caddyfile for the committed TLS settings of a shared stack with this public host.

    Its lines are asserted one by one in tests/test_proxy.py; here the whole text must be that.
    """

    public_host: str


POSTGRES_IMAGE = ImageOf("docker:index/remoteImage:RemoteImage", "postgres-image", "imageId")
MLFLOW_IMAGE = ImageOf("docker:index/image:Image", "image-image", "repoDigest")


# Stack -> Docker container name -> every input the program declares for it.
EXPECTED: dict[str, dict[str, dict[str, Any]]] = {
    "dev": {
        "mlflow-platform-dev-postgres": {
            "stopTimeout": 120,
            "waitTimeout": 300,
            "restart": "unless-stopped",
            "wait": True,
            "capabilities": {"drops": ["ALL"]},
            "user": "999:999",
            "securityOpts": ["no-new-privileges:true"],
            "shmSize": 256,
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "destroyGraceSeconds": 120,
            "name": "mlflow-platform-dev-postgres",
            "entrypoints": ["/usr/local/bin/mlflow-platform-postgres-entrypoint"],
            "image": ImageOf("docker:index/remoteImage:RemoteImage", "postgres-image", "imageId"),
            "uploads": [
                {
                    "group": "999",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-superuser-password",
                    "content": SecretOf("postgres-superuser-password"),
                    "owner": "999",
                },
                {
                    "content": SourceOf("mlflow/postgres/entrypoint.sh"),
                    "permissions": "0755",
                    "file": "/usr/local/bin/mlflow-platform-postgres-entrypoint",
                },
            ],
            "stopSignal": "SIGINT",
            "healthcheck": {
                "tests": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"],
                "interval": "5s",
                "timeout": "5s",
                "startPeriod": "30s",
                "retries": 12,
            },
            "memorySwap": 1024,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "dev", "label": "com.pulumi.stack"},
                {"value": "database", "label": "org.mlflow-platform.role"},
            ],
            "envs": [
                "POSTGRES_USER=postgres",
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-superuser-password",
                "PGDATA=/var/lib/postgresql/data/pgdata",
                "POSTGRES_IMAGE_REFERENCE=postgres:17.6",
            ],
            "networksAdvanced": [{"aliases": ["postgres"], "name": "mlflow-platform-dev"}],
            "memory": 1024,
            "logDriver": "json-file",
            "command": [
                "postgres",
                "-c",
                "max_connections=100",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "effective_cache_size=768MB",
                "-c",
                "maintenance_work_mem=64MB",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
            ],
            "volumes": [
                {"volumeName": "mlflow-platform-dev-pgdata", "containerPath": "/var/lib/postgresql/data"},
                {"volumeName": "mlflow-platform-dev-pgsocket", "containerPath": "/var/run/postgresql"},
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-dev-db-bootstrap": {
            "networkMode": "none",
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "securityOpts": ["no-new-privileges:true"],
            "restart": "no",
            "capabilities": {"drops": ["ALL"]},
            "user": "10001:10001",
            "attach": True,
            "name": "mlflow-platform-dev-db-bootstrap",
            "entrypoints": ["python", "/opt/mlflow-entrypoint/bootstrap_db.py"],
            "image": ImageOf("docker:index/image:Image", "image-image", "repoDigest"),
            "uploads": [
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-password",
                    "content": SecretOf("postgres-password"),
                    "owner": "10001",
                },
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-superuser-password",
                    "content": SecretOf("postgres-superuser-password"),
                    "owner": "10001",
                },
            ],
            "memorySwap": 256,
            "readOnly": True,
            "envs": [
                "POSTGRES_SOCKET_DIR=/var/run/postgresql",
                "POSTGRES_SUPERUSER=postgres",
                "POSTGRES_SUPERUSER_PASSWORD_FILE=/run/secrets/postgres-superuser-password",
                "POSTGRES_USER=mlflow",
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
                "POSTGRES_DB=mlflow",
                "POSTGRES_AUTH_DB=mlflow_auth",
            ],
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "dev", "label": "com.pulumi.stack"},
                {"value": "database-bootstrap", "label": "org.mlflow-platform.role"},
                {"value": "mlflow-postgres-container-id", "label": "org.mlflow-platform.bootstrapped-container"},
            ],
            "mustRun": False,
            "memory": 256,
            "logDriver": "json-file",
            "volumes": [
                {
                    "volumeName": "mlflow-platform-dev-pgsocket",
                    "readOnly": True,
                    "containerPath": "/var/run/postgresql",
                },
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-dev-mlflow": {
            "ports": [{"protocol": "tcp", "ip": "127.0.0.1", "internal": 5000, "external": 5000}],
            "stopTimeout": 60,
            "waitTimeout": 300,
            "restart": "unless-stopped",
            "wait": True,
            "capabilities": {"drops": ["ALL"]},
            "user": "10001:10001",
            "securityOpts": ["no-new-privileges:true"],
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=512m"},
            "destroyGraceSeconds": 60,
            "name": "mlflow-platform-dev-mlflow",
            "image": ImageOf("docker:index/image:Image", "image-image", "repoDigest"),
            "uploads": [
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-password",
                    "content": SecretOf("postgres-password"),
                    "owner": "10001",
                }
            ],
            "stopSignal": "SIGTERM",
            "healthcheck": {
                "tests": [
                    "CMD",
                    "python",
                    "-c",
                    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)",
                ],
                "interval": "10s",
                "timeout": "5s",
                "startPeriod": "60s",
                "retries": 6,
            },
            "memorySwap": 1536,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "dev", "label": "com.pulumi.stack"},
                {"value": "tracking-server", "label": "org.mlflow-platform.role"},
            ],
            "networksAdvanced": [{"aliases": ["mlflow"], "name": "mlflow-platform-dev"}],
            "envs": [
                "POSTGRES_HOST=postgres",
                "POSTGRES_PORT=5432",
                "POSTGRES_DB=mlflow",
                "POSTGRES_USER=mlflow",
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
                "HOME=/tmp",
                "TMPDIR=/tmp",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
                "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=5",
                "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=5",
                "MLFLOW_DISABLE_TELEMETRY=true",
                "MLFLOW_PRE_UPGRADE_BACKUP=true",
                "MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT=300",
            ],
            "memory": 1536,
            "logDriver": "json-file",
            "command": [
                "--host",
                "0.0.0.0",
                "--port",
                "5000",
                "--workers",
                "4",
                "--serve-artifacts",
                "--artifacts-destination",
                "/mlflow/artifacts",
                "--allowed-hosts",
                "localhost,localhost:5000,mlflow,mlflow:5000,127.0.0.1,127.0.0.1:5000",
            ],
            "readOnly": True,
            "volumes": [
                {"volumeName": "mlflow-platform-dev-artifacts", "containerPath": "/mlflow/artifacts"},
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-dev-backup": {
            "stopSignal": "SIGTERM",
            "stopTimeout": 60,
            "destroyGraceSeconds": 60,
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "waitTimeout": 300,
            "restart": "unless-stopped",
            "wait": True,
            "capabilities": {"drops": ["ALL"]},
            "user": "10001:10001",
            "securityOpts": ["no-new-privileges:true"],
            "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=256m"},
            "entrypoints": ["/usr/local/bin/mlflow-backup"],
            "name": "mlflow-platform-dev-backup",
            "image": ImageOf("docker:index/remoteImage:RemoteImage", "postgres-image", "imageId"),
            "uploads": [
                {
                    "group": "0",
                    "permissions": "0755",
                    "file": "/usr/local/bin/mlflow-backup",
                    "content": SourceOf("mlflow/backup/mlflow-backup"),
                    "owner": "0",
                },
                {
                    "group": "0",
                    "permissions": "0444",
                    "file": "/etc/mlflow-backup/backup.conf",
                    "content": "PGHOST='postgres'\n"
                    "PGPORT='5432'\n"
                    "PGUSER='mlflow'\n"
                    "PGPASSFILE='/run/secrets/pgpass'\n"
                    "TRACKING_DB='mlflow'\n"
                    "AUTH_DB='mlflow_auth'\n"
                    "ADMIN_USERNAME=''\n"
                    "MLFLOW_VERSION='3.17.2'\n"
                    "BACKUP_DIR='/var/lib/postgresql/data'\n"
                    "ARTIFACTS_DIR='/mlflow/artifacts'\n"
                    "INTERVAL_SECONDS='86400'\n"
                    "KEEP='7'\n"
                    "CONTAINER_NAME='mlflow-platform-dev-backup'\n"
                    "NETWORK_NAME='mlflow-platform-dev'\n"
                    "ARTIFACTS_VOLUME='mlflow-platform-dev-artifacts'\n"
                    "IMAGE='postgres:17.6'\n",
                    "owner": "0",
                },
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/pgpass",
                    "content": PgpassOf(SecretOf("postgres-password")),
                    "owner": "10001",
                },
            ],
            "memorySwap": 512,
            "healthcheck": {
                "tests": ["CMD", "/usr/local/bin/mlflow-backup", "health"],
                "interval": "10s",
                "timeout": "10s",
                "startPeriod": "5m",
                "retries": 3,
            },
            "readOnly": True,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "dev", "label": "com.pulumi.stack"},
                {"value": "backup", "label": "org.mlflow-platform.role"},
            ],
            "envs": ["MLFLOW_BACKUP_CONFIG=/etc/mlflow-backup/backup.conf", "TMPDIR=/tmp"],
            "networksAdvanced": [{"name": "mlflow-platform-dev"}],
            "memory": 512,
            "logDriver": "json-file",
            "command": ["schedule"],
            "volumes": [
                {"volumeName": "mlflow-platform-dev-backups", "containerPath": "/var/lib/postgresql/data"},
                {"volumeName": "mlflow-platform-dev-artifacts", "readOnly": True, "containerPath": "/mlflow/artifacts"},
                {"containerPath": "/usr/local/bin"},
                {"containerPath": "/etc/mlflow-backup"},
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-dev-gc": {
            "stopSignal": "SIGTERM",
            "stopTimeout": 30,
            "destroyGraceSeconds": 30,
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "restart": "unless-stopped",
            "wait": False,
            "capabilities": {"drops": ["ALL"]},
            "user": "10001:10001",
            "securityOpts": ["no-new-privileges:true"],
            "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=64m"},
            "entrypoints": ["/usr/local/bin/mlflow-gc"],
            "name": "mlflow-platform-dev-gc",
            "image": ImageOf("docker:index/image:Image", "image-image", "repoDigest"),
            "uploads": [
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-password",
                    "content": SecretOf("postgres-password"),
                    "owner": "10001",
                }
            ],
            "memorySwap": 512,
            "healthcheck": {
                "tests": ["CMD", "/usr/local/bin/mlflow-gc", "health"],
                "interval": "10s",
                "timeout": "10s",
                "startPeriod": "5m",
                "retries": 3,
            },
            "readOnly": True,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "dev", "label": "com.pulumi.stack"},
                {"value": "gc", "label": "org.mlflow-platform.role"},
            ],
            "envs": [
                "POSTGRES_HOST=postgres",
                "POSTGRES_PORT=5432",
                "POSTGRES_DB=mlflow",
                "POSTGRES_USER=mlflow",
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
                "ARTIFACTS_DIR=/mlflow/artifacts",
                "GC_OLDER_THAN=30d",
                "GC_INTERVAL_SECONDS=86400",
                "HOME=/tmp",
                "TMPDIR=/tmp",
                "MLFLOW_DISABLE_TELEMETRY=true",
            ],
            "networksAdvanced": [{"name": "mlflow-platform-dev"}],
            "memory": 512,
            "logDriver": "json-file",
            "command": ["loop"],
            "volumes": [
                {"volumeName": "mlflow-platform-dev-artifacts", "containerPath": "/mlflow/artifacts"},
                {"containerPath": "/run/secrets"},
            ],
        },
    },
    "staging": {
        "mlflow-platform-staging-postgres": {
            "stopTimeout": 120,
            "waitTimeout": 300,
            "restart": "unless-stopped",
            "wait": True,
            "capabilities": {"drops": ["ALL"]},
            "user": "999:999",
            "securityOpts": ["no-new-privileges:true"],
            "shmSize": 256,
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "destroyGraceSeconds": 120,
            "name": "mlflow-platform-staging-postgres",
            "entrypoints": ["/usr/local/bin/mlflow-platform-postgres-entrypoint"],
            "image": ImageOf("docker:index/remoteImage:RemoteImage", "postgres-image", "imageId"),
            "uploads": [
                {
                    "group": "999",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-superuser-password",
                    "content": SecretOf("postgres-superuser-password"),
                    "owner": "999",
                },
                {
                    "content": SourceOf("mlflow/postgres/entrypoint.sh"),
                    "permissions": "0755",
                    "file": "/usr/local/bin/mlflow-platform-postgres-entrypoint",
                },
            ],
            "stopSignal": "SIGINT",
            "healthcheck": {
                "tests": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"],
                "interval": "5s",
                "timeout": "5s",
                "startPeriod": "30s",
                "retries": 12,
            },
            "memorySwap": 1024,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "staging", "label": "com.pulumi.stack"},
                {"value": "database", "label": "org.mlflow-platform.role"},
            ],
            "envs": [
                "POSTGRES_USER=postgres",
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-superuser-password",
                "PGDATA=/var/lib/postgresql/data/pgdata",
                "POSTGRES_IMAGE_REFERENCE=postgres:17.6",
            ],
            "networksAdvanced": [{"aliases": ["postgres"], "name": "mlflow-platform-staging"}],
            "memory": 1024,
            "logDriver": "json-file",
            "command": [
                "postgres",
                "-c",
                "max_connections=100",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "effective_cache_size=768MB",
                "-c",
                "maintenance_work_mem=64MB",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
            ],
            "volumes": [
                {"volumeName": "mlflow-platform-staging-pgdata", "containerPath": "/var/lib/postgresql/data"},
                {"volumeName": "mlflow-platform-staging-pgsocket", "containerPath": "/var/run/postgresql"},
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-staging-db-bootstrap": {
            "networkMode": "none",
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "securityOpts": ["no-new-privileges:true"],
            "restart": "no",
            "capabilities": {"drops": ["ALL"]},
            "user": "10001:10001",
            "attach": True,
            "name": "mlflow-platform-staging-db-bootstrap",
            "entrypoints": ["python", "/opt/mlflow-entrypoint/bootstrap_db.py"],
            "image": ImageOf("docker:index/image:Image", "image-image", "repoDigest"),
            "uploads": [
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-password",
                    "content": SecretOf("postgres-password"),
                    "owner": "10001",
                },
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-superuser-password",
                    "content": SecretOf("postgres-superuser-password"),
                    "owner": "10001",
                },
            ],
            "memorySwap": 256,
            "readOnly": True,
            "envs": [
                "POSTGRES_SOCKET_DIR=/var/run/postgresql",
                "POSTGRES_SUPERUSER=postgres",
                "POSTGRES_SUPERUSER_PASSWORD_FILE=/run/secrets/postgres-superuser-password",
                "POSTGRES_USER=mlflow",
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
                "POSTGRES_DB=mlflow",
                "POSTGRES_AUTH_DB=mlflow_auth",
            ],
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "staging", "label": "com.pulumi.stack"},
                {"value": "database-bootstrap", "label": "org.mlflow-platform.role"},
                {"value": "mlflow-postgres-container-id", "label": "org.mlflow-platform.bootstrapped-container"},
            ],
            "mustRun": False,
            "memory": 256,
            "logDriver": "json-file",
            "volumes": [
                {
                    "volumeName": "mlflow-platform-staging-pgsocket",
                    "readOnly": True,
                    "containerPath": "/var/run/postgresql",
                },
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-staging-mlflow": {
            "ports": [],
            "stopTimeout": 60,
            "waitTimeout": 300,
            "restart": "unless-stopped",
            "wait": True,
            "capabilities": {"drops": ["ALL"]},
            "user": "10001:10001",
            "securityOpts": ["no-new-privileges:true"],
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "tmpfs": {
                "/tmp": "rw,noexec,nosuid,nodev,size=512m",
                "/run/mlflow-metrics": "rw,noexec,nosuid,nodev,size=64m,uid=10001,gid=10001,mode=0700",
            },
            "destroyGraceSeconds": 60,
            "name": "mlflow-platform-staging-mlflow",
            "image": ImageOf("docker:index/image:Image", "image-image", "repoDigest"),
            "uploads": [
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-password",
                    "content": SecretOf("postgres-password"),
                    "owner": "10001",
                },
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/admin-password",
                    "content": SecretOf("server-admin-password"),
                    "owner": "10001",
                },
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/flask-secret-key",
                    "content": SecretOf("server-flask-secret-key"),
                    "owner": "10001",
                },
            ],
            "stopSignal": "SIGTERM",
            "healthcheck": {
                "tests": [
                    "CMD",
                    "python",
                    "-c",
                    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)",
                ],
                "interval": "10s",
                "timeout": "5s",
                "startPeriod": "60s",
                "retries": 6,
            },
            "memorySwap": 2048,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "staging", "label": "com.pulumi.stack"},
                {"value": "tracking-server", "label": "org.mlflow-platform.role"},
            ],
            "networksAdvanced": [{"aliases": ["mlflow"], "name": "mlflow-platform-staging"}],
            "envs": [
                "POSTGRES_HOST=postgres",
                "POSTGRES_PORT=5432",
                "POSTGRES_DB=mlflow",
                "POSTGRES_USER=mlflow",
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
                "HOME=/tmp",
                "TMPDIR=/tmp",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
                "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=5",
                "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=5",
                "MLFLOW_DISABLE_TELEMETRY=true",
                "MLFLOW_PRE_UPGRADE_BACKUP=true",
                "MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT=300",
                "PROMETHEUS_MULTIPROC_DIR=/run/mlflow-metrics",
                "MLFLOW_AUTH_ADMIN_USERNAME=admin",
                "MLFLOW_AUTH_ADMIN_PASSWORD_FILE=/run/secrets/admin-password",
                "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE=/run/secrets/flask-secret-key",
                "MLFLOW_AUTH_CACHE_TTL_SECONDS=30",
            ],
            "memory": 2048,
            "logDriver": "json-file",
            "command": [
                "--host",
                "0.0.0.0",
                "--port",
                "5000",
                "--workers",
                "2",
                "--serve-artifacts",
                "--artifacts-destination",
                "/mlflow/artifacts",
                "--allowed-hosts",
                "mlflow.staging.example.internal,mlflow.staging.example.internal:443,mlflow,mlflow:5000",
                "--app-name",
                "basic-auth",
                "--expose-prometheus",
                "/run/mlflow-metrics",
            ],
            "readOnly": True,
            "volumes": [
                {"volumeName": "mlflow-platform-staging-artifacts", "containerPath": "/mlflow/artifacts"},
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-staging-backup": {
            "stopSignal": "SIGTERM",
            "stopTimeout": 60,
            "destroyGraceSeconds": 60,
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "waitTimeout": 300,
            "restart": "unless-stopped",
            "wait": True,
            "capabilities": {"drops": ["ALL"]},
            "user": "10001:10001",
            "securityOpts": ["no-new-privileges:true"],
            "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=256m"},
            "entrypoints": ["/usr/local/bin/mlflow-backup"],
            "name": "mlflow-platform-staging-backup",
            "image": ImageOf("docker:index/remoteImage:RemoteImage", "postgres-image", "imageId"),
            "uploads": [
                {
                    "group": "0",
                    "permissions": "0755",
                    "file": "/usr/local/bin/mlflow-backup",
                    "content": SourceOf("mlflow/backup/mlflow-backup"),
                    "owner": "0",
                },
                {
                    "group": "0",
                    "permissions": "0444",
                    "file": "/etc/mlflow-backup/backup.conf",
                    "content": "PGHOST='postgres'\n"
                    "PGPORT='5432'\n"
                    "PGUSER='mlflow'\n"
                    "PGPASSFILE='/run/secrets/pgpass'\n"
                    "TRACKING_DB='mlflow'\n"
                    "AUTH_DB='mlflow_auth'\n"
                    "ADMIN_USERNAME='admin'\n"
                    "MLFLOW_VERSION='3.17.2'\n"
                    "BACKUP_DIR='/var/lib/postgresql/data'\n"
                    "ARTIFACTS_DIR='/mlflow/artifacts'\n"
                    "INTERVAL_SECONDS='86400'\n"
                    "KEEP='7'\n"
                    "CONTAINER_NAME='mlflow-platform-staging-backup'\n"
                    "NETWORK_NAME='mlflow-platform-staging'\n"
                    "ARTIFACTS_VOLUME='mlflow-platform-staging-artifacts'\n"
                    "IMAGE='postgres:17.6'\n",
                    "owner": "0",
                },
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/pgpass",
                    "content": PgpassOf(SecretOf("postgres-password")),
                    "owner": "10001",
                },
            ],
            "memorySwap": 512,
            "healthcheck": {
                "tests": ["CMD", "/usr/local/bin/mlflow-backup", "health"],
                "interval": "10s",
                "timeout": "10s",
                "startPeriod": "5m",
                "retries": 3,
            },
            "readOnly": True,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "staging", "label": "com.pulumi.stack"},
                {"value": "backup", "label": "org.mlflow-platform.role"},
            ],
            "envs": ["MLFLOW_BACKUP_CONFIG=/etc/mlflow-backup/backup.conf", "TMPDIR=/tmp"],
            "networksAdvanced": [{"name": "mlflow-platform-staging"}],
            "memory": 512,
            "logDriver": "json-file",
            "command": ["schedule"],
            "volumes": [
                {"volumeName": "mlflow-platform-staging-backups", "containerPath": "/var/lib/postgresql/data"},
                {
                    "volumeName": "mlflow-platform-staging-artifacts",
                    "readOnly": True,
                    "containerPath": "/mlflow/artifacts",
                },
                {"containerPath": "/usr/local/bin"},
                {"containerPath": "/etc/mlflow-backup"},
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-staging-gc": {
            "stopSignal": "SIGTERM",
            "stopTimeout": 30,
            "destroyGraceSeconds": 30,
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "restart": "unless-stopped",
            "wait": False,
            "capabilities": {"drops": ["ALL"]},
            "user": "10001:10001",
            "securityOpts": ["no-new-privileges:true"],
            "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=64m"},
            "entrypoints": ["/usr/local/bin/mlflow-gc"],
            "name": "mlflow-platform-staging-gc",
            "image": ImageOf("docker:index/image:Image", "image-image", "repoDigest"),
            "uploads": [
                {
                    "group": "10001",
                    "permissions": "0400",
                    "file": "/run/secrets/postgres-password",
                    "content": SecretOf("postgres-password"),
                    "owner": "10001",
                }
            ],
            "memorySwap": 512,
            "healthcheck": {
                "tests": ["CMD", "/usr/local/bin/mlflow-gc", "health"],
                "interval": "10s",
                "timeout": "10s",
                "startPeriod": "5m",
                "retries": 3,
            },
            "readOnly": True,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "staging", "label": "com.pulumi.stack"},
                {"value": "gc", "label": "org.mlflow-platform.role"},
            ],
            "envs": [
                "POSTGRES_HOST=postgres",
                "POSTGRES_PORT=5432",
                "POSTGRES_DB=mlflow",
                "POSTGRES_USER=mlflow",
                "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
                "ARTIFACTS_DIR=/mlflow/artifacts",
                "GC_OLDER_THAN=30d",
                "GC_INTERVAL_SECONDS=86400",
                "HOME=/tmp",
                "TMPDIR=/tmp",
                "MLFLOW_DISABLE_TELEMETRY=true",
            ],
            "networksAdvanced": [{"name": "mlflow-platform-staging"}],
            "memory": 512,
            "logDriver": "json-file",
            "command": ["loop"],
            "volumes": [
                {"volumeName": "mlflow-platform-staging-artifacts", "containerPath": "/mlflow/artifacts"},
                {"containerPath": "/run/secrets"},
            ],
        },
        "mlflow-platform-staging-proxy": {
            "ports": [
                {"protocol": "tcp", "ip": "0.0.0.0", "internal": 8443, "external": 443},
                {"protocol": "tcp", "ip": "0.0.0.0", "internal": 8080, "external": 80},
            ],
            "stopTimeout": 60,
            "waitTimeout": 300,
            "restart": "unless-stopped",
            "wait": True,
            "capabilities": {"drops": ["ALL"]},
            "user": "10002:10002",
            "securityOpts": ["no-new-privileges:true"],
            "logOpts": {"max-size": "10m", "max-file": "3"},
            "destroyGraceSeconds": 60,
            "tmpfs": {
                "/tmp": "rw,noexec,nosuid,nodev,size=64m",
                "/config": "rw,noexec,nosuid,nodev,size=16m,uid=10002,gid=10002,mode=0700",
                "/data": "rw,noexec,nosuid,nodev,size=16m,uid=10002,gid=10002,mode=0700",
            },
            "name": "mlflow-platform-staging-proxy",
            "image": ImageOf("docker:index/image:Image", "proxy-image", "repoDigest"),
            "uploads": [
                {
                    "group": "0",
                    "permissions": "0444",
                    "file": "/etc/caddy/Caddyfile",
                    "content": CaddyfileFor("mlflow.staging.example.internal"),
                    "owner": "0",
                },
                {
                    "group": "0",
                    "permissions": "0444",
                    "file": "/run/secrets/ca-root.crt",
                    "content": CertOf("ca-root"),
                    "owner": "0",
                },
                {
                    "group": "10002",
                    "permissions": "0400",
                    "file": "/run/secrets/ca-root.key",
                    "content": KeyOf("ca-key"),
                    "owner": "10002",
                },
            ],
            "stopSignal": "SIGTERM",
            "healthcheck": {
                "tests": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/health"],
                "interval": "10s",
                "timeout": "5s",
                "startPeriod": "10s",
                "retries": 3,
            },
            "memorySwap": 256,
            "labels": [
                {"value": "mlflow-platform", "label": "com.pulumi.project"},
                {"value": "staging", "label": "com.pulumi.stack"},
                {"value": "proxy", "label": "org.mlflow-platform.role"},
            ],
            "networksAdvanced": [{"aliases": ["proxy"], "name": "mlflow-platform-staging"}],
            "readOnly": True,
            "memory": 256,
            "logDriver": "json-file",
            "volumes": [
                {"volumeName": "mlflow-platform-staging-proxy-data", "containerPath": "/var/lib/mlflow-proxy"},
                {"containerPath": "/etc/caddy"},
                {"containerPath": "/run/secrets"},
            ],
        },
    },
}


def _resolve(expected: Any, mocks: EngineMocks) -> Any:
    """Replaces ImageOf/SecretOf with the values the named resources produced."""
    if isinstance(expected, ImageOf):
        return mocks.one(expected.type, expected.resource).outputs[expected.key]
    if isinstance(expected, SecretOf):
        return mocks.one("random:index/randomPassword:RandomPassword", expected.resource).outputs["result"]
    if isinstance(expected, SourceOf):
        return (PROJECT_DIR / expected.path).read_text(encoding="utf-8")
    if isinstance(expected, PgpassOf):
        return f"postgres:5432:*:mlflow:{_resolve(expected.password, mocks)}\n"
    if isinstance(expected, CertOf):
        return mocks.one("tls:index/selfSignedCert:SelfSignedCert", expected.resource).outputs["certPem"]
    if isinstance(expected, KeyOf):
        return mocks.one("tls:index/privateKey:PrivateKey", expected.resource).outputs["privateKeyPem"]
    if isinstance(expected, CaddyfileFor):
        return caddyfile(CaddySite(expected.public_host, "internal", 443, "mlflow:5000", 5120))
    if isinstance(expected, dict):
        return {key: _resolve(value, mocks) for key, value in expected.items()}
    if isinstance(expected, list):
        return [_resolve(value, mocks) for value in expected]
    return expected


def _containers(mocks: EngineMocks) -> dict[str, dict[str, Any]]:
    return {str(r.inputs["name"]): r.inputs for r in mocks.of_type(CONTAINER)}


@pytest.mark.parametrize("stack", sorted(EXPECTED))
def test_every_container_has_an_expected_spec(stack: str) -> None:
    mocks = declaration(stack).mocks
    assert sorted(_containers(mocks)) == sorted(EXPECTED[stack])


@pytest.mark.parametrize(
    ("stack", "container"), [(stack, name) for stack, containers in EXPECTED.items() for name in containers]
)
def test_container_inputs_in_full(stack: str, container: str) -> None:
    mocks = declaration(stack).mocks
    declared = _containers(mocks)[container]
    assert declared == _resolve(EXPECTED[stack][container], mocks)


def test_the_placeholders_resolve_to_distinct_generated_values() -> None:
    """SecretOf must not resolve every upload to the same value, or a swapped secret would pass."""
    mocks = declaration("staging").mocks
    names = ("postgres-password", "server-admin-password", "server-flask-secret-key")
    resolved_values = [_resolve(SecretOf(name), mocks) for name in names]
    assert len(set(resolved_values)) == 3
    assert _resolve(POSTGRES_IMAGE, mocks) != _resolve(MLFLOW_IMAGE, mocks)
