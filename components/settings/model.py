"""The checked settings of one stack, grouped by what they configure."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.context import ImageRegistry, LogRotation, StackContext
from components.mlflow_facts import AUTH_DATABASE_SUFFIX
from components.settings.grammar import DatabaseUrl, public_url


@dataclass(frozen=True)
class DatabaseSettings:
    """The Postgres container, and MLflow's database and role in it."""

    image: str
    name: str
    user: str
    password_length: int
    memory_mb: int

    @property
    def auth_name(self) -> str:
        """The basic-auth app's database, beside the tracking database."""
        return f"{self.name}{AUTH_DATABASE_SUFFIX}"


@dataclass(frozen=True)
class ExternalDatabaseSettings:
    """A Postgres outside the stack (externalDatabaseUrl): no Postgres container, TLS verified against its CA."""

    # Secret: kept out of repr, so no error message or debug print can show it.
    url: str = field(repr=False)
    ca_certificate: str
    location: DatabaseUrl | None
    """The URL's admin role, host, port and maintenance database; None without an external database."""

    @property
    def enabled(self) -> bool:
        return self.location is not None


IN_STACK_DATABASE = ExternalDatabaseSettings("", "", None)


@dataclass(frozen=True)
class ServerSettings:
    """The MLflow server: its image, where clients reach it, who may, and how much it runs."""

    mlflow_version: str
    base_image: str
    use_wheelhouse: bool
    public_host: str
    bind_address: str
    host_port: int
    workers: int
    memory_mb: int
    allowed_hosts: tuple[str, ...]
    cors_allowed_origins: tuple[str, ...]
    auth_enabled: bool
    admin_password_length: int
    auth_cache_ttl_seconds: int
    metrics_enabled: bool
    telemetry_enabled: bool


@dataclass(frozen=True)
class TlsSettings:
    """The HTTPS front door and where its certificate comes from (`mode` off: no front door)."""

    mode: str
    proxy_image: str
    https_port: int
    http_port: int
    acme_email: str
    acme_directory_url: str
    acme_ca_certificate: str
    certificate: str
    # Secret: kept out of repr, so no error message or debug print can show it.
    private_key: str = field(repr=False)
    max_upload_mb: int
    proxy_memory_mb: int

    @property
    def proxied(self) -> bool:
        """The TLS front door is on: it is the only container that publishes a port."""
        return self.mode != "off"


@dataclass(frozen=True)
class BucketLocation:
    """An S3-compatible bucket and how to reach it: the `<group>Bucket`, `<group>Prefix`, ... keys of one group."""

    bucket: str
    prefix: str
    endpoint: str
    region: str
    path_style: bool
    access_key_id: str
    # Secret: kept out of repr, so no error message or debug print can show it.
    secret_access_key: str = field(repr=False)
    ca_certificate: str


SWARM_DEFAULT_REPLICAS = 2


@dataclass(frozen=True)
class ClusterSettings:
    """Where the stack runs: containers on one host, or services on a swarm (issue 21)."""

    engine: str
    mlflow_replicas: int
    postgres_node_label: str
    image_registry: str
    image_registry_username: str
    # Secret: kept out of repr, so no error message or debug print can show it.
    image_registry_password: str = field(repr=False)
    image_registry_ca_certificate: str

    @property
    def swarm(self) -> bool:
        return self.engine == "swarm"

    @property
    def replicas(self) -> int:
        """MLflow server tasks: mlflowReplicas, or when it is 0 (unset) 1 on standalone and 2 on swarm,
        where a second task keeps the server answering through a node loss or a rolling update."""
        if self.mlflow_replicas:
            return self.mlflow_replicas
        return SWARM_DEFAULT_REPLICAS if self.swarm else 1


STANDALONE = ClusterSettings("standalone", 0, "mlflow-platform.postgres=true", "", "", "", "")


NO_BUCKET = BucketLocation("", "", "", "", False, "", "", "")


@dataclass(frozen=True)
class ArtifactSettings(BucketLocation):
    """Where the server keeps the artifacts it proxies: the stack's volume, or an S3-compatible bucket."""

    store: str

    @property
    def in_bucket(self) -> bool:
        """Artifacts live in the bucket; the artifacts volume is not mounted into the server."""
        return self.store == "s3"

    @property
    def destination(self) -> str:
        """`mlflow server --artifacts-destination` with `s3`: the bucket, under the prefix when one is set."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class BackupSettings:
    """How often the database and artifacts are backed up, how many backups are kept, and the off-host copy."""

    interval_hours: int
    interval_minutes: int
    keep: int
    offsite: BucketLocation = NO_BUCKET
    """The backup bucket every backup is also copied to (backupBucket); no bucket keeps them on this host only."""

    @property
    def copied_offsite(self) -> bool:
        return bool(self.offsite.bucket)

    @property
    def interval_seconds(self) -> int:
        """backupIntervalMinutes, when set, replaces backupIntervalHours."""
        if self.interval_minutes:
            return self.interval_minutes * 60
        return self.interval_hours * 3600


@dataclass(frozen=True)
class GcSettings:
    """`mlflow gc`: how long a deleted run waits before it is removed for good, and how often gc runs."""

    older_than: str
    interval_hours: int

    @property
    def interval_seconds(self) -> int:
        return self.interval_hours * 3600


@dataclass(frozen=True)
class StackSettings:
    """Everything the components need, already checked."""

    stack: str
    project: str
    environment_kind: str
    protect_data: bool
    startup_timeout_seconds: int
    secrets_rotation: str
    database: DatabaseSettings
    server: ServerSettings
    artifacts: ArtifactSettings
    tls: TlsSettings
    backups: BackupSettings
    gc: GcSettings
    log_rotation: LogRotation
    cluster: ClusterSettings = STANDALONE
    external_database: ExternalDatabaseSettings = IN_STACK_DATABASE

    @property
    def shared(self) -> bool:
        """Holds shared experiment data: anything but an explicit personal dev stack."""
        return self.environment_kind != "dev"

    @property
    def proxied(self) -> bool:
        """The TLS front door is on: it is the only container that publishes a port."""
        return self.tls.proxied

    @property
    def public_port(self) -> int:
        """The port clients reach the stack at: the front door's HTTPS port, else the server's own."""
        return self.tls.https_port if self.proxied else self.server.host_port

    @property
    def tracking_uri(self) -> str:
        return public_url(self.server.public_host, self.public_port, https=self.proxied)

    def context(self) -> StackContext:
        """What every component of this stack shares (the network is added once declared)."""
        cluster = self.cluster
        registry = None
        if cluster.swarm and cluster.image_registry:
            registry = ImageRegistry(
                server=cluster.image_registry,
                username=cluster.image_registry_username,
                password=cluster.image_registry_password,
            )
        return StackContext(
            project=self.project,
            stack=self.stack,
            log_rotation=self.log_rotation,
            protect_data=self.protect_data,
            startup_timeout_seconds=self.startup_timeout_seconds,
            engine=cluster.engine,
            # Only a swarm places workloads on labelled nodes.
            data_node_label=cluster.postgres_node_label if cluster.swarm else "",
            registry=registry,
        )
