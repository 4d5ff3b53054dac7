"""Each component alone, under mocks: its children, their parent, their properties."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components.docker_common import stack_labels
from components.mlflow_image import MlflowImage
from components.mlflow_server import MlflowServer, MlflowServerArgs, allowed_hosts, database_connections
from components.network import StackNetwork
from components.postgres import PostgresDatabase, PostgresDatabaseArgs, server_command
from tests.conftest import CONTAINER, IMAGE, NETWORK, RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME
from tests.harness import EngineMocks, Registration, install

LABELS = stack_labels("mlflow-platform", "test", "unit")


def _children(mocks: EngineMocks, component: pulumi.ComponentResource, urn: str) -> list[Registration]:
    return [r for r in mocks.registrations.values() if r.parent == urn]


def _postgres_args(**changes: Any) -> PostgresDatabaseArgs:
    args: PostgresDatabaseArgs = {
        "image": "postgres:17.6",
        "container_name": "t-postgres",
        "volume_name": "t-pgdata",
        "socket_volume_name": "t-pgsocket",
        "network_name": "t-net",
        "alias": "postgres",
        "password_length": 40,
        "secrets_rotation": "",
        "memory_mb": 512,
        "client_connections": 150,
        "log_max_size": "5m",
        "log_max_files": 2,
        "protect_data": False,
        "startup_timeout_seconds": 90,
        "labels": LABELS,
    }
    args.update(changes)  # type: ignore[typeddict-item]
    return args


def _server_args(**changes: Any) -> MlflowServerArgs:
    args: MlflowServerArgs = {
        "image": "sha256:" + "a" * 64,
        "container_name": "t-mlflow",
        "artifacts_volume_name": "t-artifacts",
        "network_name": "t-net",
        "alias": "mlflow",
        "postgres_host": "postgres",
        "postgres_port": 5432,
        "database": "mlflow",
        "user": "mlflow",
        "password": pulumi.Output.secret("p" * 32),
        "public_host": "localhost",
        "bind_address": "127.0.0.1",
        "host_port": 5000,
        "publish": True,
        "workers": 3,
        "memory_mb": 1024,
        "extra_allowed_hosts": [],
        "cors_allowed_origins": [],
        "auth_enabled": False,
        "auth_cache_ttl_seconds": 45,
        "admin_password_length": 30,
        "secrets_rotation": "",
        "protect_data": False,
        "log_max_size": "5m",
        "log_max_files": 2,
        "startup_timeout_seconds": 90,
        "labels": LABELS,
        "start_after": [],
        "metrics_enabled": False,
        "telemetry_enabled": False,
        "pre_upgrade_backup": False,
    }
    args.update(changes)  # type: ignore[typeddict-item]
    return args


@pulumi.runtime.test
def test_stack_network() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    network = StackNetwork("t", {"name": "t-net", "labels": LABELS})

    def check(args: list[Any]) -> None:
        urn, name = args
        [child] = _children(mocks, network, urn)
        assert child.type == NETWORK
        assert child.inputs["name"] == name == "t-net"
        assert child.inputs["driver"] == "bridge"
        assert {"label": "com.pulumi.stack", "value": "test"} in child.inputs["labels"]

    return pulumi.Output.all(network.urn, network.name).apply(check)


@pulumi.runtime.test
def test_postgres_database() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    database = PostgresDatabase("t", _postgres_args())

    def check(args: list[Any]) -> None:
        urn, password, superuser_password, _ = args
        children = {r.type: r for r in _children(mocks, database, urn)}
        assert set(children) == {RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME, CONTAINER}
        passwords = [r for r in _children(mocks, database, urn) if r.type == RANDOM_PASSWORD]
        assert sorted(r.name for r in passwords) == ["t-password", "t-superuser-password"]
        assert {r.inputs["length"] for r in passwords} == {40}
        assert {r.inputs["special"] for r in passwords} == {False}
        container = children[CONTAINER].inputs
        assert container["user"] == "999:999"
        assert "ports" not in container
        assert container["capabilities"] == {"drops": ["ALL"]}
        assert container["securityOpts"] == ["no-new-privileges:true"]
        assert (container["memory"], container["memorySwap"]) == (512, 512)
        # Memory settings from the 512 MiB limit; room for 150 client connections and 20 spare.
        assert container["command"] == [
            "postgres",
            "-c", "max_connections=170",
            "-c", "shared_buffers=128MB",
            "-c", "effective_cache_size=384MB",
            "-c", "maintenance_work_mem=32MB",
            "-c", "fsync=on",
            "-c", "synchronous_commit=on",
        ]  # fmt: skip
        assert container["logDriver"] == "json-file"
        assert container["logOpts"] == {"max-size": "5m", "max-file": "2"}
        assert container["waitTimeout"] == 90
        # Only the superuser's password goes to Postgres; MLflow's is the bootstrap's to apply.
        assert container["uploads"][0]["content"] == superuser_password
        assert password not in str(container["uploads"])
        assert superuser_password not in str(container["envs"])
        assert "POSTGRES_USER=postgres" in container["envs"]
        assert mocks.one(VOLUME, "t-data").protect is False

    return pulumi.Output.all(
        database.urn, database.password.result, database.superuser_password.result, database.container.id
    ).apply(check)


@pulumi.runtime.test
def test_postgres_database_protects_its_volume() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    database = PostgresDatabase("t", _postgres_args(protect_data=True))

    def check(names: list[str]) -> None:
        volume = mocks.one(VOLUME, "t-data")
        assert (volume.protect, volume.retain_on_delete) == (True, True)
        assert (mocks.one(VOLUME, "t-socket").protect, mocks.one(VOLUME, "t-socket").retain_on_delete) == (True, True)
        assert volume.inputs["name"] == names[0] == "t-pgdata"

    return pulumi.Output.all(database.volume.name, database.socket_volume.name).apply(check)


@pulumi.runtime.test
def test_mlflow_image() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    image = MlflowImage(
        "t",
        {"image_name": "p/mlflow:3.17.2-t", "mlflow_version": "3.17.2", "base_image": "py:1", "use_wheelhouse": True},
    )

    def check(args: list[Any]) -> None:
        urn, image_name = args
        [child] = _children(mocks, image, urn)
        assert child.type == IMAGE
        assert child.inputs["imageName"] == "p/mlflow:3.17.2-t"
        assert child.inputs["skipPush"] is True
        assert child.inputs["build"]["args"] == {
            "BASE_IMAGE": "py:1",
            "MLFLOW_VERSION": "3.17.2",
            "USE_WHEELHOUSE": "true",
        }
        assert child.inputs["build"]["context"] == "./mlflow"
        assert child.inputs["build"]["dockerfile"] == "./mlflow/Dockerfile"
        assert image_name == "p/mlflow:3.17.2-t"

    return pulumi.Output.all(image.urn, image.image_name).apply(check)


@pulumi.runtime.test
def test_mlflow_server_without_auth() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    server = MlflowServer("t", _server_args())

    def check(args: list[Any]) -> None:
        urn, _ = args
        children = {r.type: r for r in _children(mocks, server, urn)}
        assert set(children) == {VOLUME, CONTAINER}
        container = children[CONTAINER].inputs
        assert container["user"] == "10001:10001"
        assert container["readOnly"] is True
        assert "/tmp" in container["tmpfs"]
        assert container["capabilities"] == {"drops": ["ALL"]}
        assert container["command"][container["command"].index("--workers") + 1] == "3"
        pool = [env for env in container["envs"] if env.startswith("MLFLOW_SQLALCHEMYSTORE_")]
        assert pool == ["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=5", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=5"]
        assert [u["file"] for u in container["uploads"]] == ["/run/secrets/postgres-password"]
        assert children[CONTAINER].secret_inputs() == {"uploads"}
        # No auth app, no auth config: the cache setting would mean nothing.
        assert not any(env.startswith("MLFLOW_AUTH_") for env in container["envs"])
        assert server.admin_password is None

    return pulumi.Output.all(server.urn, server.container.id).apply(check)


@pulumi.runtime.test
def test_mlflow_server_with_auth() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    server = MlflowServer(
        "t",
        _server_args(
            auth_enabled=True,
            bind_address="0.0.0.0",
            cors_allowed_origins=["https://ui.example.com", "https://nb.example.com:8443"],
        ),
    )
    assert server.admin_password is not None

    def check(args: list[Any]) -> None:
        urn, admin_password, _ = args
        passwords = [r for r in _children(mocks, server, urn) if r.type == RANDOM_PASSWORD]
        assert sorted(r.inputs["length"] for r in passwords) == [30, 64]
        container = mocks.one(CONTAINER).inputs
        command = container["command"]
        assert command[command.index("--app-name") + 1] == "basic-auth"
        # One comma-separated value, added to the server's other arguments.
        assert (
            command[command.index("--cors-allowed-origins") + 1] == "https://ui.example.com,https://nb.example.com:8443"
        )
        assert {"--serve-artifacts", "--host"} <= set(command)
        assert container["ports"][0]["ip"] == "0.0.0.0"
        assert sorted(u["file"] for u in container["uploads"]) == [
            "/run/secrets/admin-password",
            "/run/secrets/flask-secret-key",
            "/run/secrets/postgres-password",
        ]
        assert "MLFLOW_AUTH_ADMIN_PASSWORD_FILE=/run/secrets/admin-password" in container["envs"]
        assert "MLFLOW_AUTH_CACHE_TTL_SECONDS=45" in container["envs"]
        assert admin_password not in str(container["envs"]) + str(command)

    return pulumi.Output.all(server.urn, server.admin_password.result, server.container.id).apply(check)


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


@pytest.mark.parametrize(
    ("memory_mb", "clients", "expected"),
    [
        # Below what postgresMemoryMb accepts (128): the function's own floors still hold.
        (
            40,
            20,
            ["max_connections=100", "shared_buffers=16MB", "effective_cache_size=32MB", "maintenance_work_mem=16MB"],
        ),
        # Postgres's floor of 100 connections stays; tiny limits still get workable buffers.
        (
            128,
            20,
            ["max_connections=100", "shared_buffers=32MB", "effective_cache_size=96MB", "maintenance_work_mem=16MB"],
        ),
        (
            4096,
            120,
            [
                "max_connections=140",
                "shared_buffers=1024MB",
                "effective_cache_size=3072MB",
                "maintenance_work_mem=256MB",
            ],
        ),
        (
            65536,
            960,
            [
                "max_connections=980",
                "shared_buffers=16384MB",
                "effective_cache_size=49152MB",
                "maintenance_work_mem=1024MB",
            ],
        ),
    ],
)
def test_postgres_settings_follow_the_memory_limit(memory_mb: int, clients: int, expected: list[str]) -> None:
    command = server_command(memory_mb, clients)
    assert command[0] == "postgres"
    assert command[1::2] == ["-c"] * 6
    assert command[2::2] == [*expected, "fsync=on", "synchronous_commit=on"]
