"""What the component test files share: each stack's facts, what the target gives every
container, placeholders for values other resources produce, and a component built alone.

Each component's expected container is written once, in its own test file, as a base
plus each stack's overrides. What the standalone target adds to every container is
written here once (`hardened`, `service`, `stopped_with`, `secret_upload`, ...), and
asserted literally, on its own, in tests/test_standalone_target.py.

Values another resource or file produces are not written out: the image a container
runs (`ImageOf`), a generated secret (`SecretOf`), an uploaded script (`SourceOf`, the
repository file). `resolve` replaces each with exactly that value, so they too are
compared in full; a component's test file adds its own placeholders the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pulumi

from components.context import DatabaseEndpoint, LogRotation, StackContext
from components.settings import ArtifactSettings, ServerSettings
from tests.certs import self_signed
from tests.conftest import CONTAINER, IMAGE, RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME
from tests.harness import EngineMocks, Registration, install
from tools.stack_config import PROJECT_DIR

PROJECT = "mlflow-platform"
STACKS = ("dev", "staging", "prod")
# The stack of a component built alone (`unit_context`): its own log rotation and timeout,
# so a component that ignored its context and used a stack's values would show.
UNIT = "unit"

_LOG_OPTS = {"max-size": "10m", "max-file": "3"}
# Pulumi.yaml's logMaxSize and logMaxFiles; prod keeps ten files.
LOG_OPTS: dict[str, dict[str, str]] = {
    "dev": _LOG_OPTS,
    "staging": _LOG_OPTS,
    "prod": {**_LOG_OPTS, "max-file": "10"},
    UNIT: {"max-size": "5m", "max-file": "2"},
}
# startupTimeoutSeconds (Pulumi.yaml's default in every stack).
STARTUP_TIMEOUT = {"dev": 300, "staging": 300, "prod": 300, UNIT: 90}
# protectData: the shared stacks keep their volumes on a destroy or a replacement.
PROTECTED = {"dev": False, "staging": True, "prod": True, UNIT: False}
# postgresImage, baseImage and proxyImage: Pulumi.yaml's tags in dev; the shared stacks pin the same
# releases by digest (Pulumi.staging.yaml, Pulumi.prod.yaml; policy shared-stack-image-digests).
_POSTGRES_PIN = "postgres:17.11@sha256:f4c66b820c6f974249089d3d16d86a3698eae11e8746eb6644b2271031e91232"
_BASE_PIN = "python:3.12-slim-bookworm@sha256:0f5b26b9518d002b6173fd61daad821fa340635ebfec5bba471013f9ca114579"
_PROXY_PIN = "caddy:2.11.7@sha256:f2a1290d0463aad60660d4ec134943f183ee2a5f6c3eb7bf32dd984f2f020772"
POSTGRES_REFERENCE = {"dev": "postgres:17.11", "staging": _POSTGRES_PIN, "prod": _POSTGRES_PIN}
BASE_REFERENCE = {"dev": "python:3.12-slim-bookworm", "staging": _BASE_PIN, "prod": _BASE_PIN}
PROXY_REFERENCE = {"dev": "caddy:2.11.7", "staging": _PROXY_PIN, "prod": _PROXY_PIN}
# The password a component built alone connects with (unit_endpoint).
UNIT_PASSWORD = "p" * 32

T = TypeVar("T")


def docker_name(stack: str, suffix: str) -> str:
    return f"{PROJECT}-{stack}-{suffix}"


def network_name(stack: str) -> str:
    return f"{PROJECT}-{stack}"


def labels(stack: str, role: str) -> list[dict[str, str]]:
    """The labels the target puts on each of a stack's containers, volumes and its network."""
    return [
        {"label": "com.pulumi.project", "value": PROJECT},
        {"label": "com.pulumi.stack", "value": stack},
        {"label": "org.mlflow-platform.role", "value": role},
    ]


def hardened(stack: str, role: str, memory_mb: int, tasks: int) -> dict[str, Any]:
    """The inputs the target gives every container: hardening, limits, log rotation, labels.

    `tasks`: its uid's task limit (components/task_limits.py), soft and hard alike.
    """
    return {
        "capabilities": {"drops": ["ALL"]},
        "securityOpts": ["no-new-privileges:true"],
        "ulimits": [{"name": "nproc", "soft": tasks, "hard": tasks}],
        "memory": memory_mb,
        "memorySwap": memory_mb,
        "logDriver": "json-file",
        "logOpts": LOG_OPTS[stack],
        "labels": labels(stack, role),
    }


def service(stack: str, *, wait: bool = True) -> dict[str, Any]:
    """A long-running container's lifecycle: restarted by the engine, health-gated unless `wait` is off."""
    gate = {"wait": True, "waitTimeout": STARTUP_TIMEOUT[stack]} if wait else {"wait": False}
    return {"restart": "unless-stopped", **gate}


def stopped_with(signal: str, seconds: int) -> dict[str, Any]:
    """How a container is stopped: by `docker stop`, an engine shutdown, a replace or a destroy."""
    return {"stopSignal": signal, "stopTimeout": seconds, "destroyGraceSeconds": seconds}


def on_network(stack: str, *aliases: str) -> dict[str, Any]:
    network: dict[str, Any] = {"name": network_name(stack)}
    if aliases:
        network["aliases"] = list(aliases)
    return {"networksAdvanced": [network]}


# The last volume of every container: the in-memory place its secret files are uploaded to.
SECRETS_VOLUME = {"containerPath": "/run/secrets"}


def mount(stack: str, volume: str, path: str, *, read_only: bool = False) -> dict[str, Any]:
    """One of the stack's named volumes, mounted at `path`."""
    found: dict[str, Any] = {"volumeName": docker_name(stack, volume), "containerPath": path}
    if read_only:
        found["readOnly"] = True
    return found


def secret_upload(path: str, content: object, uid: str) -> dict[str, Any]:
    """A secret file: the workload's own, readable by it alone."""
    return {"file": path, "content": content, "owner": uid, "group": uid, "permissions": "0400"}


def config_upload(path: str, content: object, mode: str = "0444") -> dict[str, Any]:
    """A public file the workload cannot rewrite: owned by root."""
    return {"file": path, "content": content, "owner": "0", "group": "0", "permissions": mode}


def declared_volume(stack: str, suffix: str, role: str) -> tuple[dict[str, Any], bool, bool]:
    """A named volume's inputs, `protect` and `retainOnDelete`, as `volumes_of` lists them."""
    return {"name": docker_name(stack, suffix), "labels": labels(stack, role)}, PROTECTED[stack], PROTECTED[stack]


def volumes_of(mocks: EngineMocks, *names: str) -> dict[str, tuple[dict[str, Any], bool, bool]]:
    """The named volume resources: inputs, protect, retainOnDelete."""
    found = {r.name: (r.inputs, r.protect, r.retain_on_delete) for r in mocks.of_type(VOLUME)}
    return {name: found[name] for name in names if name in found}


# A generated password's inputs (components/secrets.py): letters and digits, one of each class.
def strong_password(length: int, keepers: dict[str, str] | None = None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"length": length, "special": False, "minLower": 1, "minUpper": 1, "minNumeric": 1}
    if keepers is not None:
        inputs["keepers"] = keepers
    return inputs


def passwords_of(mocks: EngineMocks) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in mocks.of_type(RANDOM_PASSWORD)}


class Placeholder:
    """A value another resource or file produces, resolved against the mocks of one run."""

    def resolve(self, mocks: EngineMocks) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class ImageOf(Placeholder):
    """The image input: the output `key` of the image resource whose name ends with `resource`."""

    type: str
    resource: str
    key: str

    def resolve(self, mocks: EngineMocks) -> Any:
        return mocks.one(self.type, self.resource).outputs[self.key]


@dataclass(frozen=True)
class SecretOf(Placeholder):
    """The `result` of the RandomPassword whose name ends with `resource`."""

    resource: str

    def resolve(self, mocks: EngineMocks) -> Any:
        return mocks.one(RANDOM_PASSWORD, self.resource).outputs["result"]


@dataclass(frozen=True)
class SourceOf(Placeholder):
    """An uploaded script: the repository file it is read from, byte for byte."""

    path: str

    def resolve(self, mocks: EngineMocks) -> Any:
        return (PROJECT_DIR / self.path).read_text(encoding="utf-8")


POSTGRES_IMAGE = ImageOf(REMOTE_IMAGE, "postgres-image", "imageId")
MLFLOW_IMAGE = ImageOf(IMAGE, "image-image", "repoDigest")
DB_PASSWORD = SecretOf("postgres-password")


def resolve(expected: Any, mocks: EngineMocks) -> Any:
    """`expected` with every placeholder replaced by the value it names."""
    if isinstance(expected, Placeholder):
        return resolve(expected.resolve(mocks), mocks)
    if isinstance(expected, dict):
        return {key: resolve(value, mocks) for key, value in expected.items()}
    if isinstance(expected, list):
        return [resolve(value, mocks) for value in expected]
    return expected


def containers(mocks: EngineMocks) -> dict[str, Registration]:
    """Every container, by its Docker name."""
    return {str(r.inputs["name"]): r for r in mocks.of_type(CONTAINER)}


def unit_context(*, protect_data: bool = False) -> StackContext:
    """The stack a component built alone belongs to."""
    return StackContext(
        project=PROJECT,
        stack=UNIT,
        log_rotation=LogRotation(max_size="5m", max_files=2),
        protect_data=protect_data,
        startup_timeout_seconds=STARTUP_TIMEOUT[UNIT],
        network=network_name(UNIT),
    )


@dataclass(frozen=True)
class Database:
    """Where a workload finds MLflow's database, as its expected inputs spell it out."""

    host: str
    port: int
    database: str
    role: str
    auth_database: str

    def environment(self) -> list[str]:
        """The server's and gc's view of it: the password as a file, never in the environment."""
        return [
            f"POSTGRES_HOST={self.host}",
            f"POSTGRES_PORT={self.port}",
            f"POSTGRES_DB={self.database}",
            f"POSTGRES_USER={self.role}",
            "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
        ]


# What the platform describes (Pulumi.yaml's defaults), and what a component built alone is
# given instead: none of its values is a default a component could have written in itself.
PLATFORM_DATABASE = Database("postgres", 5432, "mlflow", "mlflow", "mlflow_auth")
UNIT_DATABASE = Database("db", 5433, "tracking", "tracker", "accounts")


def unit_endpoint() -> DatabaseEndpoint:
    """UNIT_DATABASE with UNIT_PASSWORD, as a component takes it (call it under mocks)."""
    return DatabaseEndpoint(
        host=UNIT_DATABASE.host,
        port=UNIT_DATABASE.port,
        database=UNIT_DATABASE.database,
        role=UNIT_DATABASE.role,
        password=pulumi.Output.secret(UNIT_PASSWORD),
        auth_database=UNIT_DATABASE.auth_database,
    )


# What a server or image built alone is given: values no stack's defaults share.
UNIT_SERVER = ServerSettings(
    mlflow_version="3.18.1",
    base_image="py:1",
    use_wheelhouse=False,
    public_host="localhost",
    bind_address="127.0.0.1",
    host_port=5000,
    workers=3,
    memory_mb=1024,
    allowed_hosts=(),
    cors_allowed_origins=(),
    auth_enabled=False,
    admin_password_length=30,
    auth_cache_ttl_seconds=45,
    metrics_enabled=False,
    telemetry_enabled=False,
)


# The artifacts volume (Pulumi.yaml's default), and a bucket with every store setting set.
VOLUME_ARTIFACTS = ArtifactSettings(
    store="volume",
    bucket="",
    prefix="",
    endpoint="",
    region="",
    path_style=False,
    access_key_id="",
    secret_access_key="",
    ca_certificate="",
)
STORE_CA = self_signed(["s3.example.internal"], ca=True)
STORE_SECRET_KEY = "s" * 40
BUCKET_ARTIFACTS = ArtifactSettings(
    store="s3",
    bucket="ml-artifacts",
    prefix="teams/unit",
    endpoint="https://s3.example.internal:9000",
    region="eu-central-1",
    path_style=True,
    access_key_id="AKIAUNITTEST",
    secret_access_key=STORE_SECRET_KEY,
    ca_certificate=STORE_CA.certificate,
)
# What the server and gc get for BUCKET_ARTIFACTS: where the store is, never a key.
BUCKET_ENVIRONMENT = [
    "MLFLOW_ARTIFACTS_DESTINATION=s3://ml-artifacts/teams/unit",
    "MLFLOW_S3_ENDPOINT_URL=https://s3.example.internal:9000",
    "AWS_DEFAULT_REGION=eu-central-1",
    "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE=path",
    "AWS_SHARED_CREDENTIALS_FILE=/run/secrets/artifact-store-credentials",
    "AWS_CA_BUNDLE=/run/secrets/artifact-store-ca.pem",
]


def bucket_uploads(uid: str) -> list[dict[str, Any]]:
    """The key pair as the workload's secret file, the store's CA as a public one."""
    return [
        secret_upload(
            "/run/secrets/artifact-store-credentials",
            f"[default]\naws_access_key_id = AKIAUNITTEST\naws_secret_access_key = {STORE_SECRET_KEY}\n",
            uid,
        ),
        config_upload("/run/secrets/artifact-store-ca.pem", STORE_CA.certificate),
    ]


def built(build: Callable[[], T]) -> tuple[EngineMocks, T]:
    """Builds a component alone under fresh mocks.

    Returns once every registration, every `register_outputs` and every pending Output
    has finished (pulumi.runtime.test waits for them and raises what any of them raised),
    so what the mocks recorded is complete: the checks then read plain data.
    """
    mocks = EngineMocks()
    found: list[T] = []

    @pulumi.runtime.test
    def run() -> None:
        install(mocks, "dev")
        found.append(build())

    run()
    [component] = found
    return mocks, component


def children(mocks: EngineMocks, parent: str) -> dict[str, str]:
    """The resources registered under the component named `parent`: name -> type."""
    return {r.name: r.type for r in mocks.registrations.values() if r.parent.endswith(f"::{parent}")}


def registered_outputs(mocks: EngineMocks, name: str) -> dict[str, Any]:
    """What the component named `name` passed to register_outputs."""
    [outputs] = [value for urn, value in mocks.registered_outputs.items() if urn.endswith(f"::{name}")]
    return outputs


# Made as an operator would: valid for both shared stacks' public hosts.
PROVIDED = self_signed(["mlflow.example.internal", "mlflow.staging.example.internal"])
ACME_ROOT = self_signed(["acme-ca.example.internal"], ca=True)
# What each tlsMode sets on top of a shared stack's file (which says internal).
MODES: dict[str, dict[str, Any]] = {
    "internal": {},
    "acme": {
        "tlsMode": "acme",
        "acmeEmail": "ops@example.com",
        "acmeDirectoryUrl": "https://acme.example.internal/acme/directory",
        "acmeCaCertificate": ACME_ROOT.certificate,
    },
    "provided": {"tlsMode": "provided", "tlsCertificate": PROVIDED.certificate, "tlsPrivateKey": PROVIDED.key},
}
# Every stack as committed, and each shared stack in every tlsMode: the dev stack has no proxy ("off").
CONFIGURATIONS = [("dev", "off"), *((stack, mode) for stack in ("staging", "prod") for mode in MODES)]


def mode_overrides(mode: str) -> dict[str, Any]:
    return dict(MODES.get(mode, {}))
