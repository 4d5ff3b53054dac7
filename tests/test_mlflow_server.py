"""MlflowServer: the tracking server's container, artifacts volume and auth secrets, alone and in every stack."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pulumi_docker as docker
import pytest

from components.mlflow_server import (
    MlflowServer,
    MlflowServerArgs,
    allowed_hosts,
    allowed_origins,
    browser_origin,
    database_connections,
)
from components.settings import ServerSettings
from tests.conftest import CONTAINER, RANDOM_PASSWORD, VOLUME
from tests.expected import (
    BUCKET_ARTIFACTS,
    BUCKET_ENVIRONMENT,
    DB_PASSWORD,
    MLFLOW_IMAGE,
    PLATFORM_DATABASE,
    STACKS,
    STARTUP_TIMEOUT,
    STORE_SECRET_KEY,
    UNIT,
    UNIT_DATABASE,
    UNIT_PASSWORD,
    UNIT_SERVER,
    VOLUME_ARTIFACTS,
    Database,
    SecretOf,
    bucket_uploads,
    built,
    children,
    containers,
    declared_volume,
    docker_name,
    hardened,
    mount,
    network_name,
    on_network,
    passwords_of,
    registered_outputs,
    resolve,
    secret_upload,
    service,
    stopped_with,
    strong_password,
    unit_context,
    unit_endpoint,
    volumes_of,
)
from tests.harness import declaration

IMAGE_ID = "sha256:" + "a" * 64
ADMIN_PASSWORD = SecretOf("server-admin-password")
FLASK_SECRET_KEY = SecretOf("server-flask-secret-key")
TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=512m"}
# prometheus_client's multiprocess files: the server's user's own, on every mount.
METRICS_TMPFS = {**TMPFS, "/run/mlflow-metrics": "rw,noexec,nosuid,nodev,size=64m,uid=10001,gid=10001,mode=0700"}
AUTH_APP = ["--app-name", "platform-basic-auth"]
METRICS = ["--expose-prometheus", "/run/mlflow-metrics"]
METRICS_ENV = ["PROMETHEUS_MULTIPROC_DIR=/run/mlflow-metrics"]
NO_TELEMETRY = ["MLFLOW_DISABLE_TELEMETRY=true"]


def _command(workers: int, hosts: str, origins: str, *flags: str, destination: str = "/mlflow/artifacts") -> list[str]:
    return [
        "--host", "0.0.0.0",
        "--port", "5000",
        "--workers", str(workers),
        # Artifacts through the server, into its volume: no client needs a path on this host.
        "--serve-artifacts",
        "--artifacts-destination", destination,
        "--allowed-hosts", hosts,
        # The stack's own origin first: the web UI sends it on every write.
        "--cors-allowed-origins", origins,
        *flags,
    ]  # fmt: skip


def _envs(database: Database, *extra: str) -> list[str]:
    return [
        *database.environment(),
        # HOME is /nonexistent and the root read-only: caches go to the tmpfs.
        "HOME=/tmp",
        "TMPDIR=/tmp",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
        # Bounded per engine, so Postgres's max_connections covers every worker.
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=5",
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=5",
        *extra,
    ]


def _pre_upgrade_backup(stack: str) -> list[str]:
    # Part of the start: it must end within the wait for a healthy container.
    return ["MLFLOW_PRE_UPGRADE_BACKUP=true", f"MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT={STARTUP_TIMEOUT[stack]}"]


def _auth_envs(cache_ttl_seconds: int) -> list[str]:
    return [
        "MLFLOW_AUTH_ADMIN_USERNAME=admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE=/run/secrets/admin-password",
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE=/run/secrets/flask-secret-key",
        f"MLFLOW_AUTH_CACHE_TTL_SECONDS={cache_ttl_seconds}",
    ]


def _uploads(password: object, *auth_secrets: object) -> list[dict[str, Any]]:
    """The database password; with auth, the admin's password and the Flask secret key."""
    files = ["/run/secrets/postgres-password", "/run/secrets/admin-password", "/run/secrets/flask-secret-key"]
    contents = [password, *auth_secrets]
    return [
        secret_upload(file, content, "10001") for file, content in zip(files[: len(contents)], contents, strict=True)
    ]


def _published(ip: str, port: int) -> list[dict[str, Any]]:
    return [{"internal": 5000, "external": port, "ip": ip, "protocol": "tcp"}]


def container(
    stack: str,
    *,
    memory_mb: int,
    command: list[str],
    envs: list[str],
    uploads: list[dict[str, Any]],
    ports: list[dict[str, Any]],
    tmpfs: dict[str, str] = TMPFS,
    image: object = MLFLOW_IMAGE,
    alias: str = "mlflow",
    database_network: bool = False,
    artifacts_volume: bool = True,
) -> dict[str, Any]:
    networks = on_network(stack, alias)
    if database_network:
        # Postgres is on the internal network alone; the front one keeps the proxy's way in.
        networks["networksAdvanced"].append({"name": f"{network_name(stack)}-db", "aliases": [alias]})
    return {
        **hardened(stack, "tracking-server", memory_mb, 4096),
        **service(stack),
        # uvicorn finishes the requests in flight; long enough for an artifact upload.
        **stopped_with("SIGTERM", 60),
        **networks,
        "name": docker_name(stack, "mlflow"),
        # By digest (the local image ID): a rebuilt image replaces the container.
        "image": image,
        "user": "10001:10001",
        "command": command,
        "envs": envs,
        "uploads": uploads,
        "ports": ports,
        "readOnly": True,
        "tmpfs": tmpfs,
        "volumes": [
            mount(stack, "artifacts", "/mlflow/artifacts") if artifacts_volume else {"containerPath": "/mlflow/spool"},
            {"containerPath": "/run/secrets"},
        ],
        # The image has no curl; /health needs neither a Host nor a password.
        "healthcheck": {
            "tests": [
                "CMD",
                "python",
                "-c",
                "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)",
            ],
            "interval": "5s",
            "timeout": "5s",
            "retries": 12,
            "startPeriod": "60s",
        },
    }


def _dev(stack: str) -> dict[str, Any]:
    # One person on loopback: no auth, published on 127.0.0.1:5000, and whatever they type as the host.
    return {
        "memory_mb": 1536,
        "command": _command(
            4, "localhost,localhost:5000,mlflow,mlflow:5000,127.0.0.1,127.0.0.1:5000", "http://localhost:5000"
        ),
        "envs": _envs(PLATFORM_DATABASE, *NO_TELEMETRY, *_pre_upgrade_backup(stack)),
        "uploads": _uploads(DB_PASSWORD),
        "ports": _published("127.0.0.1", 5000),
        "database_network": True,
    }


def _staging(stack: str) -> dict[str, Any]:
    # Shared: behind the proxy (nothing published; the public host on 443), basic auth, metrics.
    return {
        **_dev(stack),
        "memory_mb": 2048,
        "command": _command(
            2,
            "mlflow.staging.example.internal,mlflow.staging.example.internal:443,mlflow,mlflow:5000",
            # The front door's origin, on 443: no port, as a browser writes it.
            "https://mlflow.staging.example.internal",
            *AUTH_APP,
            *METRICS,
        ),
        "envs": _envs(PLATFORM_DATABASE, *NO_TELEMETRY, *_pre_upgrade_backup(stack), *METRICS_ENV, *_auth_envs(30)),
        "uploads": _uploads(DB_PASSWORD, ADMIN_PASSWORD, FLASK_SECRET_KEY),
        "ports": [],
        "tmpfs": METRICS_TMPFS,
    }


def _prod(stack: str) -> dict[str, Any]:
    return {
        **_staging(stack),
        "memory_mb": 4096,
        "command": _command(
            4,
            "mlflow.example.internal,mlflow.example.internal:443,mlflow,mlflow:5000",
            "https://mlflow.example.internal",
            *AUTH_APP,
            *METRICS,
        ),
    }


STACK_CONTAINERS = {"dev": _dev, "staging": _staging, "prod": _prod}


# Changes to these go to the server's settings; the rest (host_port included) are the component's own args.
_SERVER_FIELDS = {field.name for field in dataclasses.fields(ServerSettings)} - {"host_port"}


def _args(**changes: Any) -> MlflowServerArgs:
    server = dataclasses.replace(UNIT_SERVER, **{k: v for k, v in changes.items() if k in _SERVER_FIELDS})
    args: MlflowServerArgs = {
        "stack": unit_context(),
        "image": IMAGE_ID,
        "database": unit_endpoint(),
        "server": server,
        "artifacts": VOLUME_ARTIFACTS,
        "alias": "tracking",
        "host_port": 5000,
        "public_origin": "http://localhost:5000",
        "publish": True,
        "secrets_rotation": "",
        "start_after": [],
        "pre_upgrade_backup": False,
    }
    return {**args, **{k: v for k, v in changes.items() if k not in _SERVER_FIELDS}}  # type: ignore[typeddict-item]


def test_the_server_alone_without_auth() -> None:
    def build() -> MlflowServer:
        before = docker.Container("mlflow-postgres-container", image="postgres")
        return MlflowServer("mlflow-server", _args(start_after=[before]))

    mocks, server = built(build)
    assert children(mocks, "mlflow-server") == {"mlflow-server-artifacts": VOLUME, "mlflow-server-container": CONTAINER}
    # No auth app, no auth secrets: the cache setting would mean nothing.
    assert (server.admin_password, server.flask_secret_key) == (None, None)
    registration = mocks.one(CONTAINER, "server-container")
    assert registration.inputs == container(
        UNIT,
        memory_mb=1024,
        command=_command(
            3, "localhost,localhost:5000,tracking,tracking:5000,127.0.0.1,127.0.0.1:5000", "http://localhost:5000"
        ),
        envs=_envs(UNIT_DATABASE, *NO_TELEMETRY),
        uploads=_uploads(UNIT_PASSWORD),
        ports=_published("127.0.0.1", 5000),
        image=IMAGE_ID,
        alias="tracking",
    )
    assert server.command == registration.inputs["command"]
    assert registration.secret_inputs() == {"uploads"}
    # Nothing flows from what it starts after: the dependency is declared.
    assert sorted(registration.dependencies) == sorted(
        [mocks.one(CONTAINER, "postgres-container").urn, mocks.one(VOLUME, "server-artifacts").urn]
    )
    assert volumes_of(mocks, "mlflow-server-artifacts") == {
        "mlflow-server-artifacts": declared_volume(UNIT, "artifacts", "tracking-server")
    }
    assert registered_outputs(mocks, "mlflow-server") == {
        "container_name": "mlflow-platform-unit-mlflow",
        "artifacts_volume_name": "mlflow-platform-unit-artifacts",
    }


def test_the_server_alone_with_auth_cors_metrics_and_telemetry() -> None:
    mocks, _ = built(
        lambda: MlflowServer(
            "mlflow-server",
            _args(
                auth_enabled=True,
                secrets_rotation="2026-11-27",
                bind_address="0.0.0.0",
                cors_allowed_origins=["https://ui.example.com", "https://nb.example.com:8443"],
                metrics_enabled=True,
                telemetry_enabled=True,
                pre_upgrade_backup=True,
            ),
        )
    )
    assert children(mocks, "mlflow-server") == {
        "mlflow-server-artifacts": VOLUME,
        "mlflow-server-admin-password": RANDOM_PASSWORD,
        "mlflow-server-flask-secret-key": RANDOM_PASSWORD,
        "mlflow-server-container": CONTAINER,
    }
    rotation = {"secretsRotation": "2026-11-27"}
    assert passwords_of(mocks) == {
        "mlflow-server-admin-password": strong_password(30, rotation),
        # Signs the auth app's sessions: the same in every worker, generated once.
        "mlflow-server-flask-secret-key": {"length": 64, "special": False, "keepers": rotation},
    }
    assert mocks.one(CONTAINER).inputs == resolve(
        container(
            UNIT,
            memory_mb=1024,
            # The CORS origins as one value, the stack's own first; no loopback names on 0.0.0.0.
            command=_command(
                3,
                "localhost,localhost:5000,tracking,tracking:5000",
                "http://localhost:5000,https://ui.example.com,https://nb.example.com:8443",
                *AUTH_APP,
                *METRICS,
            ),
            envs=_envs(UNIT_DATABASE, *_pre_upgrade_backup(UNIT), *METRICS_ENV, *_auth_envs(45)),
            uploads=_uploads(UNIT_PASSWORD, ADMIN_PASSWORD, FLASK_SECRET_KEY),
            ports=_published("0.0.0.0", 5000),
            tmpfs=METRICS_TMPFS,
            image=IMAGE_ID,
            alias="tracking",
        ),
        mocks,
    )


def test_the_server_alone_behind_the_proxy_publishes_nothing() -> None:
    mocks, _ = built(
        lambda: MlflowServer(
            "mlflow-server",
            _args(publish=False, host_port=443, public_host="m.example", public_origin="https://m.example"),
        )
    )
    inputs = mocks.one(CONTAINER).inputs
    assert inputs["ports"] == []
    assert inputs["command"] == _command(
        3,
        "m.example,m.example:443,tracking,tracking:5000,localhost,localhost:443,127.0.0.1,127.0.0.1:443",
        "https://m.example",
    )


@pytest.mark.parametrize("stack", STACKS)
def test_the_server_of_every_stack(stack: str) -> None:
    mocks = declaration(stack).mocks
    server = containers(mocks)[docker_name(stack, "mlflow")]
    assert server.inputs == resolve(container(stack, **STACK_CONTAINERS[stack](stack)), mocks)
    assert volumes_of(mocks, "mlflow-server-artifacts") == {
        "mlflow-server-artifacts": declared_volume(stack, "artifacts", "tracking-server")
    }
    auth = {
        "mlflow-server-admin-password": strong_password(32),
        "mlflow-server-flask-secret-key": {"length": 64, "special": False},
    }
    passwords = passwords_of(mocks)
    assert {name: passwords[name] for name in auth if name in passwords} == ({} if stack == "dev" else auth)


def test_the_published_port_and_public_host_reach_the_server() -> None:
    found = declaration("dev", {"hostPort": 15000, "publicHost": "mlflow.lab.internal"})
    hosts = (
        "mlflow.lab.internal,mlflow.lab.internal:15000,mlflow,mlflow:5000,"
        "localhost,localhost:15000,127.0.0.1,127.0.0.1:15000"
    )
    # Not a localhost origin, which MLflow would let write anyway: without it the UI could not write.
    origins = "http://mlflow.lab.internal:15000"
    expected = {**_dev("dev"), "command": _command(4, hosts, origins), "ports": _published("127.0.0.1", 15000)}
    assert containers(found.mocks)["mlflow-platform-dev-mlflow"].inputs == resolve(
        container("dev", **expected), found.mocks
    )
    assert found.values["tracking_uri"] == "http://mlflow.lab.internal:15000"


# Workers and the flags after the origins, per stack as committed.
_STACK_SHAPE: dict[str, tuple[int, list[str]]] = {
    "dev": (4, []),
    "staging": (2, AUTH_APP + METRICS),
    "prod": (4, AUTH_APP + METRICS),
}


@pytest.mark.parametrize(
    ("stack", "overrides", "hosts", "origins"),
    [
        # The front door on another port: a browser names it in the origin.
        (
            "staging",
            {"httpsPort": 8443},
            "mlflow.staging.example.internal,mlflow.staging.example.internal:8443,mlflow,mlflow:5000",
            "https://mlflow.staging.example.internal:8443",
        ),
        # An IPv6 public host: in brackets, as in the Host header and the URL.
        (
            "prod",
            {"publicHost": "2001:DB8::10"},
            "[2001:db8::10],[2001:db8::10]:443,mlflow,mlflow:5000",
            "https://[2001:db8::10]",
        ),
        # corsAllowedOrigins after the stack's own, lower case, each once, default ports left
        # out (a browser never sends https://...:443, and MLflow compares exact strings).
        (
            "prod",
            {
                "corsAllowedOrigins": [
                    "https://UI.example.com",
                    "https://mlflow.example.internal",
                    "https://nb.example.com:443",
                    "http://localhost:3000",
                    "https://ui.example.com",
                ]
            },
            "mlflow.example.internal,mlflow.example.internal:443,mlflow,mlflow:5000",
            "https://mlflow.example.internal,https://ui.example.com,https://nb.example.com,http://localhost:3000",
        ),
        # Another port is another origin: both stay.
        (
            "staging",
            {"httpsPort": 8443, "corsAllowedOrigins": ["https://mlflow.staging.example.internal"]},
            "mlflow.staging.example.internal,mlflow.staging.example.internal:8443,mlflow,mlflow:5000",
            "https://mlflow.staging.example.internal:8443,https://mlflow.staging.example.internal",
        ),
        # Unproxied: plain HTTP with the published port; listed though MLflow exempts localhost.
        (
            "dev",
            {"corsAllowedOrigins": ["http://localhost:5000", "https://nb.example.com"]},
            "localhost,localhost:5000,mlflow,mlflow:5000,127.0.0.1,127.0.0.1:5000",
            "http://localhost:5000,https://nb.example.com",
        ),
        (
            "dev",
            {"publicHost": "::1", "bindAddress": "::1", "hostPort": 5010},
            "[::1],[::1]:5010,mlflow,mlflow:5000,localhost,localhost:5010,127.0.0.1,127.0.0.1:5010",
            "http://[::1]:5010",
        ),
    ],
)
def test_the_public_origin_is_always_allowed(stack: str, overrides: dict[str, Any], hosts: str, origins: str) -> None:
    found = declaration(stack, overrides)
    workers, flags = _STACK_SHAPE[stack]
    command = containers(found.mocks)[docker_name(stack, "mlflow")].inputs["command"]
    assert command == _command(workers, hosts, origins, *flags)
    # The first origin is the URL clients are given: the page the UI is served from.
    assert browser_origin(str(found.values["tracking_uri"])) == origins.split(",")[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://mlflow.example.internal", "https://mlflow.example.internal"),
        ("https://mlflow.example.internal:443", "https://mlflow.example.internal"),
        ("https://mlflow.example.internal:8443", "https://mlflow.example.internal:8443"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("http://mlflow.lab:80", "http://mlflow.lab"),
        ("http://mlflow.lab:443", "http://mlflow.lab:443"),
        ("HTTPS://ML.Example.COM:08443", "https://ml.example.com:8443"),
        # IPv6 as the URL standard serialises it: compressed, lower case, in brackets.
        ("https://[2001:DB8:0:0::10]", "https://[2001:db8::10]"),
        ("http://[::1]:5000", "http://[::1]:5000"),
        ("https://10.0.0.5:443", "https://10.0.0.5"),
        # MLflow's own wildcard patterns pass unchanged.
        ("https://*.example.com", "https://*.example.com"),
    ],
)
def test_browser_origin_is_what_a_browser_sends(url: str, expected: str) -> None:
    assert browser_origin(url) == expected


def test_allowed_origins_put_the_stack_first_once() -> None:
    assert allowed_origins("https://m.example", []) == ["https://m.example"]
    assert allowed_origins(
        "https://m.example", ["https://a.example", "https://m.example:443", "https://a.example"]
    ) == [
        "https://m.example",
        "https://a.example",
    ]


@pytest.mark.parametrize(
    ("public", "bind", "extra", "expected"),
    [
        (
            "mlflow.example.com",
            "127.0.0.1",
            [],
            "mlflow.example.com mlflow.example.com:8080 mlflow mlflow:5000"
            " localhost localhost:8080 127.0.0.1 127.0.0.1:8080",
        ),
        (
            "mlflow.example.com",
            "0.0.0.0",
            ["10.0.0.5:8080"],
            "mlflow.example.com mlflow.example.com:8080 mlflow mlflow:5000 10.0.0.5:8080",
        ),
        # A Host header brackets IPv6; on an IPv6 loopback, [::1] is what a local client sends.
        (
            "::1",
            "::1",
            [],
            "[::1] [::1]:8080 mlflow mlflow:5000 localhost localhost:8080 127.0.0.1 127.0.0.1:8080",
        ),
        (
            "2001:db8::5",
            "::",
            ["[2001:db8::6]:8080"],
            "[2001:db8::5] [2001:db8::5]:8080 mlflow mlflow:5000 [2001:db8::6]:8080",
        ),
        # Bound to IPv6 loopback: its bracketed form too.
        (
            "localhost",
            "::1",
            [],
            "localhost localhost:8080 mlflow mlflow:5000 127.0.0.1 127.0.0.1:8080 [::1] [::1]:8080",
        ),
        # Names given twice are listed once, in their first place.
        (
            "localhost",
            "127.0.0.1",
            ["mlflow", "extra:1"],
            "localhost localhost:8080 mlflow mlflow:5000 127.0.0.1 127.0.0.1:8080 extra:1",
        ),
    ],
)
def test_allowed_hosts_lists_every_name_clients_use(public: str, bind: str, extra: list[str], expected: str) -> None:
    assert allowed_hosts(public, 8080, bind, "mlflow", extra) == expected.split()


@pytest.mark.parametrize(
    ("workers", "auth", "expected"),
    # Per worker: tracking and registry engines (plus auth's), 5 pooled + 5 overflow each.
    [(1, False, 20), (2, True, 60), (4, True, 120), (32, True, 960)],
)
def test_database_connections_cover_every_worker_engine(workers: int, auth: bool, expected: int) -> None:
    assert database_connections(workers, auth) == expected


def test_with_a_bucket_the_server_proxies_to_it_with_its_key_in_a_file_and_no_artifacts_mount() -> None:
    mocks, server = built(lambda: MlflowServer("mlflow-server", _args(artifacts=BUCKET_ARTIFACTS)))
    # The volume stays declared (backups and a switch back find it); the server does not mount it.
    assert children(mocks, "mlflow-server") == {"mlflow-server-artifacts": VOLUME, "mlflow-server-container": CONTAINER}
    registration = mocks.one(CONTAINER, "server-container")
    assert registration.inputs == container(
        UNIT,
        memory_mb=1024,
        command=_command(
            3,
            "localhost,localhost:5000,tracking,tracking:5000,127.0.0.1,127.0.0.1:5000",
            "http://localhost:5000",
            destination="s3://ml-artifacts/teams/unit",
        ),
        envs=_envs(UNIT_DATABASE, *NO_TELEMETRY, *BUCKET_ENVIRONMENT, "MLFLOW_SPOOL_DIR=/mlflow/spool"),
        uploads=[*_uploads(UNIT_PASSWORD), *bucket_uploads("10001")],
        ports=_published("127.0.0.1", 5000),
        image=IMAGE_ID,
        alias="tracking",
        artifacts_volume=False,
    )
    assert server.command == registration.inputs["command"]
    # The key pair travels as a secret; no environment entry, argument or label holds it.
    assert registration.secret_inputs() == {"uploads"}
    visible = json.dumps({k: v for k, v in registration.inputs.items() if k != "uploads"})
    assert STORE_SECRET_KEY not in visible


def test_an_instance_role_uploads_no_credentials_file() -> None:
    role = dataclasses.replace(BUCKET_ARTIFACTS, access_key_id="", secret_access_key="", ca_certificate="")
    mocks, _ = built(lambda: MlflowServer("mlflow-server", _args(artifacts=role)))
    registration = mocks.one(CONTAINER, "server-container")
    assert registration.inputs["uploads"] == _uploads(UNIT_PASSWORD)
    assert registration.inputs["envs"] == _envs(
        UNIT_DATABASE,
        *NO_TELEMETRY,
        "MLFLOW_ARTIFACTS_DESTINATION=s3://ml-artifacts/teams/unit",
        "MLFLOW_S3_ENDPOINT_URL=https://s3.example.internal:9000",
        "AWS_DEFAULT_REGION=eu-central-1",
        "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE=path",
        "MLFLOW_SPOOL_DIR=/mlflow/spool",
    )
