"""MlflowPlatform's wiring: the component tree, what each component registers, what each container waits for,
and what the platform hands its components (one rotation, distinct secrets and images, a failed bootstrap)."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from tests.conftest import (
    CONTAINER,
    IMAGE,
    NETWORK,
    RANDOM_PASSWORD,
    REMOTE_IMAGE,
    TLS_PRIVATE_KEY,
    TLS_SELF_SIGNED_CERT,
    VOLUME,
)
from tests.expected import (
    CONFIGURATIONS,
    DB_PASSWORD,
    MLFLOW_IMAGE,
    POSTGRES_IMAGE,
    SecretOf,
    containers,
    docker_name,
    mode_overrides,
    network_name,
    resolve,
)
from tests.harness import EngineMocks, declaration, run_program
from tools.local_deploy.inputs import TLS_CERT_REQUEST, TLS_LOCALLY_SIGNED_CERT

PLATFORM = "mlflow-platform:stack:MlflowPlatform"
PROXY = "mlflow-platform:proxy:TlsProxy"
INTERNAL_CA = "mlflow-platform:tls:InternalCa"

# Every resource of a shared stack in tlsMode internal (the one with the most): its type and its parent's name.
SHARED_TREE = {
    "mlflow": (PLATFORM, "mlflow-platform-{stack}"),
    "mlflow-network": ("mlflow-platform:network:StackNetwork", "mlflow"),
    "mlflow-postgres": ("mlflow-platform:database:PostgresDatabase", "mlflow"),
    "mlflow-image": ("mlflow-platform:image:MlflowImage", "mlflow"),
    "mlflow-db-bootstrap": ("mlflow-platform:database:DatabaseBootstrap", "mlflow"),
    "mlflow-server": ("mlflow-platform:server:MlflowServer", "mlflow"),
    "mlflow-backups": ("mlflow-platform:backups:BackupService", "mlflow"),
    "mlflow-gc": ("mlflow-platform:gc:GarbageCollector", "mlflow"),
    "mlflow-proxy": (PROXY, "mlflow"),
    # The proxy owns the CA that issues its certificate (aliased from when the platform did).
    "mlflow-ca": (INTERNAL_CA, "mlflow-proxy"),
    "mlflow-network-network": (NETWORK, "mlflow-network"),
    # Internal: Postgres is on it alone, with the workloads that connect to it.
    "mlflow-network-database": (NETWORK, "mlflow-network"),
    "mlflow-postgres-password": (RANDOM_PASSWORD, "mlflow-postgres"),
    "mlflow-postgres-superuser-password": (RANDOM_PASSWORD, "mlflow-postgres"),
    "mlflow-postgres-image": (REMOTE_IMAGE, "mlflow-postgres"),
    "mlflow-postgres-data": (VOLUME, "mlflow-postgres"),
    "mlflow-postgres-socket": (VOLUME, "mlflow-postgres"),
    "mlflow-postgres-container": (CONTAINER, "mlflow-postgres"),
    "mlflow-image-image": (IMAGE, "mlflow-image"),
    "mlflow-db-bootstrap-container": (CONTAINER, "mlflow-db-bootstrap"),
    "mlflow-server-artifacts": (VOLUME, "mlflow-server"),
    "mlflow-server-admin-password": (RANDOM_PASSWORD, "mlflow-server"),
    "mlflow-server-flask-secret-key": (RANDOM_PASSWORD, "mlflow-server"),
    "mlflow-server-container": (CONTAINER, "mlflow-server"),
    "mlflow-backups-volume": (VOLUME, "mlflow-backups"),
    "mlflow-backups-container": (CONTAINER, "mlflow-backups"),
    "mlflow-gc-container": (CONTAINER, "mlflow-gc"),
    "mlflow-ca-key": (TLS_PRIVATE_KEY, "mlflow-ca"),
    "mlflow-ca-root": (TLS_SELF_SIGNED_CERT, "mlflow-ca"),
    # The server certificate, issued by the root in Pulumi: all the proxy is given.
    "mlflow-ca-server-key": (TLS_PRIVATE_KEY, "mlflow-ca"),
    "mlflow-ca-server-request": (TLS_CERT_REQUEST, "mlflow-ca"),
    "mlflow-ca-server-cert": (TLS_LOCALLY_SIGNED_CERT, "mlflow-ca"),
    "mlflow-proxy-image": (IMAGE, "mlflow-proxy"),
    "mlflow-proxy-data": (VOLUME, "mlflow-proxy"),
    "mlflow-proxy-container": (CONTAINER, "mlflow-proxy"),
}
# What a configuration leaves out of SHARED_TREE: the CA outside tlsMode internal; and
# in dev (no auth, no TLS) the auth secrets and the whole front door too.
INTERNAL_ONLY = (
    "mlflow-ca",
    "mlflow-ca-key",
    "mlflow-ca-root",
    "mlflow-ca-server-key",
    "mlflow-ca-server-request",
    "mlflow-ca-server-cert",
)
SHARED_ONLY = (
    *INTERNAL_ONLY,
    "mlflow-proxy",
    "mlflow-proxy-image",
    "mlflow-proxy-data",
    "mlflow-proxy-container",
    "mlflow-server-admin-password",
    "mlflow-server-flask-secret-key",
)


def _left_out(stack: str, mode: str) -> tuple[str, ...]:
    return SHARED_ONLY if stack == "dev" else () if mode == "internal" else INTERNAL_ONLY


@pytest.mark.parametrize(("stack", "mode"), CONFIGURATIONS)
def test_the_component_tree(stack: str, mode: str) -> None:
    mocks = declaration(stack, mode_overrides(mode)).mocks
    tree = {r.name: (r.type, r.parent.split("::")[-1]) for r in mocks.registrations.values()}
    left_out = _left_out(stack, mode)
    expected = {
        name: (type_, parent.format(stack=stack))
        for name, (type_, parent) in SHARED_TREE.items()
        if name not in left_out
    }
    assert tree == expected
    proxy = [] if stack == "dev" else ["proxy"]
    assert sorted(containers(mocks)) == sorted(
        docker_name(stack, name) for name in ["postgres", "db-bootstrap", "mlflow", "backup", "gc", *proxy]
    )


# What each container of a shared stack in tlsMode internal waits for: the resources its inputs
# come from, and the containers it is declared to start after (a health-gated start: the engine
# creates it only once they exist).
SHARED_DEPENDENCIES = {
    # On the database network alone.
    "mlflow-postgres-container": [
        "mlflow-network-database",
        "mlflow-postgres-data",
        "mlflow-postgres-image",
        "mlflow-postgres-socket",
        "mlflow-postgres-superuser-password",
    ],
    "mlflow-db-bootstrap-container": [
        "mlflow-image-image",
        "mlflow-postgres-container",
        "mlflow-postgres-password",
        "mlflow-postgres-socket",
    ],
    # After Postgres is healthy and the bootstrap has put the secrets in force.
    "mlflow-server-container": [
        "mlflow-db-bootstrap-container",
        "mlflow-image-image",
        "mlflow-network-database",
        "mlflow-network-network",
        "mlflow-postgres-container",
        "mlflow-postgres-password",
        "mlflow-server-admin-password",
        "mlflow-server-artifacts",
        "mlflow-server-flask-secret-key",
    ],
    "mlflow-backups-container": [
        "mlflow-backups-volume",
        "mlflow-db-bootstrap-container",
        "mlflow-network-database",
        "mlflow-network-network",
        "mlflow-postgres-container",
        "mlflow-postgres-image",
        "mlflow-postgres-password",
        "mlflow-server-artifacts",
    ],
    # After the server, which creates and upgrades the schema.
    "mlflow-gc-container": [
        "mlflow-image-image",
        "mlflow-network-database",
        "mlflow-network-network",
        "mlflow-postgres-password",
        "mlflow-server-artifacts",
        "mlflow-server-container",
    ],
    # The door opens once there is a healthy server behind it; it is given the server
    # certificate and its key, nothing of the root.
    "mlflow-proxy-container": [
        "mlflow-ca-server-cert",
        "mlflow-ca-server-key",
        "mlflow-network-network",
        "mlflow-proxy-data",
        "mlflow-proxy-image",
        "mlflow-server-container",
    ],
}


@pytest.mark.parametrize(("stack", "mode"), CONFIGURATIONS)
def test_each_container_starts_after_what_it_needs(stack: str, mode: str) -> None:
    mocks = declaration(stack, mode_overrides(mode)).mocks
    found = {r.name: sorted(urn.split("::")[-1] for urn in r.dependencies) for r in mocks.of_type(CONTAINER)}
    left_out = _left_out(stack, mode)
    assert found == {
        name: [dependency for dependency in dependencies if dependency not in left_out]
        for name, dependencies in SHARED_DEPENDENCIES.items()
        if name not in left_out
    }


# The networks each container of a stack joins (front first), and its aliases on each: Postgres on the
# internal database network alone, the internet-facing proxy never on it, the bootstrap on none (the socket).
SHARED_NETWORKS: dict[str, list[tuple[str, list[str] | None]]] = {
    "postgres": [("db", ["postgres"])],
    "db-bootstrap": [],
    "mlflow": [("front", ["mlflow"]), ("db", ["mlflow"])],
    "backup": [("front", None), ("db", None)],
    "gc": [("front", None), ("db", None)],
    "proxy": [("front", ["proxy"])],
}


@pytest.mark.parametrize(("stack", "mode"), CONFIGURATIONS)
def test_only_postgres_and_its_clients_are_on_the_database_network(stack: str, mode: str) -> None:
    mocks = declaration(stack, mode_overrides(mode)).mocks
    names = {"front": network_name(stack), "db": f"{network_name(stack)}-db"}
    found = {name.removeprefix(f"mlflow-platform-{stack}-"): c.inputs for name, c in containers(mocks).items()}
    expected = {role: networks for role, networks in SHARED_NETWORKS.items() if role in found}
    assert set(expected) == set(found)
    for role, networks in expected.items():
        entries = [
            {"name": names[network]} | ({"aliases": aliases} if aliases else {}) for network, aliases in networks
        ]
        assert found[role].get("networksAdvanced") == (entries or None), role
        assert found[role].get("networkMode") == (None if entries else "none"), role


TRACKING_URIS = {
    "dev": "http://localhost:5000",
    "staging": "https://mlflow.staging.example.internal",
    "prod": "https://mlflow.example.internal",
}


def _component_outputs(stack: str, mode: str, mocks: EngineMocks) -> dict[str, Any]:
    password = resolve(DB_PASSWORD, mocks)
    outputs: dict[str, Any] = {
        f"mlflow-platform-{stack}": {},
        "mlflow": {
            "tracking_uri": TRACKING_URIS[stack],
            "backend_store_uri": f"postgresql+psycopg://mlflow:{password}@postgres:5432/mlflow",
        },
        "mlflow-network": {"name": network_name(stack), "database_name": f"{network_name(stack)}-db"},
        "mlflow-postgres": {
            "container_name": docker_name(stack, "postgres"),
            "volume_name": docker_name(stack, "pgdata"),
            "socket_volume_name": docker_name(stack, "pgsocket"),
            "image_id": resolve(POSTGRES_IMAGE, mocks),
        },
        "mlflow-db-bootstrap": {"container_name": docker_name(stack, "db-bootstrap")},
        "mlflow-backups": {
            "container_name": docker_name(stack, "backup"),
            "volume_name": docker_name(stack, "backups"),
        },
        "mlflow-gc": {"container_name": docker_name(stack, "gc")},
        "mlflow-image": {
            "image_name": f"mlflow-platform/mlflow:3.17.2-{stack}",
            "repo_digest": resolve(MLFLOW_IMAGE, mocks),
        },
        "mlflow-server": {
            "container_name": docker_name(stack, "mlflow"),
            "artifacts_volume_name": docker_name(stack, "artifacts"),
        },
        "mlflow-proxy": {
            "container_name": docker_name(stack, "proxy"),
            "data_volume_name": docker_name(stack, "proxy-data"),
        },
    }
    if mode == "internal":
        outputs["mlflow-ca"] = {
            "certificate_pem": mocks.one(TLS_SELF_SIGNED_CERT, "ca-root").outputs["certPem"],
            "server_certificate_expires": mocks.one(TLS_LOCALLY_SIGNED_CERT).outputs["validityEndTime"],
        }
    return {name: value for name, value in outputs.items() if name not in _left_out(stack, mode)}


@pytest.mark.parametrize(("stack", "mode"), CONFIGURATIONS)
def test_every_component_registers_its_outputs(stack: str, mode: str) -> None:
    """What each component hands the engine as its outputs (shown by `pulumi stack --show-urns`)."""
    mocks = declaration(stack, mode_overrides(mode)).mocks
    registered = {urn.split("::")[-1]: outputs for urn, outputs in mocks.registered_outputs.items()}
    assert registered == _component_outputs(stack, mode, mocks)


@pytest.mark.parametrize(("rotation", "keepers"), [("", None), ("2026-11-27", {"secretsRotation": "2026-11-27"})])
def test_every_generated_secret_is_kept_by_secrets_rotation(rotation: str, keepers: dict[str, str] | None) -> None:
    mocks = declaration("staging", {"secretsRotation": rotation}).mocks
    passwords = {r.name: r.inputs.get("keepers") for r in mocks.of_type(RANDOM_PASSWORD)}
    assert passwords == {
        "mlflow-postgres-password": keepers,
        "mlflow-postgres-superuser-password": keepers,
        "mlflow-server-admin-password": keepers,
        "mlflow-server-flask-secret-key": keepers,
    }


def test_each_secret_and_each_image_is_its_own() -> None:
    """A swapped secret or image would pass the component specs if two placeholders named the same value."""
    mocks = declaration("staging").mocks
    names = ("postgres-password", "postgres-superuser-password", "server-admin-password", "server-flask-secret-key")
    assert len({resolve(SecretOf(name), mocks) for name in names}) == 4
    assert resolve(POSTGRES_IMAGE, mocks) != resolve(MLFLOW_IMAGE, mocks)


class _FailingBootstrap(EngineMocks):
    def create(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        resource_id, outputs = super().create(args, inputs)
        if args.name.endswith("db-bootstrap-container"):
            outputs["exitCode"] = 3
        return resource_id, outputs


def test_a_failed_bootstrap_stops_the_deployment_before_mlflow() -> None:
    mocks = _FailingBootstrap()

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        _, outputs = run_program("dev", mocks=mocks)
        return pulumi.Output.from_input(outputs["mlflow_container_name"])

    with pytest.raises(
        Exception, match=r"database bootstrap exited with code 3; see `docker logs mlflow-platform-dev-db-bootstrap`"
    ):
        run()
    # Neither the server nor what starts after it was declared: nothing reached a database left as it was.
    declared = {r.name for r in mocks.of_type(CONTAINER)}
    assert declared == {"mlflow-postgres-container", "mlflow-db-bootstrap-container"}
