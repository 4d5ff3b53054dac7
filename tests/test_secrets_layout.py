"""Under mocks: rotation keepers, the database bootstrap's wiring, stop settings, no secret in the open."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from tests.conftest import CONTAINER, RANDOM_PASSWORD, VOLUME
from tests.harness import EngineMocks, Registration, declaration, resolved, run_program
from tools.local_deploy.container_config import container_config
from tools.local_deploy.containers import grace_seconds
from tools.local_deploy.deployer import LocalDeployer
from tools.local_deploy.inputs import HANDLED_INPUTS


def _container(mocks: EngineMocks, suffix: str) -> Registration:
    return mocks.one(CONTAINER, suffix)


@pytest.mark.parametrize(("rotation", "keepers"), [("", None), ("2026-11-27", {"secretsRotation": "2026-11-27"})])
@pulumi.runtime.test
def test_every_generated_secret_is_kept_by_secrets_rotation(
    rotation: str, keepers: dict[str, str] | None
) -> pulumi.Output[None]:
    mocks, outputs = run_program("staging", {"secretsRotation": rotation})

    def check(values: dict[str, Any], secrets: set[str]) -> None:
        passwords = {r.name: r.inputs.get("keepers") for r in mocks.of_type(RANDOM_PASSWORD)}
        assert passwords == {
            "mlflow-postgres-password": keepers,
            "mlflow-postgres-superuser-password": keepers,
            "mlflow-server-admin-password": keepers,
            "mlflow-server-flask-secret-key": keepers,
        }

    return resolved(outputs, check)


def test_the_bootstrap_reaches_postgres_only_through_its_socket() -> None:
    mocks = declaration("staging").mocks
    bootstrap, postgres = _container(mocks, "db-bootstrap-container"), _container(mocks, "postgres-container")
    socket = mocks.one(VOLUME, "postgres-socket").inputs["name"]
    assert socket == "mlflow-platform-staging-pgsocket"
    assert {"volumeName": socket, "containerPath": "/var/run/postgresql"} in postgres.inputs["volumes"]
    assert {"volumeName": socket, "containerPath": "/var/run/postgresql", "readOnly": True} in bootstrap.inputs[
        "volumes"
    ]
    inputs = bootstrap.inputs
    assert inputs["networkMode"] == "none"
    assert "networksAdvanced" not in inputs
    assert (inputs["attach"], inputs["mustRun"], inputs["restart"]) == (True, False, "no")
    assert inputs["entrypoints"] == ["python", "/opt/mlflow-entrypoint/bootstrap_db.py"]
    assert inputs["image"] == _container(mocks, "server-container").inputs["image"]
    assert (inputs["readOnly"], inputs["capabilities"], inputs["user"]) == (True, {"drops": ["ALL"]}, "10001:10001")
    assert {
        "POSTGRES_SUPERUSER=postgres",
        "POSTGRES_USER=mlflow",
        "POSTGRES_DB=mlflow",
        "POSTGRES_AUTH_DB=mlflow_auth",
    } <= set(inputs["envs"])
    uploads = {u["file"]: u for u in inputs["uploads"]}
    assert (
        uploads["/run/secrets/postgres-password"]["content"]
        == mocks.one(RANDOM_PASSWORD, "postgres-password").outputs["result"]
    )
    assert (
        uploads["/run/secrets/postgres-superuser-password"]["content"]
        == mocks.one(RANDOM_PASSWORD, "superuser-password").outputs["result"]
    )
    assert {u["permissions"] for u in uploads.values()} == {"0400"}
    # A replaced Postgres container (new image, restored volume) replaces the bootstrap.
    labels = {item["label"]: item["value"] for item in inputs["labels"]}
    assert labels["org.mlflow-platform.bootstrapped-container"] == "mlflow-postgres-container-id"
    # Order: Postgres healthy, then the bootstrap, then MLflow.
    assert postgres.urn in bootstrap.dependencies
    assert bootstrap.urn in _container(mocks, "server-container").dependencies


def test_no_secret_in_env_command_entrypoint_or_labels_of_any_container() -> None:
    mocks = declaration("prod").mocks
    passwords = [str(r.outputs["result"]) for r in mocks.of_type(RANDOM_PASSWORD)]
    assert len(passwords) == 4
    # The internal CA's key is a secret too.
    passwords += [str(r.outputs["privateKeyPem"]) for r in mocks.of_type("tls:index/privateKey:PrivateKey")]
    containers = mocks.of_type(CONTAINER)
    assert {c.name for c in containers} == {
        "mlflow-postgres-container",
        "mlflow-db-bootstrap-container",
        "mlflow-server-container",
        "mlflow-proxy-container",
        "mlflow-backups-container",
        "mlflow-gc-container",
    }
    for container in containers:
        exposed = json.dumps({key: container.inputs.get(key) for key in ("envs", "command", "entrypoints", "labels")})
        assert not any(password in exposed for password in passwords), container.name
        assert container.secret_inputs() == {"uploads"}, container.name


def test_containers_stop_cleanly_on_replace_and_destroy() -> None:
    mocks = declaration("prod").mocks
    settings = {
        registration.name: (
            *(registration.inputs.get(key) for key in ("stopSignal", "stopTimeout", "destroyGraceSeconds")),
            registration.delete_before_replace,
        )
        for registration in mocks.of_type(CONTAINER)
    }
    # SIGINT: Postgres's fast shutdown; SIGTERM: uvicorn finishes its in-flight requests,
    # Caddy its connections, the backup and gc loops their current step. Every name is
    # fixed, so each container is deleted before its replacement is created (the
    # provider's default order would meet Docker's "name already in use").
    assert settings == {
        "mlflow-postgres-container": ("SIGINT", 120, 120, True),
        "mlflow-db-bootstrap-container": (None, None, None, True),
        "mlflow-server-container": ("SIGTERM", 60, 60, True),
        "mlflow-proxy-container": ("SIGTERM", 60, 60, True),
        "mlflow-backups-container": ("SIGTERM", 60, 60, True),
        "mlflow-gc-container": ("SIGTERM", 30, 30, True),
    }


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
    assert not [r for r in mocks.of_type(CONTAINER) if r.name.endswith("server-container")]


def test_the_deployer_implements_the_stop_and_one_shot_inputs() -> None:
    assert {"stopSignal", "stopTimeout", "destroyGraceSeconds", "attach", "mustRun", "networkMode"} <= HANDLED_INPUTS[
        CONTAINER
    ]
    assert "keepers" in HANDLED_INPUTS[RANDOM_PASSWORD]
    # The provider stops with a 0 s timeout (an immediate SIGKILL) when no grace is declared.
    assert grace_seconds({}, "c") == 0
    assert grace_seconds({"destroyGraceSeconds": {"c": 120}}, "c") == 120


def test_the_deployer_maps_stop_signal_and_network_mode() -> None:
    deployer = LocalDeployer("p", "unit-stop")
    args = pulumi.runtime.MockResourceArgs(typ=CONTAINER, name="c", inputs={})
    config = container_config(deployer, args, {"image": "x", "stopSignal": "SIGINT", "networkMode": "none"})
    assert (config["stop_signal"], config["network_mode"]) == ("SIGINT", "none")
