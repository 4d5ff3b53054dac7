"""`load_settings`: every key read, checked and grouped, before the program declares any resource."""

from __future__ import annotations

import dataclasses

import pulumi
from pulumi.runtime.proto import resource_pb2

from components.context import LogRotation
from components.mlflow_facts import BASE_MEMORY_MB, WORKER_MEMORY_MB
from components.settings import model
from components.settings.grammar import (
    ARTIFACT_STORES,
    BUCKET_ACCEPTED,
    DATABASE_ACCEPTED,
    DOCKER_SIZE,
    ENDPOINT_ACCEPTED,
    ENGINES,
    ENVIRONMENT_KINDS,
    EXTERNAL_DATABASE_SCHEMES,
    EXTERNAL_DATABASE_URL_ACCEPTED,
    GC_AGE,
    IMAGE_ACCEPTED,
    NODE_LABEL_ACCEPTED,
    PREFIX_ACCEPTED,
    REGION_ACCEPTED,
    REGISTRY_ACCEPTED,
    ROLE_ACCEPTED,
    TLS_MODES,
    is_allowed_host,
    is_application_role,
    is_artifact_prefix,
    is_bucket,
    is_host_name,
    is_ip_address,
    is_node_label,
    is_origin,
    is_pinned_image,
    is_region,
    is_registry,
    is_store_endpoint,
    is_tracking_database,
    locked_mlflow_releases,
    matches,
    mlflow_accepted,
    normalise_allowed_host,
    parse_database_url,
)
from components.settings.reader import ConfigReader, SettingsError
from components.settings.rules import check_rules

MIN_SECRET_LENGTH = 24
MAX_SECRET_LENGTH = 128


def load_settings(config: pulumi.Config | None = None, stack: str | None = None) -> model.StackSettings:
    """Reads and validates every setting, group by group; raises SettingsError on the first bad one."""
    read = ConfigReader(config or pulumi.Config())
    settings = model.StackSettings(
        stack=stack or pulumi.get_stack(),
        project=pulumi.get_project(),
        database=_database(read),
        server=_server(read),
        artifacts=_artifacts(read),
        protect_data=read.boolean("protectData"),
        log_rotation=LogRotation(
            max_size=read.string(
                "logMaxSize", matches(DOCKER_SIZE), "accepted: a size such as '10m' (a whole number, then k, m or g)"
            ),
            max_files=read.integer("logMaxFiles", 1, 100),
        ),
        startup_timeout_seconds=read.integer("startupTimeoutSeconds", 30, 3600),
        tls=_tls(read),
        secrets_rotation=read.string(
            "secretsRotation", lambda value: len(value) <= 256, "accepted: any string of at most 256 characters"
        ),
        environment_kind=read.string(
            "environmentKind",
            lambda value: value in ENVIRONMENT_KINDS,
            "accepted: 'shared' (the default: auth and volume protection required) or 'dev' (a personal stack)",
        ),
        backups=_backups(read),
        cluster=_cluster(read),
        external_database=_external_database(read),
        gc=model.GcSettings(
            older_than=read.string(
                "gcOlderThan",
                matches(GC_AGE),
                "accepted: an age such as '30d', '12h' or '1d12h30m' (whole days, hours, minutes, seconds, "
                "in that order)",
            ),
            interval_hours=read.integer("gcIntervalHours", 1, 720),
        ),
    )
    check_rules(settings)
    if settings.cluster.swarm:
        _require_replacement_triggers()
    return settings


def _require_replacement_triggers() -> None:
    """A swarm stack replaces its MLflow service on a new release (the replacementTrigger option), so
    that no server of the old release writes to a migrated schema. A Pulumi CLI without the option
    (older than 3.208) would ignore it and roll the upgrade, old and new servers side by side."""
    if not pulumi.runtime.settings.monitor_supports_feature(resource_pb2.RESOURCE_MONITOR_FEATURE_REPLACEMENT_TRIGGER):
        raise SettingsError(
            "engine",
            "swarm",
            "accepted with a Pulumi CLI that supports the replacementTrigger resource option (3.208.0 or newer; "
            "`make deploy` installs the release the SDK pins): a new mlflowVersion must stop every old server "
            "before the schema migration",
        )


def _database(read: ConfigReader) -> model.DatabaseSettings:
    return model.DatabaseSettings(
        image=read.string("postgresImage", is_pinned_image, IMAGE_ACCEPTED),
        name=read.string("postgresDatabase", is_tracking_database, DATABASE_ACCEPTED),
        user=read.string("postgresUser", is_application_role, ROLE_ACCEPTED),
        password_length=read.integer("postgresPasswordLength", MIN_SECRET_LENGTH, MAX_SECRET_LENGTH),
        memory_mb=read.integer("postgresMemoryMb", 128, 1_048_576),
    )


def _server(read: ConfigReader) -> model.ServerSettings:
    releases = locked_mlflow_releases()
    return model.ServerSettings(
        mlflow_version=read.string("mlflowVersion", lambda value: value in releases, mlflow_accepted(releases)),
        base_image=read.string("baseImage", is_pinned_image, IMAGE_ACCEPTED),
        use_wheelhouse=read.boolean("useWheelhouse"),
        # Clients send the Host header in lower case and MLflow compares it exactly.
        public_host=read.string("publicHost", is_host_name, "accepted: a DNS host name or an IP address").lower(),
        bind_address=read.string(
            "bindAddress", is_ip_address, "accepted: an IPv4 or IPv6 address such as 127.0.0.1 or 0.0.0.0"
        ),
        host_port=read.integer("hostPort", 1, 65535),
        workers=read.integer("workers", 1, 32),
        # The floor is what one worker needs; rules.py checks it against `workers`.
        memory_mb=read.integer("mlflowMemoryMb", BASE_MEMORY_MB + WORKER_MEMORY_MB, 1_048_576),
        allowed_hosts=tuple(
            normalise_allowed_host(host)
            for host in read.string_list(
                "allowedHosts",
                is_allowed_host,
                "a host name or IP address, optionally with ':port' (an IPv6 address with a port in brackets)",
            )
        ),
        cors_allowed_origins=tuple(
            origin.lower()
            for origin in read.string_list(
                "corsAllowedOrigins",
                is_origin,
                "one origin such as 'https://ml.example.com' (scheme://host[:port]: no path, no comma)",
            )
        ),
        auth_enabled=read.boolean("authEnabled"),
        admin_password_length=read.integer("adminPasswordLength", MIN_SECRET_LENGTH, MAX_SECRET_LENGTH),
        # At most 5 minutes: past a few seconds the throughput gain is already whole,
        # while a revoked password keeps working for up to this long.
        auth_cache_ttl_seconds=read.integer("authCacheTtlSeconds", 0, 300),
        metrics_enabled=read.boolean("metricsEnabled"),
        telemetry_enabled=read.boolean("telemetryEnabled"),
    )


def _bucket(read: ConfigReader, group: str) -> model.BucketLocation:
    """The eight `<group>Bucket` ... `<group>CaCertificate` keys of one bucket, each checked on its own."""
    bucket = read.optional(f"{group}Bucket")
    if bucket and not is_bucket(bucket):
        raise SettingsError(f"{group}Bucket", bucket, BUCKET_ACCEPTED)
    # A leading or trailing '/' is a common way of writing the same prefix: both are dropped.
    prefix = read.optional(f"{group}Prefix").strip("/")
    if not is_artifact_prefix(prefix):
        raise SettingsError(f"{group}Prefix", prefix, PREFIX_ACCEPTED)
    endpoint = read.optional(f"{group}Endpoint").rstrip("/")
    if not is_store_endpoint(endpoint):
        raise SettingsError(f"{group}Endpoint", endpoint, ENDPOINT_ACCEPTED)
    region = read.optional(f"{group}Region")
    if not is_region(region):
        raise SettingsError(f"{group}Region", region, REGION_ACCEPTED)
    return model.BucketLocation(
        bucket=bucket,
        prefix=prefix,
        endpoint=endpoint,
        region=region,
        path_style=read.boolean(f"{group}PathStyle"),
        access_key_id=read.optional(f"{group}AccessKeyId"),
        secret_access_key=read.secret(f"{group}SecretAccessKey"),
        ca_certificate=read.optional(f"{group}CaCertificate"),
    )


def _artifacts(read: ConfigReader) -> model.ArtifactSettings:
    location = dataclasses.asdict(_bucket(read, "artifact"))
    return model.ArtifactSettings(
        store=read.string(
            "artifactStore",
            lambda value: value in ARTIFACT_STORES,
            "accepted: 'volume' (the stack's artifacts volume) or 's3' (an S3-compatible bucket, artifactBucket)",
        ),
        **location,
    )


def _cluster(read: ConfigReader) -> model.ClusterSettings:
    return model.ClusterSettings(
        engine=read.string(
            "engine",
            lambda value: value in ENGINES,
            "accepted: 'standalone' (containers on one Docker host) or 'swarm' (services on a swarm manager)",
        ),
        # More than a few replicas on a small cluster only adds database connections.
        # 0 (the default): by engine, ClusterSettings.replicas.
        mlflow_replicas=read.integer("mlflowReplicas", 0, 16),
        postgres_node_label=read.string("postgresNodeLabel", is_node_label, NODE_LABEL_ACCEPTED),
        image_registry=read.string("imageRegistry", is_registry, REGISTRY_ACCEPTED),
        image_registry_username=read.optional("imageRegistryUsername"),
        image_registry_password=read.secret("imageRegistryPassword"),
        image_registry_ca_certificate=read.optional("imageRegistryCaCertificate"),
    )


def _external_database(read: ConfigReader) -> model.ExternalDatabaseSettings:
    url = read.secret("externalDatabaseUrl")
    ca_certificate = read.optional("externalDatabaseCaCertificate")
    if not url:
        return model.ExternalDatabaseSettings("", ca_certificate, None)
    location = parse_database_url(url)
    if location is None:
        # The value is a secret: only its scheme, which holds none, is shown.
        scheme = url.partition("://")[0] if "://" in url else ""
        if scheme not in EXTERNAL_DATABASE_SCHEMES:
            raise SettingsError(
                "externalDatabaseUrl",
                "<hidden>",
                f"its scheme is {scheme!r}, not postgresql: {EXTERNAL_DATABASE_URL_ACCEPTED}",
            )
        raise SettingsError("externalDatabaseUrl", "<hidden>", EXTERNAL_DATABASE_URL_ACCEPTED)
    return model.ExternalDatabaseSettings(url, ca_certificate, location)


def _backups(read: ConfigReader) -> model.BackupSettings:
    return model.BackupSettings(
        interval_hours=read.integer("backupIntervalHours", 1, 720),
        interval_minutes=read.integer("backupIntervalMinutes", 0, 59),
        keep=read.integer("backupKeep", 1, 1000),
        offsite=_bucket(read, "backup"),
    )


def _tls(read: ConfigReader) -> model.TlsSettings:
    return model.TlsSettings(
        mode=read.string("tlsMode", lambda value: value in TLS_MODES, f"accepted: one of {', '.join(TLS_MODES)}"),
        proxy_image=read.string("proxyImage", is_pinned_image, IMAGE_ACCEPTED),
        https_port=read.integer("httpsPort", 1, 65535),
        http_port=read.integer("httpPort", 1, 65535),
        acme_email=read.optional("acmeEmail"),
        acme_directory_url=read.optional("acmeDirectoryUrl"),
        acme_ca_certificate=read.optional("acmeCaCertificate"),
        certificate=read.optional("tlsCertificate"),
        private_key=read.secret("tlsPrivateKey"),
        # Up to 1 TiB: a model checkpoint of tens of GB must pass; larger is a typo.
        max_upload_mb=read.integer("maxUploadMb", 1, 1_048_576),
        proxy_memory_mb=read.integer("proxyMemoryMb", 64, 1_048_576),
    )
