"""The MLflow tracking server container, its artifact volume and its auth secrets."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import NotRequired, TypedDict
from urllib.parse import urlsplit

import pulumi
import pulumi_random as random

from components import artifact_store
from components.context import DatabaseEndpoint, StackContext
from components.mlflow_facts import (
    ADMIN_PASSWORD_FILE,
    ADMIN_USERNAME,
    ARTIFACTS_DIR,
    AUTH_APP_NAME,
    FLASK_SECRET_FILE,
    MLFLOW_ENTRYPOINT,
    MLFLOW_UID,
    MLFLOW_USER,
    SERVER_PORT,
    SPOOL_DIR,
    database_environment,
    database_files,
)
from components.secrets import generated_password
from components.settings import ArtifactSettings, ServerSettings, host_header, is_ip_address
from components.target import Runner, StackVolume
from components.task_limits import MLFLOW_TASKS
from components.workload import HealthCheck, Mount, Port, Workload, secret_file

_ROLE = "tracking-server"
# The image has no curl; its Python does the probe. /health is exempt from the
# host check and from basic auth, so the probe needs neither a Host nor a password.
HEALTH_PROBE = [
    "CMD",
    "python",
    "-c",
    f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{SERVER_PORT}/health', timeout=4)",
]
# Database connections each SQLAlchemy engine of a worker may hold (pool + overflow).
# A worker runs its Flask handlers in a thread pool of 40, but on these cores more than
# a handful of queries at once per worker only queue inside Postgres instead of here.
DB_POOL_SIZE = 5
DB_MAX_OVERFLOW = 5
# SQLAlchemy engines per worker, each with its own pool: the tracking store and the
# model registry store (MLflow keeps one engine map per store class), plus the auth
# store when basic auth is on.
_ENGINES = 2
_ENGINES_WITH_AUTH = 3
# The root file system is read-only; the server writes temporary files (artifact
# uploads it proxies, library caches) here. noexec: nothing should run from it.
_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=512m"}  # noqa: S108 - a private tmpfs, not a shared /tmp
# `mlflow server` (3.10.0 and newer) forwards SIGTERM to uvicorn, which stops
# accepting connections and finishes the requests in flight before it exits.
STOP_SIGNAL = "SIGTERM"
# Long enough for an in-flight artifact upload; Docker's default is 10 s and
# pulumi-docker's on replace or destroy 0 s (an immediate SIGKILL).
STOP_TIMEOUT_SECONDS = 60
# prometheus_client's multiprocess files (one set per uvicorn worker): on a tmpfs,
# so every start begins with empty counters, as the client library requires.
METRICS_DIR = "/run/mlflow-metrics"
# Owned by the server's user on every mount: after a restart Docker remounts it, and the
# workers must still write there.
_METRICS_TMPFS = f"rw,noexec,nosuid,nodev,size=64m,uid={MLFLOW_UID},gid={MLFLOW_UID},mode=0700"


class MlflowServerArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to."""
    image: pulumi.Input[str]
    """Image to run, by ID or digest, so a rebuilt image replaces the container."""
    database: DatabaseEndpoint
    """The tracking database and the role the server connects as."""
    server: ServerSettings
    """Where clients reach it, who may, how many workers in how much memory, what it serves."""
    artifacts: ArtifactSettings
    """Where the proxied artifacts are kept: the artifacts volume, or a bucket."""
    alias: str
    """Host name other containers on the network use for the server."""
    host_port: int
    """Port clients use: the published port, or the front door's HTTPS port."""
    public_origin: str
    """The URL clients reach the stack at (scheme://host[:port]): the origin the web UI's
    pages are served from, so the one the browser sends on every write."""
    publish: bool
    """Publish the server on bind_address:host_port; false behind the TLS proxy, the only way in then."""
    secrets_rotation: str
    """Keeper of the generated admin password and Flask secret key: a new value rotates them."""
    start_after: Sequence[pulumi.Input[pulumi.Resource]]
    """Resources that must exist first: the health-gated Postgres container, the
    database bootstrap (an Output that fails when the bootstrap did)."""
    pre_upgrade_backup: bool
    """Before a schema upgrade, prepare_db asks the backup container for a backup and waits for it."""
    replicas: NotRequired[int]
    """Server tasks on a swarm (mlflowReplicas); one container on a single host. Default 1."""


def database_connections(workers: int, auth_enabled: bool) -> int:
    """The most connections the server's workers open at once: what Postgres must allow.

    MLflow's default pool (5 + 10 overflow per engine) lets 4 workers with auth open 180,
    far beyond Postgres's default max_connections of 100: a burst would be refused.
    """
    engines = _ENGINES_WITH_AUTH if auth_enabled else _ENGINES
    return workers * engines * (DB_POOL_SIZE + DB_MAX_OVERFLOW)


def allowed_hosts(public_host: str, host_port: int, bind_address: str, alias: str, extra: Sequence[str]) -> list[str]:
    """Every Host header clients send. `--allowed-hosts` replaces MLflow's defaults,
    so a name left out here is answered with 403 (the in-network alias included)."""
    hosts = [host_header(public_host), host_header(public_host, host_port), alias, f"{alias}:{SERVER_PORT}"]
    if ipaddress.ip_address(bind_address).is_loopback:
        # Published on loopback only: whoever reaches it is on this machine, and
        # may well type 127.0.0.1 instead of the public host.
        hosts += ["localhost", f"localhost:{host_port}", "127.0.0.1", f"127.0.0.1:{host_port}"]
        if ipaddress.ip_address(bind_address).version == 6:
            hosts += ["[::1]", f"[::1]:{host_port}"]
    hosts += extra
    return list(dict.fromkeys(hosts))


_DEFAULT_PORTS = {"http": 80, "https": 443}


def browser_origin(url: str) -> str:
    """The `Origin` a browser sends from pages under `url`, as the URL standard serialises
    it: scheme and host in lower case, an IPv6 address compressed and in brackets, the
    scheme's default port left out. MLflow compares an `Origin` with each allowed origin
    as an exact string (mlflow/server/security_utils.py, `should_block_cors_request`), so
    `https://Host:443` would never match what a browser sends for it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_ip_address(host):
        host = ipaddress.ip_address(host).compressed
    port = parts.port if parts.port != _DEFAULT_PORTS.get(parts.scheme) else None
    return f"{parts.scheme.lower()}://{host_header(host, port)}"


def allowed_origins(public_origin: str, extra: Sequence[str]) -> list[str]:
    """Every origin whose pages may write through the API: the stack's own first, then `corsAllowedOrigins`.

    MLflow 3.x answers a POST, PUT, PATCH or DELETE to /api/ or /ajax-api/ with 403
    "Cross-origin request blocked" unless its `Origin` is a localhost one (any scheme
    and port whose host is localhost, 127.0.0.1 or ::1) or among `--cors-allowed-origins`
    (`should_block_cors_request`). The host check (`--allowed-hosts`) does not enter into
    it: MLflow never treats a request whose Origin matches its Host as same-origin. So
    the web UI, which sends its own origin on every write, could not create an experiment
    through the front door. The stack's own origin is listed always, even where MLflow's
    localhost exemption would already let it through (dev on localhost): the rule then
    does not hang on that exemption, which matches the host name alone and may narrow in
    a release, and a dev stack with another `publicHost` is covered by the same line.
    Listing it costs nothing: the localhost origins stay exempt whatever the list holds.
    """
    return list(dict.fromkeys(browser_origin(origin) for origin in [public_origin, *extra]))


class MlflowServer(pulumi.ComponentResource):
    """`mlflow server` with proxied artifacts, published on one host address."""

    artifacts_volume: StackVolume
    admin_password: random.RandomPassword | None
    flask_secret_key: random.RandomPassword | None
    container: Runner
    command: list[str]
    workload_name: str
    """The engine's name for what runs it: the container, or the service whose tasks swarm's DNS lists."""

    def __init__(self, name: str, args: MlflowServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:server:MlflowServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        stack, database, server, artifacts = args["stack"], args["database"], args["server"], args["artifacts"]
        self.artifacts_volume = stack.target.volume(self, f"{name}-artifacts", stack.name("artifacts"), _ROLE)

        envs = [
            *database_environment(database),
            # HOME is /nonexistent and the root file system read-only: caches go to tmpfs.
            "HOME=/tmp",
            "TMPDIR=/tmp",
            # MLflow 3.x starts a job runner (seven huey consumers, ~200 MB each) for
            # GenAI jobs a tracking server does not run; inside 1.5 GiB it got the
            # container OOM-killed in a loop. Off, the server peaks near 350 MiB.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
            # Bounded per engine, so Postgres's max_connections (database_connections) covers every worker.
            f"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE={DB_POOL_SIZE}",
            f"MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW={DB_MAX_OVERFLOW}",
        ]
        if not server.telemetry_enabled:
            # MLflow 3 reports usage to its maintainers unless told not to.
            envs.append("MLFLOW_DISABLE_TELEMETRY=true")
        if args["pre_upgrade_backup"]:
            envs += [
                "MLFLOW_PRE_UPGRADE_BACKUP=true",
                # Part of the start: it must end within the wait for a healthy container.
                f"MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT={stack.startup_timeout_seconds}",
            ]
        tmpfs = dict(_TMPFS)
        if server.metrics_enabled:
            tmpfs[METRICS_DIR] = _METRICS_TMPFS
            envs.append(f"PROMETHEUS_MULTIPROC_DIR={METRICS_DIR}")
        files = database_files(database)
        if artifacts.in_bucket:
            envs += [*artifact_store.environment(artifacts), f"MLFLOW_SPOOL_DIR={SPOOL_DIR}"]
            files += artifact_store.files(artifacts)
        self.admin_password = None
        self.flask_secret_key = None
        if server.auth_enabled:
            # prepare_db sets it as the admin's password on every start.
            self.admin_password = generated_password(
                f"{name}-admin-password", server.admin_password_length, args["secrets_rotation"], child
            )
            # Signs the Flask session and CSRF tokens of the auth app; must be the
            # same in every worker and survive restarts, so it is generated once here.
            self.flask_secret_key = generated_password(
                f"{name}-flask-secret-key", 64, args["secrets_rotation"], child, mixed=False
            )
            envs += [
                f"MLFLOW_AUTH_ADMIN_USERNAME={ADMIN_USERNAME}",
                f"MLFLOW_AUTH_ADMIN_PASSWORD_FILE={ADMIN_PASSWORD_FILE}",
                f"MLFLOW_FLASK_SERVER_SECRET_KEY_FILE={FLASK_SECRET_FILE}",
                # prepare_db.py writes it into the basic-auth config (auth_cache_ttl_seconds).
                f"MLFLOW_AUTH_CACHE_TTL_SECONDS={server.auth_cache_ttl_seconds}",
            ]
            files += [
                secret_file(ADMIN_PASSWORD_FILE, self.admin_password.result),
                secret_file(FLASK_SECRET_FILE, self.flask_secret_key.result),
            ]

        hosts = allowed_hosts(
            server.public_host, args["host_port"], server.bind_address, args["alias"], server.allowed_hosts
        )
        self.command = [
            "--host", "0.0.0.0",
            "--port", str(SERVER_PORT),
            "--workers", str(server.workers),
            # Clients upload and download artifacts through the server, which
            # stores them in the volume or the bucket: no client needs a path on
            # this host or the store's credentials.
            "--serve-artifacts",
            "--artifacts-destination", artifacts.destination if artifacts.in_bucket else ARTIFACTS_DIR,
            "--allowed-hosts", ",".join(hosts),
            "--cors-allowed-origins", ",".join(allowed_origins(args["public_origin"], server.cors_allowed_origins)),
        ]  # fmt: skip
        if server.auth_enabled:
            self.command += ["--app-name", AUTH_APP_NAME]
        if server.metrics_enabled:
            # /metrics is not among basic auth's exempt paths: with auth on, a scraper
            # needs credentials like any client.
            self.command += ["--expose-prometheus", METRICS_DIR]

        self.workload_name = stack.name("mlflow")
        workload = Workload(
            name=self.workload_name,
            role=_ROLE,
            image=args["image"],
            user=MLFLOW_USER,
            max_tasks=MLFLOW_TASKS,
            command=self.command,
            environment=envs,
            files=files,
            # With a bucket the volume stays declared (backups keep what it held, and switching
            # back finds it) but is not mounted: the server has no local place to keep artifacts,
            # only a scratch volume, gone with the container, for those in transit.
            mounts=[Mount(SPOOL_DIR)] if artifacts.in_bucket else [Mount(ARTIFACTS_DIR, self.artifacts_volume.name)],
            ports=[Port(SERVER_PORT, args["host_port"], server.bind_address)] if args["publish"] else [],
            network_aliases=[args["alias"]],
            # Before Docker 25 (no start_interval) the first probe runs an interval after the start,
            # so the interval is what every `up` waits beyond the server's own start; 12 failed
            # probes (a minute) still make a running server unhealthy.
            health=HealthCheck(test=HEALTH_PROBE, interval="5s", timeout="5s", retries=12, start_period="60s"),
            tmpfs=tmpfs,
            memory_mb=server.memory_mb,
            stop_signal=STOP_SIGNAL,
            stop_grace_seconds=STOP_TIMEOUT_SECONDS,
            replicas=args.get("replicas", 1),
            # A new release may migrate the schema, which the old release's servers must not keep
            # writing to: on a cluster every old task stops, then the new ones start (one migrates,
            # the others wait for it: prepare_db's lock), instead of a rolling update.
            stop_all_on_change=server.mlflow_version,
            image_entrypoint=[MLFLOW_ENTRYPOINT],
        )
        # Nothing flows from the Postgres container to this one, yet the server must
        # start only once Postgres is healthy and the bootstrap has put the secrets in force.
        self.container = stack.target.service(self, f"{name}-container", workload, depends_on=args["start_after"])
        self.register_outputs(
            {"container_name": self.container.name, "artifacts_volume_name": self.artifacts_volume.name}
        )
