"""The whole program under mocks, with each stack's configuration from its files."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from tests import harness
from tests.conftest import CONTAINER, IMAGE, NETWORK, RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME
from tests.harness import EngineMocks, Registration, declaration, resolved, run_program

COMPONENT_TYPES = {
    "mlflow-platform:stack:MlflowPlatform",
    "mlflow-platform:network:StackNetwork",
    "mlflow-platform:database:PostgresDatabase",
    "mlflow-platform:database:DatabaseBootstrap",
    "mlflow-platform:image:MlflowImage",
    "mlflow-platform:server:MlflowServer",
    "mlflow-platform:backups:BackupService",
    "mlflow-platform:gc:GarbageCollector",
}


def _secret_values(mocks: EngineMocks) -> list[str]:
    values = [str(r.outputs["result"]) for r in mocks.of_type(RANDOM_PASSWORD)]
    assert values
    assert all(len(value) >= 24 for value in values)
    return values


def _postgres(mocks: EngineMocks) -> Registration:
    return mocks.one(CONTAINER, "postgres-container")


def _mlflow(mocks: EngineMocks) -> Registration:
    return mocks.one(CONTAINER, "server-container")


def _flag(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_dev_stack_declares_the_expected_graph() -> None:
    found = declaration("dev")
    mocks, values, secrets = found.mocks, found.values, found.secret_outputs
    # Every provider resource lives inside a component: nothing loose under the stack.
    for registration in mocks.registrations.values():
        parent_type = registration.parent.split("::")[-2].split("$")[-1] if registration.parent else ""
        if registration.type in COMPONENT_TYPES - {"mlflow-platform:stack:MlflowPlatform"}:
            assert parent_type == "mlflow-platform:stack:MlflowPlatform", registration.urn
        elif registration.type not in COMPONENT_TYPES:
            assert parent_type in COMPONENT_TYPES, registration.urn
    assert values["tracking_uri"] == "http://localhost:5000"
    assert values["network_name"] == "mlflow-platform-dev"
    assert values["postgres_volume_name"] == "mlflow-platform-dev-pgdata"
    assert values["artifacts_volume_name"] == "mlflow-platform-dev-artifacts"
    assert values["mlflow_image_name"] == "mlflow-platform/mlflow:3.17.2-dev"
    assert values["backup_container_name"] == "mlflow-platform-dev-backup"
    assert values["backups_volume_name"] == "mlflow-platform-dev-backups"
    assert values["gc_container_name"] == "mlflow-platform-dev-gc"
    assert "admin_password" not in values
    assert secrets == {"backend_store_uri"}


def test_no_secret_reaches_env_command_entrypoint_or_labels() -> None:
    found = declaration("dev")
    mocks, values, secrets = found.mocks, found.values, found.secret_outputs
    passwords = _secret_values(mocks)
    for container in mocks.of_type(CONTAINER):
        exposed = json.dumps(
            {key: container.inputs.get(key) for key in ("envs", "command", "entrypoints", "labels", "healthcheck")}
        )
        for password in passwords:
            assert password not in exposed, f"{container.name} exposes a generated secret"
        # The only way in is an upload, which the program marks secret.
        assert container.secret_inputs() == {"uploads"}
    # Every stack output that carries the password is secret.
    for name, value in values.items():
        if any(password in str(value) for password in passwords):
            assert name in secrets, f"stack output {name} carries a secret in the clear"
    assert mocks.one(RANDOM_PASSWORD, "postgres-password").outputs["result"] in values["backend_store_uri"]


def test_postgres_publishes_nothing_and_mlflow_only_on_loopback() -> None:
    found = declaration("dev")
    mocks, values = found.mocks, found.values
    assert not _postgres(mocks).inputs.get("ports")
    ports = _mlflow(mocks).inputs["ports"]
    assert ports == [{"internal": 5000, "external": 5000, "ip": "127.0.0.1", "protocol": "tcp"}]
    assert values["tracking_uri"].endswith(f":{int(ports[0]['external'])}")


def test_tracking_uri_follows_the_published_port_and_host() -> None:
    found = declaration("dev", {"hostPort": 15000, "publicHost": "mlflow.lab.internal"})
    mocks, values = found.mocks, found.values
    assert _mlflow(mocks).inputs["ports"][0]["external"] == 15000
    assert values["tracking_uri"] == "http://mlflow.lab.internal:15000"
    hosts = _flag(_mlflow(mocks).inputs["command"], "--allowed-hosts").split(",")
    assert {"mlflow.lab.internal", "mlflow.lab.internal:15000", "mlflow", "mlflow:5000"} <= set(hosts)


def test_postgres_container_contract() -> None:
    mocks = declaration("dev").mocks
    postgres = _postgres(mocks)
    image = mocks.one(REMOTE_IMAGE)
    assert image.inputs == {"name": "postgres:17.6", "keepLocally": True}
    assert postgres.inputs["image"] == image.outputs["imageId"]
    envs = postgres.inputs["envs"]
    # initdb's superuser is the official image's default, with a password of its own.
    assert "POSTGRES_USER=postgres" in envs
    assert "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-superuser-password" in envs
    assert not any(env.startswith(("POSTGRES_PASSWORD=", "POSTGRES_DB=")) for env in envs)
    upload, entrypoint = postgres.inputs["uploads"]
    assert upload["file"] == "/run/secrets/postgres-superuser-password"
    assert (upload["owner"], upload["group"], upload["permissions"]) == ("999", "999", "0400")
    assert upload["content"] == mocks.one(RANDOM_PASSWORD, "superuser-password").outputs["result"]
    assert (entrypoint["file"], entrypoint["permissions"]) == (
        "/usr/local/bin/mlflow-platform-postgres-entrypoint",
        "0755",
    )
    assert postgres.inputs["entrypoints"] == ["/usr/local/bin/mlflow-platform-postgres-entrypoint"]
    assert "exec docker-entrypoint.sh" in entrypoint["content"]
    assert postgres.inputs["healthcheck"]["tests"][:3] == ["CMD", "pg_isready", "-q"]
    assert postgres.inputs["restart"] == "unless-stopped"
    assert postgres.inputs["wait"] is True
    assert postgres.inputs["networksAdvanced"] == [{"name": "mlflow-platform-dev", "aliases": ["postgres"]}]
    data = mocks.one(VOLUME, "postgres-data")
    assert {"volumeName": data.inputs["name"], "containerPath": "/var/lib/postgresql/data"} in postgres.inputs[
        "volumes"
    ]


def test_mlflow_server_contract() -> None:
    mocks = declaration("dev").mocks
    server, image = _mlflow(mocks), mocks.one(IMAGE)
    # Run by digest (the local image ID), so a rebuilt image replaces the container.
    assert server.inputs["image"] == image.outputs["repoDigest"]
    assert image.inputs["skipPush"] is True
    assert image.inputs["build"]["context"] == "./mlflow"
    assert image.inputs["build"]["args"]["MLFLOW_VERSION"] == "3.17.2"
    command = server.inputs["command"]
    assert _flag(command, "--artifacts-destination") == "/mlflow/artifacts"
    assert "--serve-artifacts" in command
    assert "--default-artifact-root" not in command
    assert _flag(command, "--workers") == "4"  # Pulumi.dev.yaml
    assert "--app-name" not in command
    assert server.inputs["healthcheck"]["tests"][-1].endswith("/health', timeout=4)")
    assert server.inputs["restart"] == "unless-stopped"
    assert server.inputs["wait"] is True
    # Starts only after the health-gated Postgres container exists.
    assert _postgres(mocks).urn in server.dependencies
    artifacts = mocks.one(VOLUME, "server-artifacts")
    mount = {"volumeName": artifacts.inputs["name"], "containerPath": "/mlflow/artifacts"}
    assert mount in server.inputs["volumes"]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_stack_runs_and_labels_its_resources(stack: str) -> None:
    found = declaration(stack)
    mocks, values = found.mocks, found.values
    for registration in [*mocks.of_type(CONTAINER), *mocks.of_type(VOLUME)]:
        labels = {item["label"]: item["value"] for item in registration.inputs["labels"]}
        assert labels["com.pulumi.stack"] == stack
    assert values["network_name"] == f"mlflow-platform-{stack}"


# What each committed stack file changes, as the program declares it.
STACK_DIFFERENCES = {
    "dev": {
        "auth": False,
        "protected": False,
        "bind": "127.0.0.1",
        "host": "localhost",
        "workers": "4",
        "mem": 1536,
        "connections": 100,
    },
    "staging": {
        "auth": True,
        "protected": True,
        "bind": "0.0.0.0",
        "host": "mlflow.staging.example.internal",
        "workers": "2",
        "mem": 2048,
        "connections": 100,
    },
    "prod": {
        "auth": True,
        "protected": True,
        "bind": "0.0.0.0",
        "host": "mlflow.example.internal",
        "workers": "4",
        "mem": 4096,
        "connections": 140,
    },
}


@pytest.mark.parametrize("stack", sorted(STACK_DIFFERENCES))
def test_stack_differences(stack: str) -> None:
    expected = STACK_DIFFERENCES[stack]

    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        mocks, outputs = run_program(stack)

        def check(values: dict[str, Any], secrets: set[str]) -> None:
            server = _mlflow(mocks)
            command = server.inputs["command"]
            assert ("--app-name" in command) is expected["auth"]
            assert values["auth_enabled"] is expected["auth"]
            assert ("admin_password" in secrets) is expected["auth"]
            for volume in mocks.of_type(VOLUME):
                assert (volume.protect, volume.retain_on_delete) == (expected["protected"],) * 2, volume.name
            proxies = [c for c in mocks.of_type(CONTAINER) if c.name == "mlflow-proxy-container"]
            if expected["auth"]:
                # Shared stacks: the proxy publishes HTTPS and its redirect; MLflow publishes nothing.
                assert server.inputs.get("ports", []) == []
                assert [(p["ip"], p["external"]) for p in proxies[0].inputs["ports"]] == [
                    (expected["bind"], 443),
                    (expected["bind"], 80),
                ]
                assert values["tracking_uri"] == f"https://{expected['host']}"
                assert values["ca_certificate"].startswith("-----BEGIN CERTIFICATE-----")
                assert "ca_certificate" not in secrets
            else:
                assert proxies == []
                assert server.inputs["ports"][0]["ip"] == expected["bind"]
                assert values["tracking_uri"] == f"http://{expected['host']}:5000"
            assert _flag(command, "--workers") == expected["workers"]
            assert server.inputs["memory"] == expected["mem"]
            # Postgres admits every connection the workers' pools may open (tracking, registry, auth).
            assert _flag(_postgres(mocks).inputs["command"], "-c") == f"max_connections={expected['connections']}"
            if expected["auth"]:
                # Pulumi.yaml's default: no stack file overrides it.
                assert "MLFLOW_AUTH_CACHE_TTL_SECONDS=30" in server.inputs["envs"]
                assert values["admin_username"] == "admin"
                assert len(values["admin_password"]) >= 24

        return resolved(outputs, check)

    run()


def test_every_component_registers_its_outputs() -> None:
    """What each component hands the engine as its outputs (shown by `pulumi stack --show-urns`)."""
    found: dict[str, EngineMocks] = {}

    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        mocks, outputs = run_program("dev")
        found["mocks"] = mocks
        return resolved(outputs, lambda values, secrets: None)

    run()  # returns once every registration, register_outputs included, has finished
    mocks = found["mocks"]
    by_type = {
        urn.split("::")[-2].split("$")[-1]: value
        for urn, value in mocks.registered_outputs.items()
        if not urn.endswith("::pulumi:pulumi:Stack::mlflow-platform-dev")
    }
    password = mocks.one(RANDOM_PASSWORD, "postgres-password").outputs["result"]
    assert by_type == {
        "mlflow-platform:stack:MlflowPlatform": {
            "tracking_uri": "http://localhost:5000",
            "backend_store_uri": f"postgresql+psycopg://mlflow:{password}@postgres:5432/mlflow",
        },
        "mlflow-platform:network:StackNetwork": {"name": "mlflow-platform-dev"},
        "mlflow-platform:database:PostgresDatabase": {
            "container_name": "mlflow-platform-dev-postgres",
            "volume_name": "mlflow-platform-dev-pgdata",
            "socket_volume_name": "mlflow-platform-dev-pgsocket",
            "image_id": mocks.one(REMOTE_IMAGE).outputs["imageId"],
        },
        "mlflow-platform:database:DatabaseBootstrap": {"container_name": "mlflow-platform-dev-db-bootstrap"},
        "mlflow-platform:backups:BackupService": {
            "container_name": "mlflow-platform-dev-backup",
            "volume_name": "mlflow-platform-dev-backups",
        },
        "mlflow-platform:gc:GarbageCollector": {"container_name": "mlflow-platform-dev-gc"},
        "mlflow-platform:image:MlflowImage": {
            "image_name": "mlflow-platform/mlflow:3.17.2-dev",
            "repo_digest": mocks.one(IMAGE).outputs["repoDigest"],
        },
        "mlflow-platform:server:MlflowServer": {
            "container_name": "mlflow-platform-dev-mlflow",
            "artifacts_volume_name": "mlflow-platform-dev-artifacts",
        },
    }


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_generated_secrets_volumes_and_images_in_full(stack: str) -> None:
    """The non-container resources: every input, literally."""
    found: dict[str, EngineMocks] = {}

    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        mocks, outputs = run_program(stack)
        found["mocks"] = mocks
        return resolved(outputs, lambda values, secrets: None)

    run()
    mocks = found["mocks"]
    strong = {"length": 32, "special": False, "minLower": 1, "minUpper": 1, "minNumeric": 1}
    passwords = {r.name: r.inputs for r in mocks.of_type(RANDOM_PASSWORD)}
    expected_passwords = {"mlflow-postgres-password": strong, "mlflow-postgres-superuser-password": strong}
    if stack == "staging":
        expected_passwords |= {
            "mlflow-server-admin-password": strong,
            "mlflow-server-flask-secret-key": {"length": 64, "special": False},
        }
    assert passwords == expected_passwords

    def labels(role: str) -> list[dict[str, str]]:
        return [
            {"label": "com.pulumi.project", "value": "mlflow-platform"},
            {"label": "com.pulumi.stack", "value": stack},
            {"label": "org.mlflow-platform.role", "value": role},
        ]

    volumes = {r.name: (r.inputs, r.protect, r.retain_on_delete) for r in mocks.of_type(VOLUME)}
    protected = stack == "staging"
    shared_only = (
        {
            "mlflow-proxy-data": (
                {"name": f"mlflow-platform-{stack}-proxy-data", "labels": labels("proxy")},
                protected,
                protected,
            )
        }
        if stack == "staging"
        else {}
    )
    assert volumes == {
        **shared_only,
        "mlflow-postgres-data": (
            {"name": f"mlflow-platform-{stack}-pgdata", "labels": labels("database")},
            protected,
            protected,
        ),
        "mlflow-postgres-socket": (
            {"name": f"mlflow-platform-{stack}-pgsocket", "labels": labels("database")},
            protected,
            protected,
        ),
        "mlflow-backups-volume": (
            {"name": f"mlflow-platform-{stack}-backups", "labels": labels("backup")},
            protected,
            protected,
        ),
        "mlflow-server-artifacts": (
            {"name": f"mlflow-platform-{stack}-artifacts", "labels": labels("tracking-server")},
            protected,
            protected,
        ),
    }
    assert mocks.one(NETWORK).inputs == {
        "name": f"mlflow-platform-{stack}",
        "driver": "bridge",
        "labels": labels("network"),
    }
    assert mocks.one(REMOTE_IMAGE).inputs == {"name": "postgres:17.6", "keepLocally": True}
    assert mocks.one(IMAGE, "image-image").inputs == {
        "imageName": f"mlflow-platform/mlflow:3.17.2-{stack}",
        "build": {
            "context": "./mlflow",
            "dockerfile": "./mlflow/Dockerfile",
            "args": {"BASE_IMAGE": "python:3.12-slim-bookworm", "MLFLOW_VERSION": "3.17.2", "USE_WHEELHOUSE": ""},
        },
        "skipPush": True,
        "buildOnPreview": False,
    }


def test_declarations_are_shared_except_in_mutmuts_stats_run(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []
    run = harness.run_program

    def counted(stack: str, overrides: Any = None, mocks: Any = None) -> Any:
        runs.append(stack)
        return run(stack, overrides, mocks)

    monkeypatch.setattr(harness, "run_program", counted)
    # As in a plain test run (under a mutant, mutmut's trampolines keep their own copy of the name).
    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    first = declaration("dev", {"hostPort": 5077})
    before = len(runs)
    second = declaration("dev", {"hostPort": 5077})
    assert len(runs) == before
    # Each caller gets its own copy.
    assert first.mocks is not second.mocks
    assert first.values == second.values
    # mutmut maps functions to the tests that call them: in its stats run every test runs the program.
    monkeypatch.setenv("MUTANT_UNDER_TEST", "stats")
    declaration("dev", {"hostPort": 5077})
    declaration("dev", {"hostPort": 5077})
    assert len(runs) == before + 2


# Every resource of the prod stack (the one with the most), its type and its parent's name.
PROD_TREE = {
    "mlflow": ("mlflow-platform:stack:MlflowPlatform", "mlflow-platform-prod"),
    "mlflow-network": ("mlflow-platform:network:StackNetwork", "mlflow"),
    "mlflow-postgres": ("mlflow-platform:database:PostgresDatabase", "mlflow"),
    "mlflow-image": ("mlflow-platform:image:MlflowImage", "mlflow"),
    "mlflow-db-bootstrap": ("mlflow-platform:database:DatabaseBootstrap", "mlflow"),
    "mlflow-server": ("mlflow-platform:server:MlflowServer", "mlflow"),
    "mlflow-backups": ("mlflow-platform:backups:BackupService", "mlflow"),
    "mlflow-gc": ("mlflow-platform:gc:GarbageCollector", "mlflow"),
    "mlflow-ca": ("mlflow-platform:tls:InternalCa", "mlflow"),
    "mlflow-proxy": ("mlflow-platform:proxy:TlsProxy", "mlflow"),
    "mlflow-network-network": (NETWORK, "mlflow-network"),
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
    "mlflow-ca-key": ("tls:index/privateKey:PrivateKey", "mlflow-ca"),
    "mlflow-ca-root": ("tls:index/selfSignedCert:SelfSignedCert", "mlflow-ca"),
    "mlflow-proxy-image": (IMAGE, "mlflow-proxy"),
    "mlflow-proxy-data": (VOLUME, "mlflow-proxy"),
    "mlflow-proxy-container": (CONTAINER, "mlflow-proxy"),
}

# What each component hands `register_outputs` (shown by `pulumi stack --show-urns` and in the state).
PROD_COMPONENT_OUTPUTS = {
    "mlflow-platform-prod": [],
    "mlflow": ["backend_store_uri", "tracking_uri"],
    "mlflow-network": ["name"],
    "mlflow-postgres": ["container_name", "image_id", "socket_volume_name", "volume_name"],
    "mlflow-image": ["image_name", "repo_digest"],
    "mlflow-db-bootstrap": ["container_name"],
    "mlflow-server": ["artifacts_volume_name", "container_name"],
    "mlflow-backups": ["container_name", "volume_name"],
    "mlflow-gc": ["container_name"],
    "mlflow-ca": ["certificate_pem"],
    "mlflow-proxy": ["container_name", "data_volume_name"],
}


def test_the_prod_stack_tree_and_component_outputs_in_full() -> None:
    mocks = declaration("prod").mocks
    tree = {r.name: (r.type, r.parent.split("::")[-1]) for r in mocks.registrations.values()}
    assert tree == PROD_TREE
    registered = {urn.split("::")[-1]: outputs for urn, outputs in mocks.registered_outputs.items()}
    assert {name: sorted(outputs) for name, outputs in registered.items()} == PROD_COMPONENT_OUTPUTS
    assert (
        registered["mlflow-ca"]["certificate_pem"]
        == mocks.one("tls:index/selfSignedCert:SelfSignedCert", "ca-root").outputs["certPem"]
    )


# What each prod container waits for: the resources its inputs come from, and the containers
# it is declared to start after (a health-gated start: the engine creates it only once they exist).
PROD_CONTAINER_DEPENDENCIES = {
    "mlflow-postgres-container": [
        "mlflow-network-network",
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
        "mlflow-postgres-superuser-password",
    ],
    "mlflow-server-container": [
        "mlflow-db-bootstrap-container",
        "mlflow-image-image",
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
        "mlflow-network-network",
        "mlflow-postgres-container",
        "mlflow-postgres-image",
        "mlflow-postgres-password",
        "mlflow-server-artifacts",
    ],
    "mlflow-gc-container": [
        "mlflow-image-image",
        "mlflow-network-network",
        "mlflow-postgres-password",
        "mlflow-server-artifacts",
        "mlflow-server-container",
    ],
    "mlflow-proxy-container": [
        "mlflow-ca-key",
        "mlflow-ca-root",
        "mlflow-network-network",
        "mlflow-proxy-data",
        "mlflow-proxy-image",
        "mlflow-server-container",
    ],
}


def test_each_prod_container_starts_after_what_it_needs() -> None:
    mocks = declaration("prod").mocks
    found = {r.name: sorted(urn.split("::")[-1] for urn in r.dependencies) for r in mocks.of_type(CONTAINER)}
    assert found == PROD_CONTAINER_DEPENDENCIES


def test_a_stack_file_edited_between_reads_is_read_again_and_each_read_is_a_copy(tmp_path: Any) -> None:
    from tools import stack_config

    path = tmp_path / "Pulumi.t.yaml"
    path.write_text("config:\n  a: 1\n", encoding="utf-8")
    first = stack_config._load_yaml(path)
    first["config"]["a"] = 99
    assert stack_config._load_yaml(path) == {"config": {"a": 1}}
    path.write_text("config:\n  a: 2\n  b: 3\n", encoding="utf-8")
    assert stack_config._load_yaml(path) == {"config": {"a": 2, "b": 3}}
