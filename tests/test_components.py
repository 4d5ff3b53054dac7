"""Each component alone, under mocks: its children, their parent, their properties."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components.docker_common import stack_labels
from components.mlflow_image import MlflowImage
from components.mlflow_server import MlflowServer, MlflowServerArgs, allowed_hosts
from components.network import StackNetwork
from components.postgres import PostgresDatabase, PostgresDatabaseArgs
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
        "network_name": "t-net",
        "alias": "postgres",
        "database": "mlflow",
        "user": "mlflow",
        "password_length": 40,
        "memory_mb": 512,
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
        "workers": 3,
        "memory_mb": 1024,
        "extra_allowed_hosts": [],
        "cors_allowed_origins": [],
        "auth_enabled": False,
        "admin_password_length": 30,
        "protect_data": False,
        "log_max_size": "5m",
        "log_max_files": 2,
        "startup_timeout_seconds": 90,
        "labels": LABELS,
        "start_after": [],
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
        urn, password, _ = args
        children = {r.type: r for r in _children(mocks, database, urn)}
        assert set(children) == {RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME, CONTAINER}
        assert children[RANDOM_PASSWORD].inputs["length"] == 40
        assert children[RANDOM_PASSWORD].inputs["special"] is False
        container = children[CONTAINER].inputs
        assert container["user"] == "999:999"
        assert "ports" not in container
        assert container["capabilities"] == {"drops": ["ALL"]}
        assert container["securityOpts"] == ["no-new-privileges:true"]
        assert (container["memory"], container["memorySwap"]) == (512, 512)
        assert container["logDriver"] == "json-file"
        assert container["logOpts"] == {"max-size": "5m", "max-file": "2"}
        assert container["waitTimeout"] == 90
        assert container["uploads"][0]["content"] == password
        assert password not in str(container["envs"])
        assert children[VOLUME].protect is False

    return pulumi.Output.all(database.urn, database.password.result, database.container.id).apply(check)


@pulumi.runtime.test
def test_postgres_database_protects_its_volume() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    database = PostgresDatabase("t", _postgres_args(protect_data=True))

    def check(name: str) -> None:
        volume = mocks.one(VOLUME)
        assert (volume.protect, volume.retain_on_delete) == (True, True)
        assert volume.inputs["name"] == name == "t-pgdata"

    return database.volume.name.apply(check)


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
        assert [u["file"] for u in container["uploads"]] == ["/run/secrets/postgres-password"]
        assert children[CONTAINER].secret_inputs() == {"uploads"}
        assert server.admin_password is None

    return pulumi.Output.all(server.urn, server.container.id).apply(check)


@pulumi.runtime.test
def test_mlflow_server_with_auth() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    server = MlflowServer(
        "t", _server_args(auth_enabled=True, bind_address="0.0.0.0", cors_allowed_origins=["https://ui.example.com"])
    )
    assert server.admin_password is not None

    def check(args: list[Any]) -> None:
        urn, admin_password, _ = args
        passwords = [r for r in _children(mocks, server, urn) if r.type == RANDOM_PASSWORD]
        assert sorted(r.inputs["length"] for r in passwords) == [30, 64]
        container = mocks.one(CONTAINER).inputs
        command = container["command"]
        assert command[command.index("--app-name") + 1] == "basic-auth"
        assert command[command.index("--cors-allowed-origins") + 1] == "https://ui.example.com"
        assert container["ports"][0]["ip"] == "0.0.0.0"
        assert sorted(u["file"] for u in container["uploads"]) == [
            "/run/secrets/admin-password",
            "/run/secrets/flask-secret-key",
            "/run/secrets/postgres-password",
        ]
        assert "MLFLOW_AUTH_ADMIN_PASSWORD_FILE=/run/secrets/admin-password" in container["envs"]
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
