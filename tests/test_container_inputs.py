"""Every input of every container, in full, for known configurations (the dev and staging stacks).

A test should fail when any safety-relevant detail changes: the whole health check,
the whole command, every upload's path, owner, group and mode, tmpfs options,
security options, capabilities, memory and swap, user, published ports, env,
volumes, read-only. So each container's inputs are compared as one literal dict;
a key added, removed or changed anywhere fails with pytest's dict diff.

Only two kinds of values are not literals: the image a container runs (the ID or
digest another resource computes) and an upload's content (a generated secret).
They are written as `ImageOf(...)`/`SecretOf(...)` and resolved to the value that
other resource produced, so they too are compared exactly.

Adding a container: add its Docker name and expected dict under each stack in
EXPECTED. `test_every_container_has_an_expected_spec` fails until you do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pytest

from tests.harness import EngineMocks, resolved, run_program

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


POSTGRES_IMAGE = ImageOf("docker:index/remoteImage:RemoteImage", "postgres-image", "imageId")
MLFLOW_IMAGE = ImageOf("docker:index/image:Image", "image-image", "repoDigest")


def _labels(stack: str, role: str) -> list[dict[str, str]]:
    return [
        {"label": "com.pulumi.project", "value": "mlflow-platform"},
        {"label": "com.pulumi.stack", "value": stack},
        {"label": "org.mlflow-platform.role", "value": role},
    ]


def _postgres(stack: str, memory: int) -> dict[str, Any]:
    return {
        "name": f"mlflow-platform-{stack}-postgres",
        "image": POSTGRES_IMAGE,
        "user": "999:999",
        "envs": [
            "POSTGRES_USER=mlflow",
            "POSTGRES_DB=mlflow",
            "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
            "PGDATA=/var/lib/postgresql/data/pgdata",
        ],
        "uploads": [
            {
                "file": "/run/secrets/postgres-password",
                "content": SecretOf("postgres-password"),
                "owner": "999",
                "group": "999",
                "permissions": "0400",
            }
        ],
        "volumes": [
            {"volumeName": f"mlflow-platform-{stack}-pgdata", "containerPath": "/var/lib/postgresql/data"},
            {"containerPath": "/run/secrets"},
        ],
        "networksAdvanced": [{"name": f"mlflow-platform-{stack}", "aliases": ["postgres"]}],
        "healthcheck": {
            "tests": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", "mlflow", "-d", "mlflow"],
            "interval": "5s",
            "timeout": "5s",
            "retries": 12,
            "startPeriod": "30s",
        },
        "restart": "unless-stopped",
        "capabilities": {"drops": ["ALL"]},
        "securityOpts": ["no-new-privileges:true"],
        "memory": memory,
        "memorySwap": memory,
        "shmSize": 256,
        "logDriver": "json-file",
        "logOpts": {"max-size": "10m", "max-file": "3"},
        "labels": _labels(stack, "database"),
        "wait": True,
        "waitTimeout": 300,
    }


_MLFLOW_HEALTHCHECK = {
    "tests": [
        "CMD",
        "python",
        "-c",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)",
    ],
    "interval": "10s",
    "timeout": "5s",
    "retries": 6,
    "startPeriod": "60s",
}


def _mlflow_upload(name: str, secret: str) -> dict[str, Any]:
    return {
        "file": f"/run/secrets/{name}",
        "content": SecretOf(secret),
        "owner": "10001",
        "group": "10001",
        "permissions": "0400",
    }


_MLFLOW_ENVS = [
    "POSTGRES_HOST=postgres",
    "POSTGRES_PORT=5432",
    "POSTGRES_DB=mlflow",
    "POSTGRES_USER=mlflow",
    "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
    "HOME=/tmp",
    "TMPDIR=/tmp",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
]


def _mlflow(stack: str) -> dict[str, Any]:
    """What every stack's MLflow container shares; the stack cases below fill in the rest."""
    return {
        "name": f"mlflow-platform-{stack}-mlflow",
        "image": MLFLOW_IMAGE,
        "user": "10001:10001",
        "volumes": [
            {"volumeName": f"mlflow-platform-{stack}-artifacts", "containerPath": "/mlflow/artifacts"},
            {"containerPath": "/run/secrets"},
        ],
        "networksAdvanced": [{"name": f"mlflow-platform-{stack}", "aliases": ["mlflow"]}],
        "healthcheck": _MLFLOW_HEALTHCHECK,
        "restart": "unless-stopped",
        "readOnly": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=512m"},
        "capabilities": {"drops": ["ALL"]},
        "securityOpts": ["no-new-privileges:true"],
        "logDriver": "json-file",
        "logOpts": {"max-size": "10m", "max-file": "3"},
        "labels": _labels(stack, "tracking-server"),
        "wait": True,
        "waitTimeout": 300,
    }


# Stack -> Docker container name -> every input the program declares for it.
EXPECTED: dict[str, dict[str, dict[str, Any]]] = {
    "dev": {
        "mlflow-platform-dev-postgres": _postgres("dev", 1024),
        "mlflow-platform-dev-mlflow": {
            **_mlflow("dev"),
            "command": [
                "--host",
                "0.0.0.0",
                "--port",
                "5000",
                "--workers",
                "1",
                "--serve-artifacts",
                "--artifacts-destination",
                "/mlflow/artifacts",
                "--allowed-hosts",
                "localhost,localhost:5000,mlflow,mlflow:5000,127.0.0.1,127.0.0.1:5000",
            ],
            "envs": _MLFLOW_ENVS,
            "uploads": [_mlflow_upload("postgres-password", "postgres-password")],
            "ports": [{"internal": 5000, "external": 5000, "ip": "127.0.0.1", "protocol": "tcp"}],
            "memory": 1536,
            "memorySwap": 1536,
        },
    },
    "staging": {
        "mlflow-platform-staging-postgres": _postgres("staging", 1024),
        "mlflow-platform-staging-mlflow": {
            **_mlflow("staging"),
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
                "mlflow.staging.example.internal,mlflow.staging.example.internal:5000,mlflow,mlflow:5000",
                "--app-name",
                "basic-auth",
            ],
            "envs": [
                *_MLFLOW_ENVS,
                "MLFLOW_AUTH_ADMIN_USERNAME=admin",
                "MLFLOW_AUTH_ADMIN_PASSWORD_FILE=/run/secrets/admin-password",
                "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE=/run/secrets/flask-secret-key",
            ],
            "uploads": [
                _mlflow_upload("postgres-password", "postgres-password"),
                _mlflow_upload("admin-password", "server-admin-password"),
                _mlflow_upload("flask-secret-key", "server-flask-secret-key"),
            ],
            "ports": [{"internal": 5000, "external": 5000, "ip": "0.0.0.0", "protocol": "tcp"}],
            "memory": 2048,
            "memorySwap": 2048,
        },
    },
}


def _resolve(expected: Any, mocks: EngineMocks) -> Any:
    """Replaces ImageOf/SecretOf with the values the named resources produced."""
    if isinstance(expected, ImageOf):
        return mocks.one(expected.type, expected.resource).outputs[expected.key]
    if isinstance(expected, SecretOf):
        return mocks.one("random:index/randomPassword:RandomPassword", expected.resource).outputs["result"]
    if isinstance(expected, dict):
        return {key: _resolve(value, mocks) for key, value in expected.items()}
    if isinstance(expected, list):
        return [_resolve(value, mocks) for value in expected]
    return expected


def _containers(mocks: EngineMocks) -> dict[str, dict[str, Any]]:
    return {str(r.inputs["name"]): r.inputs for r in mocks.of_type(CONTAINER)}


@pytest.mark.parametrize("stack", sorted(EXPECTED))
def test_every_container_has_an_expected_spec(stack: str) -> None:
    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        mocks, outputs = run_program(stack)

        def check(values: dict[str, Any], secrets: set[str]) -> None:
            assert sorted(_containers(mocks)) == sorted(EXPECTED[stack])

        return resolved(outputs, check)

    run()


@pytest.mark.parametrize(
    ("stack", "container"), [(stack, name) for stack, containers in EXPECTED.items() for name in containers]
)
def test_container_inputs_in_full(stack: str, container: str) -> None:
    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        mocks, outputs = run_program(stack)

        def check(values: dict[str, Any], secrets: set[str]) -> None:
            declared = _containers(mocks)[container]
            assert declared == _resolve(EXPECTED[stack][container], mocks)

        return resolved(outputs, check)

    run()


def test_the_placeholders_resolve_to_distinct_generated_values() -> None:
    """SecretOf must not resolve every upload to the same value, or a swapped secret would pass."""

    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        mocks, outputs = run_program("staging")

        def check(values: dict[str, Any], secrets: set[str]) -> None:
            names = ("postgres-password", "server-admin-password", "server-flask-secret-key")
            resolved_values = [_resolve(SecretOf(name), mocks) for name in names]
            assert len(set(resolved_values)) == 3
            assert _resolve(POSTGRES_IMAGE, mocks) != _resolve(MLFLOW_IMAGE, mocks)

        return resolved(outputs, check)

    run()
