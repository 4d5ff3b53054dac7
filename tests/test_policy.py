"""The policy pack: each rule on hand-made resources, then every rule on what each stack declares.

A `PolicyPack` starts a gRPC server when constructed, so nothing here imports
policy/__main__.py: the rules come from policy/policies.py (the pack's list, assembled
from the rule modules) and their `validate` is called directly, with the SDK's own
argument classes and its unknown-checking proxy around the properties, as the engine
would call them. The readers and recognisers they share are tested from their own
modules (policy/readers.py, policy/identify.py).
"""

from __future__ import annotations

import ast
import copy
import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from policy import identify, readers, rules_containers
from policy.policies import POLICIES
from tests import harness
from tests.conftest import CONTAINER, IMAGE, NETWORK, RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME
from tools.stack_config import PROJECT_DIR, STACKS, stack_config

POLICY_DIR = PROJECT_DIR / "policy"
SERVICE = "docker:index/service:Service"
SWARM_SECRET = "docker:index/secret:Secret"
SERVICE_CONFIG = "docker:index/serviceConfig:ServiceConfig"
# What `make deploy` and the workflows pass as `--policy-pack-config` for a stack, when the file exists.
PACK_CONFIG_DIR = POLICY_DIR / "config"
DEV_KIND = {"environmentKind": "dev"}
BY_NAME = {policy.name: policy for policy in POLICIES}
PASSWORD = "Zq7hT2mKx9PwL4vNc8RbY3sJ"  # the shape of a generated one: 24 letters and digits
IMAGE_ID = "sha256:" + "ab" * 32
PROXY_IMAGE_ID = "sha256:" + "cd" * 32

Violations = dict[str, list[str]]


# --- Calling the policies --------------------------------------------------------------------


def _options(protect: bool = False, additional_secret_outputs: list[str] | None = None) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=protect,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=additional_secret_outputs or [],
    )


def _urn(type_token: str, name: str, stack: str = "dev") -> str:
    return f"urn:pulumi:{stack}::mlflow-platform::{type_token}::{name}"


def _pack_config(stack: str) -> dict[str, dict[str, Any]]:
    """The committed pack config of a stack (policy name -> config); none for a stack without a file."""
    path = PACK_CONFIG_DIR / f"{stack}.json"
    if not path.exists():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _check_resource(
    policy_name: str,
    type_token: str,
    props: Mapping[str, Any],
    stack: str = "dev",
    protect: bool = False,
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """The messages one resource policy reports for one resource."""
    policy = BY_NAME[policy_name]
    assert isinstance(policy, ResourceValidationPolicy)
    messages: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        messages.append(message)

    args = ResourceValidationArgs(
        type_token,
        unknown_checking_proxy(copy.deepcopy(dict(props))),
        _urn(type_token, "subject", stack),
        "subject",
        _options(protect),
        None,
        dict(config or {}),
    )
    policy.validate(args, report)
    return messages


def _stack_resource(
    type_token: str,
    name: str,
    props: Mapping[str, Any],
    additional_secret_outputs: list[str] | None = None,
    stack: str = "dev",
) -> PolicyResource:
    return PolicyResource(
        type_token,
        unknown_checking_proxy(copy.deepcopy(dict(props))),
        _urn(type_token, name, stack),
        name,
        _options(additional_secret_outputs=additional_secret_outputs),
        None,
        None,
        [],
        {},
    )


def _check_stack(
    policy_name: str, resources: list[PolicyResource], config: Mapping[str, Any] | None = None
) -> list[tuple[str | None, str]]:
    """(urn, message) of every violation one stack policy reports."""
    policy = BY_NAME[policy_name]
    assert isinstance(policy, StackValidationPolicy)
    reported: list[tuple[str | None, str]] = []

    def report(message: str, urn: str | None = None) -> None:
        reported.append((urn, message))

    policy.validate(StackValidationArgs(resources, dict(config or {})), report)
    return reported


# What the program declares, reduced to what the rules look at.
def _postgres(**changes: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "image": IMAGE_ID,
        "envs": ["POSTGRES_USER=mlflow", "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password", "PGDATA=/d/pg"],
        "healthcheck": {"tests": ["CMD", "pg_isready", "-q"], "interval": "5s"},
        "restart": "unless-stopped",
        "labels": [{"label": "org.mlflow-platform.role", "value": "database"}],
    }
    return {**props, **changes}


def _mlflow(**changes: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "image": IMAGE_ID,
        "command": ["--host", "0.0.0.0", "--port", "5000", "--serve-artifacts", "--app-name", "basic-auth"],
        "envs": ["POSTGRES_HOST=postgres", "POSTGRES_PORT=5432", "MLFLOW_AUTH_ADMIN_PASSWORD_FILE=/run/secrets/a"],
        "ports": [{"internal": 5000.0, "external": 5000.0, "ip": "0.0.0.0", "protocol": "tcp"}],
        "healthcheck": {"tests": ["CMD", "python", "-c", "probe"]},
        "restart": "unless-stopped",
        "labels": [{"label": "org.mlflow-platform.role", "value": "tracking-server"}],
    }
    return {**props, **changes}


NO_AUTH = ["--host", "0.0.0.0", "--port", "5000", "--serve-artifacts"]


# --- The pack itself -------------------------------------------------------------------------


def test_every_policy_is_mandatory_named_once_and_described() -> None:
    assert len(BY_NAME) == len(POLICIES), "two policies share a name"
    for policy in POLICIES:
        assert policy.enforcement_level == EnforcementLevel.MANDATORY, policy.name
        # A reviewer reads this in the PR comment: a sentence, not a tag.
        assert len(policy.description) >= 60, policy.name
        assert policy.description.endswith("."), policy.name
        assert policy.remediation_steps, policy.name
    assert isinstance(BY_NAME["container-env-no-secret-values"], StackValidationPolicy)


def test_pack_entry_point_builds_a_mandatory_pack_of_all_policies() -> None:
    # Parsed, not imported: constructing the PolicyPack would start its server and block.
    tree = ast.parse((POLICY_DIR / "__main__.py").read_text(encoding="utf-8"))
    [call] = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and ast.unparse(node.func) == "PolicyPack"]
    keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in call.keywords}
    assert keywords["policies"] == "POLICIES"
    assert keywords["enforcement_level"] == "EnforcementLevel.MANDATORY"
    assert keywords["name"] == "'mlflow-platform'"


def test_pack_project_file_and_requirements_match_the_repository() -> None:
    project = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text(encoding="utf-8"))
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}

    def pins(path: Path) -> dict[str, str]:
        lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return dict(line.split("==", 1) for line in lines if "==" in line)

    # The *.in inputs of the hash-locked requirement files (tests/test_requirements_locks.py checks the locks).
    pack, program = pins(POLICY_DIR / "requirements.in"), pins(PROJECT_DIR / "requirements.in")
    dev = pins(PROJECT_DIR / "requirements-dev.in")
    assert pack == {"pulumi": program["pulumi"], "pulumi-policy": dev["pulumi-policy"]}


# --- Each rule on hand-made resources --------------------------------------------------------


def test_image_pin_problem() -> None:
    pinned = ["postgres:17.11", "registry.example.com:5000/team/postgres:17.11", f"postgres@{IMAGE_ID}", IMAGE_ID]
    for reference in pinned:
        assert rules_containers.image_pin_problem(reference) is None, reference
    assert "latest" in (rules_containers.image_pin_problem("postgres:latest") or "")
    assert "no tag" in (rules_containers.image_pin_problem("postgres") or "")
    # The port of a registry is not a tag.
    assert "no tag" in (rules_containers.image_pin_problem("registry.example.com:5000/postgres") or "")
    assert rules_containers.image_pin_problem("") == "is empty"


def test_stack_of_reads_the_urn() -> None:
    assert readers.stack_of(_urn(VOLUME, "v", "prod")) == "prod"
    assert readers.stack_of("not-a-urn") == ""
    # Long enough that a reading which skipped the prefix check would find a "stack" in it.
    assert readers.stack_of("stack:pulumi:prod::mlflow-platform::t::n") == ""


def test_public_bindings_name_every_way_in_and_only_those() -> None:
    props = {
        "ports": [
            {"internal": 5000.0, "external": 5000.0},  # no ip: Docker publishes on every interface
            {"internal": 5001.0, "external": 5001.0, "ip": ""},  # the same
            {"internal": 5002.0, "external": 5002.0, "ip": "127.0.0.1"},  # loopback: not beyond the host
            {"internal": 5003.0, "external": 5003.0, "ip": "[::1]"},  # loopback, bracketed
            UNKNOWN_STRING_VALUE,  # not known during preview: counted, and the rest still read
            {"internal": 5004.0, "external": True, "ip": "10.0.0.5"},  # a boolean is no port number
            {"internal": "5005", "external": 5005, "ip": "mlflow.internal"},  # a name is no loopback address
            {"internal": 5006.0, "external": 5006.0, "ip": 7},  # not a string: Docker's default
            {"internal": 5007.0, "external": 5007.0, "ip": "X127.0.0.1"},  # only brackets are stripped
        ],
        "networkMode": "host",
        "publishAllPorts": True,
    }
    assert readers.public_bindings(unknown_checking_proxy(props)) == [
        "0.0.0.0 (Docker's default):5000 -> 5000",
        "0.0.0.0 (Docker's default):5001 -> 5001",
        "ports[4] (not known during preview)",
        "10.0.0.5:None -> 5004",
        "mlflow.internal:5005 -> None",
        "0.0.0.0 (Docker's default):5006 -> 5006",
        "X127.0.0.1:5007 -> 5007",
        "the host network (every port it listens on)",
        "publishAllPorts (every port the image exposes, on every interface)",
    ]


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        (_postgres(), 0),
        (_mlflow(), 0),
        (_postgres(ports=[{"internal": 5432.0, "external": 5432.0, "ip": "127.0.0.1"}]), 1),
        # Any other container forwarding host port 5432 takes Postgres's well-known port on the host.
        (_mlflow(ports=[{"internal": 5000.0, "external": 5432.0, "ip": "127.0.0.1"}]), 1),
        # The Postgres container publishes nothing, whatever the port.
        (_postgres(ports=[{"internal": 8080.0, "external": 8080.0}]), 1),
        (_postgres(networkMode="host"), 1),
        (_postgres(publishAllPorts=True), 1),
        (_postgres(publishAllPorts=False), 0),
        # Recognised by its image when the program's labels are missing.
        ({"image": "postgres:17.11", "ports": [{"internal": 6543.0, "external": 6543.0}]}, 1),
        (_postgres(ports=[UNKNOWN_STRING_VALUE]), 1),
    ],
)
def test_postgres_not_published(props: dict[str, Any], expected: int) -> None:
    assert len(_check_resource("postgres-not-published", CONTAINER, props)) == expected


_PUBLISHED = [{"internal": 6543.0, "external": 6543.0}]


@pytest.mark.parametrize(
    ("props", "is_postgres"),
    [
        # Each sign alone marks the database: the role label, PGDATA, an image named postgres or postgis.
        ({"image": "example/db:1", "labels": [{"label": "org.mlflow-platform.role", "value": "database"}]}, True),
        ({"image": "example/db:1", "labels": [{"label": "org.mlflow-platform.role", "value": "server"}]}, False),
        ({"image": "example/db:1", "envs": ["PGDATA=/var/lib/pg"]}, True),
        ({"image": "example/db:1", "envs": ["pgdata=/var/lib/pg"]}, False),
        ({"image": "registry.example.com:5000/library/postgres:17.11"}, True),
        ({"image": "registry.example.com/gis/postgis:17-3.5@sha256:" + "a" * 64}, True),
        ({"image": "registry.example.com/library/mariadb:11"}, False),
        # No sign known: an image not known during preview says nothing either.
        ({"image": UNKNOWN_STRING_VALUE}, False),
        ({}, False),
    ],
)
def test_the_database_container_is_recognised_by_any_of_its_signs(props: dict[str, Any], is_postgres: bool) -> None:
    messages = _check_resource("postgres-not-published", CONTAINER, {**props, "ports": _PUBLISHED})
    assert messages == (["ports[0] publishes port 6543 of the Postgres container on the host."] if is_postgres else [])


def test_the_postgres_container_is_told_each_way_it_publishes_in_full() -> None:
    props = _postgres(
        ports=[
            UNKNOWN_STRING_VALUE,
            {"internal": 5432.0, "external": 15432.0},
            {"internal": 8080.0, "external": 8080.0},
        ],
        networkMode="host",
        publishAllPorts=True,
    )
    assert _check_resource("postgres-not-published", CONTAINER, props) == [
        "ports[0] of the Postgres container publishes a port not known during preview.",
        "ports[1] publishes port 5432 (internal 5432, external 15432).",
        "ports[2] publishes port 8080 of the Postgres container on the host.",
        "the Postgres container runs on the host network, which exposes port 5432 on the host.",
        "publishAllPorts publishes the port the Postgres image exposes (5432) on every interface.",
    ]


def test_publish_all_ports_is_named_in_the_violation() -> None:
    assert _check_resource("postgres-not-published", CONTAINER, _postgres(publishAllPorts=True)) == [
        "publishAllPorts publishes the port the Postgres image exposes (5432) on every interface."
    ]


_NO_HEALTHCHECK = "the container declares no healthcheck (`healthcheck.tests` is empty)."


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        (_postgres(), None),
        ({k: v for k, v in _postgres().items() if k != "healthcheck"}, _NO_HEALTHCHECK),
        (_postgres(healthcheck={"tests": []}), _NO_HEALTHCHECK),
        (
            _postgres(healthcheck={"tests": ["NONE"]}),
            "the healthcheck is disabled (`healthcheck.tests` starts with NONE).",
        ),
        # Only a task container (attach and not mustRun) may go without a healthcheck.
        ({**_postgres(healthcheck={"tests": []}), "attach": True, "mustRun": False}, None),
        ({**_postgres(healthcheck={"tests": []}), "attach": False, "mustRun": False}, _NO_HEALTHCHECK),
        ({**_postgres(healthcheck={"tests": []}), "attach": True, "mustRun": True}, _NO_HEALTHCHECK),
    ],
)
def test_container_healthcheck(props: dict[str, Any], expected: str | None) -> None:
    messages = _check_resource("container-healthcheck", CONTAINER, props)
    assert messages == ([] if expected is None else [expected])
    # Other resource types are none of this policy's business.
    assert _check_resource("container-healthcheck", VOLUME, {"name": "v"}) == []


_DOCKER_DEFAULT = "absent (Docker's default, 'no')"


@pytest.mark.parametrize(
    ("restart", "shown"),
    [("unless-stopped", None), ("always", None), ("on-failure", None), ("no", "'no'"), (None, _DOCKER_DEFAULT)],
)
def test_container_restart_policy(restart: str | None, shown: str | None) -> None:
    props = {k: v for k, v in _postgres(restart=restart).items() if v is not None}
    expected = [] if shown is None else [f"`restart` is {shown}; accepted: always, on-failure, unless-stopped."]
    assert _check_resource("container-restart-policy", CONTAINER, props) == expected


_TASKS_ACCEPTED = "accepted: `ulimits` [{name: nproc, soft: N, hard: N}] with 0 < soft <= hard, run as a non-root user."
_NPROC = [{"name": "nproc", "soft": 2048.0, "hard": 2048.0}]


@pytest.mark.parametrize(
    ("changes", "messages"),
    [
        ({"user": "999:999", "ulimits": _NPROC}, []),
        ({"user": "999", "ulimits": [{"name": "nofile", "soft": 1024, "hard": 4096}, *_NPROC]}, []),
        ({"user": "999:999", "ulimits": [{"name": "nproc", "soft": 64, "hard": 128}]}, []),
        # Not known during preview: judged once known.
        ({"user": "999:999", "ulimits": UNKNOWN_STRING_VALUE}, []),
        ({"user": UNKNOWN_STRING_VALUE, "ulimits": _NPROC}, []),
        (
            {"user": "999:999"},
            [f"the container declares no task limit (no `ulimits` entry named nproc); {_TASKS_ACCEPTED}"],
        ),
        (
            {"user": "999:999", "ulimits": [{"name": "nofile", "soft": 1024, "hard": 4096}]},
            [f"the container declares no task limit (no `ulimits` entry named nproc); {_TASKS_ACCEPTED}"],
        ),
        # -1 is Docker's "unlimited"; a soft limit above the hard one is no limit the kernel keeps.
        (
            {"user": "999:999", "ulimits": [{"name": "nproc", "soft": -1, "hard": -1}]},
            [f"the nproc limit (soft -1, hard -1) bounds nothing; {_TASKS_ACCEPTED}"],
        ),
        (
            {"user": "999:999", "ulimits": [{"name": "nproc", "soft": 256, "hard": 128}]},
            [f"the nproc limit (soft 256, hard 128) bounds nothing; {_TASKS_ACCEPTED}"],
        ),
        # The kernel never applies RLIMIT_NPROC to root.
        (
            {"ulimits": _NPROC},
            [
                "the container runs as root (no `user` (the image's default, root in the official images)), which "
                f"the nproc limit does not bind; {_TASKS_ACCEPTED}"
            ],
        ),
        (
            {"user": "root", "ulimits": _NPROC},
            [f"the container runs as root (`user` 'root'), which the nproc limit does not bind; {_TASKS_ACCEPTED}"],
        ),
        (
            {"user": "0:999", "ulimits": _NPROC},
            [f"the container runs as root (`user` '0:999'), which the nproc limit does not bind; {_TASKS_ACCEPTED}"],
        ),
    ],
)
def test_container_task_limit(changes: dict[str, Any], messages: list[str]) -> None:
    # One-shot task containers too: a job can fork as well as a service.
    for props in (_postgres(**changes), {**_postgres(**changes), "attach": True, "mustRun": False}):
        assert _check_resource("container-task-limit", CONTAINER, props) == messages
    assert _check_resource("container-task-limit", REMOTE_IMAGE, {"name": "postgres:17.11"}) == []


@pytest.mark.parametrize(
    ("type_token", "props", "expected"),
    [
        (CONTAINER, _postgres(), 0),
        (CONTAINER, _postgres(image="postgres:17.11"), 0),
        # The image ID comes from an image still to be pulled: that image's own name is checked.
        (CONTAINER, _postgres(image=UNKNOWN_STRING_VALUE), 0),
        (CONTAINER, _postgres(image="postgres:latest"), 1),
        (CONTAINER, _postgres(image="postgres"), 1),
        (REMOTE_IMAGE, {"name": "postgres:17.11", "keepLocally": True}, 0),
        (REMOTE_IMAGE, {"name": "postgres:latest"}, 1),
        (REMOTE_IMAGE, {"name": "mirror.example.com:5000/postgres"}, 1),
        (
            IMAGE,
            {"imageName": "mlflow-platform/mlflow:3.17.2-dev", "build": {"args": {"BASE_IMAGE": "python:3.12"}}},
            0,
        ),
        (IMAGE, {"imageName": "mlflow-platform/mlflow", "build": {"args": {"BASE_IMAGE": "python:3.12"}}}, 1),
        (IMAGE, {"imageName": "mlflow-platform/mlflow:1", "build": {"args": {"BASE_IMAGE": "python"}}}, 1),
        (IMAGE, {"imageName": "mlflow-platform/mlflow:1", "build": {"args": {"MLFLOW_VERSION": "latest"}}}, 0),
        # An unknown name (still to be computed) does not end the check: the base image is still checked.
        (IMAGE, {"imageName": UNKNOWN_STRING_VALUE, "build": {"args": {"BASE_IMAGE": "python"}}}, 1),
    ],
)
def test_image_pinned(type_token: str, props: dict[str, Any], expected: int) -> None:
    assert len(_check_resource("image-pinned", type_token, props)) == expected


_PIN = "pin a version tag or an @sha256 digest."


@pytest.mark.parametrize(
    ("type_token", "props", "message"),
    [
        (
            CONTAINER,
            {"image": "postgres"},
            f"`image` = 'postgres' has no tag, so Docker resolves it to 'latest'; {_PIN}",
        ),
        (REMOTE_IMAGE, {"name": "postgres:latest"}, f"`name` = 'postgres:latest' uses the moving 'latest' tag; {_PIN}"),
        (REMOTE_IMAGE, {"name": "postgres:"}, f"`name` = 'postgres:' has an empty tag; {_PIN}"),
        (
            IMAGE,
            {"imageName": "mlflow-platform/mlflow", "build": {"args": {"BASE_IMAGE": "python:3.12"}}},
            f"`imageName` = 'mlflow-platform/mlflow' has no tag, so Docker resolves it to 'latest'; {_PIN}",
        ),
        (
            IMAGE,
            {"imageName": "mlflow-platform/mlflow:1", "build": {"args": {"BASE_IMAGE": "python"}}},
            f"`build.args.BASE_IMAGE` = 'python' has no tag, so Docker resolves it to 'latest'; {_PIN}",
        ),
    ],
)
def test_image_pinned_names_the_input_in_full(type_token: str, props: dict[str, Any], message: str) -> None:
    assert _check_resource("image-pinned", type_token, props) == [message]


POSTGRES_DIGEST = "sha256:" + "f4" * 32
_DIGEST_ACCEPTED = (
    "is not pinned by digest: the tag can be moved to other contents. Accepted: a reference with its digest, "
    "'name:tag@sha256:<64 hex digits>' such as 'postgres:17.11@sha256:...', or an image ID (every stack is shared "
    "unless the policy pack config sets environmentKind: dev (policy/config/<stack>.json))."
)


def test_is_digest_pinned() -> None:
    pinned = [IMAGE_ID, f"postgres@{IMAGE_ID}", f"postgres:17.11@{POSTGRES_DIGEST}", f" mirror:5000/pg:17@{IMAGE_ID} "]
    assert [reference for reference in pinned if not rules_containers.is_digest_pinned(reference)] == []
    by_tag = ["postgres:17.11", "postgres", "postgres@sha256:abc", f"postgres:17.11@sha256:{'F4' * 32}", ""]
    assert [reference for reference in by_tag if rules_containers.is_digest_pinned(reference)] == []


@pytest.mark.parametrize(
    ("type_token", "props", "messages"),
    [
        (CONTAINER, _postgres(image=IMAGE_ID), []),
        (CONTAINER, _postgres(image=f"postgres:17.11@{POSTGRES_DIGEST}"), []),
        # Still to be pulled: the image resource's own reference is judged instead.
        (CONTAINER, _postgres(image=UNKNOWN_STRING_VALUE), []),
        (
            CONTAINER,
            _postgres(image="postgres:17.11"),
            [f"`image` = 'postgres:17.11' in the shared stack 'prod' {_DIGEST_ACCEPTED}"],
        ),
        (REMOTE_IMAGE, {"name": f"postgres:17.11@{POSTGRES_DIGEST}", "keepLocally": True}, []),
        (
            REMOTE_IMAGE,
            {"name": "postgres:17.11", "keepLocally": True},
            [f"`name` = 'postgres:17.11' (config key postgresImage) in the shared stack 'prod' {_DIGEST_ACCEPTED}"],
        ),
        # A built image's own name is local (never pushed); its base images are what is pulled.
        (
            IMAGE,
            {"imageName": "mlflow-platform/proxy:prod", "build": {"args": {"CADDY_IMAGE": f"caddy:2.11.7@{IMAGE_ID}"}}},
            [],
        ),
        (
            IMAGE,
            {"imageName": "mlflow-platform/proxy:prod", "build": {"args": {"CADDY_IMAGE": "caddy:2.11.7"}}},
            [
                "`build.args.CADDY_IMAGE` = 'caddy:2.11.7' (config key proxyImage) in the shared stack 'prod' "
                f"{_DIGEST_ACCEPTED}"
            ],
        ),
        (
            IMAGE,
            {
                "imageName": "mlflow-platform/mlflow:3.17.2-prod",
                "build": {"args": {"BASE_IMAGE": "python:3.12-slim-bookworm", "MLFLOW_VERSION": "3.17.2"}},
            },
            [
                "`build.args.BASE_IMAGE` = 'python:3.12-slim-bookworm' (config key baseImage) in the shared stack "
                f"'prod' {_DIGEST_ACCEPTED}"
            ],
        ),
        # An image build argument the program does not pass still names no key it does not know.
        (
            IMAGE,
            {"imageName": "x:1", "build": {"args": {"OTHER_IMAGE": "alpine:3.20"}}},
            [f"`build.args.OTHER_IMAGE` = 'alpine:3.20' in the shared stack 'prod' {_DIGEST_ACCEPTED}"],
        ),
    ],
)
def test_shared_stack_image_digests_in_full(type_token: str, props: dict[str, Any], messages: list[str]) -> None:
    assert _check_resource("shared-stack-image-digests", type_token, props, stack="prod") == messages


@pytest.mark.parametrize(
    ("stack", "config", "passes"),
    [
        ("dev", DEV_KIND, True),
        # Only the explicit kind exempts a stack, never its name.
        ("dev", {}, False),
        ("dev", {"environmentKind": "shared"}, False),
        ("staging", {}, False),
        ("production", {}, False),
    ],
)
def test_a_tag_is_accepted_only_in_a_dev_stack(stack: str, config: dict[str, Any], passes: bool) -> None:
    messages = _check_resource(
        "shared-stack-image-digests", REMOTE_IMAGE, {"name": "postgres:17.11"}, stack=stack, config=config
    )
    assert (messages == []) is passes, messages


@pytest.mark.parametrize(
    ("env", "passes"),
    [
        ("POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password", True),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY_FILE=/run/secrets/flask-secret-key", True),
        ("HOME=/tmp", True),
        # Empty: nothing to leak.
        ("MLFLOW_TRACKING_TOKEN=", True),
        ("POSTGRES_PASSWORD=hunter2", False),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY=abc", False),
        ("GITHUB_TOKEN=ghp_x", False),
        ("db_password=x", False),
        # A *_FILE variable is only harmless when it names a file.
        ("POSTGRES_PASSWORD_FILE=hunter2", False),
    ],
)
def test_container_env_secret_names(env: str, passes: bool) -> None:
    props = _postgres(envs=["POSTGRES_USER=mlflow", env])
    messages = _check_resource("container-env-secret-names", CONTAINER, props)
    assert (messages == []) is passes, messages
    if not passes:
        assert messages[0].startswith("envs[1] ")


def test_container_env_no_secret_values_by_value_and_by_dependency() -> None:
    password = _stack_resource(RANDOM_PASSWORD, "pg-password", {"length": 24.0, "result": PASSWORD})
    ok = _stack_resource(CONTAINER, "postgres", _postgres())
    assert _check_stack("container-env-no-secret-values", [password, ok]) == []

    # Whatever the name, the generated value itself gives it away: in envs, in the command.
    leaks_env = _stack_resource(CONTAINER, "leaks-env", _mlflow(envs=[f"DATABASE_URL=postgresql://u:{PASSWORD}@pg/db"]))
    leaks_arg = _stack_resource(CONTAINER, "leaks-arg", _mlflow(command=["--backend-store-uri", f"x://{PASSWORD}@y"]))
    reported = _check_stack("container-env-no-secret-values", [password, leaks_env, leaks_arg])
    assert [urn for urn, _ in reported] == [leaks_env.urn, leaks_arg.urn]
    assert "envs[0] (DATABASE_URL)" in reported[0][1]
    assert "pg-password" in reported[0][1]
    assert "command[1]" in reported[1][1]

    # In preview the password is not known yet; the property dependency still names it.
    unknown_password = _stack_resource(RANDOM_PASSWORD, "pg-password", {"result": UNKNOWN_STRING_VALUE})
    computed = _stack_resource(CONTAINER, "computed", _postgres(envs=["POSTGRES_USER=mlflow", UNKNOWN_STRING_VALUE]))
    computed.property_dependencies = {"envs": [unknown_password], "uploads": [unknown_password]}
    reported = _check_stack("container-env-no-secret-values", [unknown_password, computed])
    [(urn, message)] = reported
    assert urn == computed.urn
    assert "`envs` of computed is computed from the secret output of pg-password" in message

    # Any output marked secret counts, not only random passwords.
    token = _stack_resource("custom:index:Token", "token", {"value": "t0k3n-t0k3n-t0k3n"}, ["value"])
    uses_token = _stack_resource(CONTAINER, "uses-token", _mlflow(envs=["AUTH=Bearer t0k3n-t0k3n-t0k3n"]))
    assert len(_check_stack("container-env-no-secret-values", [token, uses_token])) == 1


def test_marking_an_output_secret_does_not_exempt_a_resource_s_inputs() -> None:
    password = _stack_resource(RANDOM_PASSWORD, "pg-password", {"length": 24.0, "result": PASSWORD})
    # Former bypass: `additional_secret_outputs` made the container a secret source, whose inputs went unread.
    marked = _stack_resource(CONTAINER, "marked", _mlflow(envs=[f"DB=x:{PASSWORD}@h"]), ["envs"])
    marked.property_dependencies = {"command": [password]}
    instead = "; pass it as an uploaded file instead."
    assert _check_stack("container-env-no-secret-values", [password, marked]) == [
        (marked.urn, f"`command` of marked is computed from the secret output of pg-password{instead}"),
        (marked.urn, f"envs[0] (DB) of marked contains the secret generated by pg-password{instead}"),
    ]
    # A resource's own secret output is no leak of itself; another resource's copy of it still is.
    token = _stack_resource("custom:index:Token", "token", {"value": "t0k3n-t0k3n-t0k3n"}, ["value"])
    assert _check_stack("container-env-no-secret-values", [token]) == []
    copied = _stack_resource(
        "custom:index:Token", "copy", {"seed": "t0k3n-t0k3n-t0k3n", "value": "v-v-v-v-v"}, ["value"]
    )
    assert _check_stack("container-env-no-secret-values", [token, copied]) == [
        (copied.urn, f"seed of copy contains the secret generated by token{instead}")
    ]


def test_secret_values_in_any_input_of_any_resource_are_caught() -> None:
    password = _stack_resource(RANDOM_PASSWORD, "pg-password", {"length": 24.0, "result": PASSWORD})
    leaks = [
        _stack_resource(CONTAINER, "in-healthcheck", _mlflow(healthcheck={"tests": ["CMD", "pg_isready", PASSWORD]})),
        _stack_resource(CONTAINER, "in-label", _mlflow(labels=[{"label": "db", "value": f"x:{PASSWORD}"}])),
        _stack_resource(IMAGE, "in-build-arg", {"imageName": "m:1", "build": {"args": {"DB_URL": f"x{PASSWORD}"}}}),
        _stack_resource("docker:index/network:Network", "in-network-label", {"options": {"o": PASSWORD}}),
    ]
    reported = _check_stack("container-env-no-secret-values", [password, *leaks])
    assert [urn for urn, _ in reported] == [leak.urn for leak in leaks]
    assert reported[0][1].startswith("healthcheck.tests[2] of in-healthcheck contains the secret generated by pg")
    assert reported[1][1].startswith("labels[0].value of in-label contains")
    assert reported[2][1].startswith("build.args.DB_URL of in-build-arg contains")
    assert reported[3][1].startswith("options.o of in-network-label contains")


def test_secret_value_violations_in_full() -> None:
    short = "Ab3dEf7h"  # MIN_SECRET_LENGTH (8) characters: still a secret
    one = _stack_resource(RANDOM_PASSWORD, "pw-one", {"length": 8.0, "result": short})
    two = _stack_resource(RANDOM_PASSWORD, "pw-two", {"length": 24.0, "result": PASSWORD})
    app = _stack_resource(
        CONTAINER,
        "app",
        _mlflow(
            envs=[f"DATABASE_URL=postgresql://u:{PASSWORD}@h/db?sslmode=require"],
            labels=[{"label": "x", "value": short}],
        ),
    )
    app.property_dependencies = {"command": [two, one]}
    # Only a container's uploads are the way in: another resource's input of that name is not.
    other = _stack_resource(IMAGE, "img", {"imageName": "m:1", "uploads": [{"content": PASSWORD}]})
    tail = "; pass it as an uploaded file instead."
    assert _check_stack("container-env-no-secret-values", [one, two, app, other]) == [
        (app.urn, "`command` of app is computed from the secret output of pw-one, pw-two" + tail),
        (app.urn, "envs[0] (DATABASE_URL) of app contains the secret generated by pw-two" + tail),
        (app.urn, "labels[0].value of app contains the secret generated by pw-one" + tail),
        (other.urn, "uploads[0].content of img contains the secret generated by pw-two" + tail),
    ]


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"envs": ["URL=postgresql://h/db?sslmode=require", "EMPTY=", UNKNOWN_STRING_VALUE]}, None),
        ({"labels": [{"label": "a", "value": UNKNOWN_STRING_VALUE}, {"label": "b", "value": "c"}]}, {"b": "c"}),
        ({"labels": [{"label": UNKNOWN_STRING_VALUE, "value": "v"}, {"label": "d", "value": ""}]}, {"d": ""}),
    ],
)
def test_envs_and_labels_read_only_what_is_known(props: dict[str, Any], expected: dict[str, str] | None) -> None:
    proxied = unknown_checking_proxy(props)
    if expected is None:
        assert readers.envs(proxied) == [(0, "URL", "postgresql://h/db?sslmode=require"), (1, "EMPTY", "")]
    else:
        assert readers.labels(proxied) == expected


def test_secret_values_in_uploads_and_in_secret_handling_resources_are_allowed() -> None:
    password = _stack_resource(RANDOM_PASSWORD, "pg-password", {"length": 24.0, "result": PASSWORD})
    # The one intended way into a container: a file under /run/secrets.
    uploads = _postgres(uploads=[{"file": "/run/secrets/postgres-password", "content": PASSWORD}])
    container = _stack_resource(CONTAINER, "postgres", uploads)
    container.property_dependencies = {"uploads": [password]}
    # A certificate signed with a generated key lives in the (encrypted) state only.
    key = _stack_resource("tls:index/privateKey:PrivateKey", "ca-key", {"privateKeyPem": "-----BEGIN KEY-----x"})
    cert = _stack_resource("tls:index/selfSignedCert:SelfSignedCert", "ca", {"privateKeyPem": "-----BEGIN KEY-----x"})
    cert.property_dependencies = {"privateKeyPem": [key]}
    assert _check_stack("container-env-no-secret-values", [password, container, key, cert]) == []
    # The same key computed into a container's label is caught, by dependency.
    labelled = _stack_resource(CONTAINER, "labelled", _postgres())
    labelled.property_dependencies = {"labels": [key]}
    [(urn, message)] = _check_stack("container-env-no-secret-values", [key, labelled])
    assert urn == labelled.urn
    assert message.startswith("`labels` of labelled is computed from the secret output of ca-key")


@pytest.mark.parametrize(
    ("stack", "config", "protect", "passes"),
    [
        ("prod", {}, True, True),
        ("dev", DEV_KIND, False, True),
        ("prod", {}, False, False),
        ("staging", {}, False, False),
        # Former bypasses: only the exact names 'staging' and 'prod' were protected.
        ("production", {}, False, False),
        ("prod-eu", {}, False, False),
        ("Prod", {}, False, False),
        # The name 'dev' exempts nothing either: only the explicit kind does.
        ("dev", {}, False, False),
        ("dev", {"environmentKind": "shared"}, False, False),
    ],
)
def test_protected_stack_volumes(stack: str, config: dict[str, Any], protect: bool, passes: bool) -> None:
    messages = _check_resource(
        "protected-stack-volumes", VOLUME, {"name": "v-pgdata"}, stack=stack, protect=protect, config=config
    )
    assert (messages == []) is passes
    if not passes:
        assert messages[0].startswith(f"volume 'v-pgdata' of the shared stack '{stack}' is not protected")
        assert "environmentKind: dev" in messages[0]


# --- Postgres on internal networks only (a stack policy) -------------------------------------

FRONT_NET = {"name": "s-front", "driver": "bridge"}
DB_NET = {"name": "s-db", "driver": "bridge", "internal": True}
NOT_INTERNAL = "which is not `internal` (Docker routes it out, and every container on it reaches port 5432)"


def _networks_check(
    postgres_changes: dict[str, Any],
    networks: tuple[dict[str, Any], ...] = (FRONT_NET, DB_NET),
    stack: str = "prod",
    config: dict[str, Any] | None = None,
) -> list[tuple[str | None, str]]:
    declared = [_stack_resource(NETWORK, str(props["name"]), props, stack=stack) for props in networks]
    postgres = _stack_resource(CONTAINER, "pg", _postgres(**postgres_changes), stack=stack)
    return _check_stack("postgres-internal-networks", [*declared, postgres], config)


@pytest.mark.parametrize(
    ("changes", "problems"),
    [
        # The stack's internal network alone, with its alias; or no network at all.
        ({"networksAdvanced": [{"name": "s-db", "aliases": ["postgres"]}]}, []),
        ({"networkMode": "none"}, []),
        # Also on the network with a route out.
        (
            {"networksAdvanced": [{"name": "s-front"}, {"name": "s-db"}]},
            [f"joins the network 's-front', {NOT_INTERNAL}"],
        ),
        # No network named: Docker's default bridge.
        (
            {},
            [f"joins no network of the stack, so Docker puts it on its default bridge, {NOT_INTERNAL}"],
        ),
        ({"networkMode": "host"}, [f"has `networkMode` 'host', {NOT_INTERNAL}"]),
        ({"networkMode": "bridge"}, [f"has `networkMode` 'bridge', {NOT_INTERNAL}"]),
        # A network the stack does not declare may be anything.
        (
            {"networksAdvanced": [{"name": "shared-db"}]},
            ["joins the network 'shared-db', which the stack does not declare, so it may not be internal"],
        ),
    ],
    ids=["internal", "no-network", "front-too", "default-bridge", "host", "bridge-mode", "undeclared"],
)
def test_postgres_internal_networks(changes: dict[str, Any], problems: list[str]) -> None:
    reported = _networks_check(changes)
    assert [message for _, message in reported] == [
        f"the Postgres container pg of the shared stack 'prod' {problem}; Postgres belongs on the stack's internal "
        "database network alone (every stack is shared unless the policy pack config sets environmentKind: dev "
        "(policy/config/<stack>.json))."
        for problem in problems
    ]
    assert {urn for urn, _ in reported} <= {_urn(CONTAINER, "pg", "prod")}


def test_an_internal_network_is_one_declared_internal_and_a_dev_stack_is_exempt() -> None:
    on_db = {"networksAdvanced": [{"name": "s-db"}]}
    # `internal` absent or false: routed out.
    for props in ({"name": "s-db", "driver": "bridge"}, {**DB_NET, "internal": False}):
        [(_, message)] = _networks_check(on_db, networks=(FRONT_NET, props))
        assert f"joins the network 's-db', {NOT_INTERNAL}" in message
    # Only the Postgres container is judged: a client on both networks is fine.
    client = _stack_resource(CONTAINER, "mlflow", _mlflow(networksAdvanced=[{"name": "s-front"}, {"name": "s-db"}]))
    networks = [_stack_resource(NETWORK, "n", props) for props in (FRONT_NET, DB_NET)]
    assert _check_stack("postgres-internal-networks", [*networks, client]) == []
    assert _networks_check({"networkMode": "host"}, stack="dev", config=DEV_KIND) == []
    assert len(_networks_check({"networkMode": "host"}, stack="dev")) == 1


def test_a_network_not_known_during_preview_is_judged_by_the_network_it_comes_from() -> None:
    def check(network: dict[str, Any]) -> list[tuple[str | None, str]]:
        declared = _stack_resource(NETWORK, "n", network)
        postgres = _stack_resource(CONTAINER, "pg", _postgres(networksAdvanced=[{"name": UNKNOWN_STRING_VALUE}]))
        postgres.property_dependencies = {"networksAdvanced": [declared]}
        return _check_stack("postgres-internal-networks", [declared, postgres])

    assert check({"name": UNKNOWN_STRING_VALUE, "internal": True}) == []
    [(_, message)] = check({"name": UNKNOWN_STRING_VALUE, "driver": "bridge"})
    assert "joins networksAdvanced[0], a network not known during preview and not one of the stack's internal" in (
        message
    )


def _built_image(context: str = "./mlflow") -> PolicyResource:
    props = {"imageName": "mlflow-platform/mlflow:3.17.2-prod", "build": {"context": context}, "repoDigest": IMAGE_ID}
    return _stack_resource(IMAGE, "image", props)


def _server_from_image(image: PolicyResource, stack: str = "dev", **changes: Any) -> PolicyResource:
    """A container running the image built from mlflow/ with its default command: no label, no server flags."""
    props = {**{k: v for k, v in _mlflow().items() if k not in ("labels", "command")}, **changes}
    container = _stack_resource(CONTAINER, "server", props, stack=stack)
    container.property_dependencies = {"image": [image]}
    return container


@pytest.mark.parametrize(
    ("stack", "props", "config", "passes"),
    [
        ("prod", _mlflow(), {}, True),
        ("dev", _mlflow(command=NO_AUTH), DEV_KIND, True),
        ("prod", _postgres(), {}, True),
        ("prod", _mlflow(command=NO_AUTH), {}, False),
        ("staging", _mlflow(command=[*NO_AUTH, "--app-name=some-plugin"]), {}, False),
        ("staging", _mlflow(command=[*NO_AUTH, "--app-name=basic-auth"]), {}, True),
        # Former bypasses: a shared stack under another name.
        ("production", _mlflow(command=NO_AUTH), {}, False),
        ("prod-eu", _mlflow(command=NO_AUTH), {}, False),
        ("Prod", _mlflow(command=NO_AUTH), {}, False),
        ("dev", _mlflow(command=NO_AUTH), {}, False),
        # Recognised by `mlflow server`'s own arguments; the role label counts for nothing.
        ("prod", {"command": ["mlflow", "server", "--backend-store-uri", "x"]}, {}, False),
        ("prod", _mlflow(command=NO_AUTH, labels=[]), {}, False),
        # A maintenance job is no server.
        ("prod", {"command": ["mlflow", "gc", "--backend-store-uri", "x"]}, {}, True),
    ],
)
def test_protected_stack_mlflow_auth(stack: str, props: dict[str, Any], config: dict[str, Any], passes: bool) -> None:
    container = _stack_resource(CONTAINER, "server", props, stack=stack)
    reported = _check_stack("protected-stack-mlflow-auth", [container], config)
    assert (reported == []) is passes, reported
    if not passes:
        assert reported[0][1].startswith(f"the tracking server server of the shared stack '{stack}' runs without")


def test_the_server_is_recognised_by_the_image_it_runs() -> None:
    image = _built_image()
    # No label, no `mlflow server` arguments: the Dockerfile's default CMD starts the server without auth.
    by_dependency = _server_from_image(image, stack="prod")
    assert not identify.runs_mlflow_server_arguments(by_dependency.props)
    [(urn, _)] = _check_stack("protected-stack-mlflow-auth", [image, by_dependency])
    assert urn == by_dependency.urn
    # After the image exists, the container's image is the image's ID: recognised by value too.
    by_value = _server_from_image(image, stack="prod")
    by_value.property_dependencies = {}
    assert len(_check_stack("protected-stack-mlflow-auth", [image, by_value])) == 1
    # The same image with its entrypoint replaced by a maintenance command is no server.
    maintenance = _server_from_image(image, stack="prod", entrypoints=["mlflow", "gc"])
    assert _check_stack("protected-stack-mlflow-auth", [image, maintenance]) == []
    # An image built from another directory is someone else's.
    other = _built_image("./caddy")
    assert _check_stack("protected-stack-mlflow-auth", [other, _server_from_image(other, stack="prod")]) == []
    # Published on every interface without auth, in any stack: recognised by its image as well.
    [(urn, message)] = _check_stack("mlflow-public-needs-auth", [image, _server_from_image(image, stack="dev")])
    assert "through 0.0.0.0:5000 -> 5000 without `--app-name basic-auth`" in message
    # ... and the auth flag still satisfies the rule.
    with_auth = _server_from_image(image, stack="prod", entrypoints=[], command=["--app-name", "basic-auth"])
    assert _check_stack("protected-stack-mlflow-auth", [image, with_auth]) == []


def test_the_server_is_recognised_by_each_link_to_its_image_alone() -> None:
    image = _built_image()
    rule = "protected-stack-mlflow-auth"
    # During a preview the container's image is not known yet: the recorded dependency alone links them.
    by_dependency = _server_from_image(image, stack="prod")
    by_dependency.props = unknown_checking_proxy({**_mlflow(command=[]), "image": UNKNOWN_STRING_VALUE})
    assert [urn for urn, _ in _check_stack(rule, [image, by_dependency])] == [by_dependency.urn]
    # The image's name, with no dependency recorded.
    by_name = _stack_resource(
        CONTAINER, "server", _mlflow(command=[], image="mlflow-platform/mlflow:3.17.2-prod"), stack="prod"
    )
    assert [urn for urn, _ in _check_stack(rule, [image, by_name])] == [by_name.urn]
    # A pulled image, or one built without a context, is not the server's, whatever the container runs.
    remote = _stack_resource(REMOTE_IMAGE, "postgres-image", {"name": "postgres:17.11", "repoDigest": IMAGE_ID})
    assert _check_stack(rule, [remote, _server_from_image(remote, stack="prod")]) == []
    no_context = _stack_resource(IMAGE, "other", {"imageName": "team/other:1", "build": {}, "repoDigest": IMAGE_ID})
    assert _check_stack(rule, [no_context, _server_from_image(no_context, stack="prod")]) == []
    # An empty name matches nothing.
    nameless = _stack_resource(IMAGE, "image", {"imageName": "", "build": {"context": "./mlflow"}})
    unnamed = _stack_resource(CONTAINER, "server", _mlflow(command=[], image=""), stack="prod")
    assert _check_stack(rule, [nameless, unnamed]) == []


@pytest.mark.parametrize(
    "command",
    [
        ["--artifacts-destination=/mlflow/artifacts"],
        ["--artifacts-destination=s3://bucket/a=b"],
        ["--artifacts-destination", "/mlflow/artifacts"],
        ["--serve-artifacts"],
    ],
)
def test_a_server_flag_alone_marks_the_server_in_either_form(command: list[str]) -> None:
    assert identify.runs_mlflow_server_arguments(unknown_checking_proxy({"command": command}))


@pytest.mark.parametrize(
    ("entrypoints", "command", "is_server", "authenticated"),
    [
        # A shell's -c script is read as the words it runs, wherever the shell and its script are split.
        ([], ["sh", "-c", "exec mlflow server --host 0.0.0.0"], True, False),
        (["/bin/bash", "-ec"], ["cd /tmp && /opt/mlflow/bin/mlflow server --host 0.0.0.0"], True, False),
        ([], ["bash", "-c", "mlflow server --app-name basic-auth"], True, True),
        ([], ["sh", "-c", "mlflow gc --backend-store-uri x"], False, False),
        # MLflow's own apps served directly by a WSGI/ASGI server; basic-auth's app is authenticated.
        ([], ["gunicorn", "-b", "0.0.0.0:5000", "-w", "4", "mlflow.server:app"], True, False),
        (["python", "-m", "uvicorn"], ["--host", "0.0.0.0", "mlflow.server.fastapi_app:app"], True, False),
        ([], ["gunicorn", "-b", "0.0.0.0:5000", "mlflow.server.auth:create_app()"], True, True),
        ([], ["uvicorn", "--factory", "mlflow.server.auth:create_app"], True, True),
        # The image's basic-auth app, keyed from a file (mlflow/platform_auth.py), is authenticated too.
        ([], ["uvicorn", "--factory", "mlflow_platform_auth:create_app"], True, True),
        ([], ["mlflow", "server", "--app-name", "platform-basic-auth"], True, True),
        ([], ["sh", "-c", "exec gunicorn mlflow.server:app"], True, False),
        # Someone else's app under gunicorn, a module merely named like MLflow's.
        ([], ["gunicorn", "myapp.server:app"], False, False),
        ([], ["gunicorn", "mlflow_extras.server:app"], False, False),
    ],
)
def test_the_server_is_recognised_by_what_it_runs(
    entrypoints: list[str], command: list[str], is_server: bool, authenticated: bool
) -> None:
    props = {"image": IMAGE_ID, "entrypoints": entrypoints, "command": command}
    assert identify.runs_mlflow_server_arguments(props) is is_server
    assert identify.mlflow_auth_enabled(props) is authenticated
    reported = _check_stack("protected-stack-mlflow-auth", [_stack_resource(CONTAINER, "server", props, stack="prod")])
    prefix = "the tracking server server of the shared stack 'prod' runs without"
    assert [message[: len(prefix)] for _, message in reported] == ([prefix] if is_server and not authenticated else [])


@pytest.mark.parametrize(
    ("context", "is_mlflow"),
    [
        ("./mlflow", True),
        ("mlflow", True),
        ("./mlflow/", True),
        # What pulumi-docker may be handed from a program that resolves its paths.
        ("/srv/mlflow-platform/mlflow", True),
        ("/srv/mlflow-platform/mlflow/", True),
        ("mlflow/.", True),
        ("./mlflow/../mlflow", True),
        ("C:\\src\\mlflow-platform\\mlflow", True),
        ("./mlflow/proxy", False),
        ("/srv/mlflow-platform/mlflow/proxy", False),
        ("./caddy", False),
        (".", False),
    ],
)
def test_the_server_image_is_recognised_by_its_build_context_however_written(context: str, is_mlflow: bool) -> None:
    image = _built_image(context)
    assert identify.is_mlflow_image(image) is is_mlflow
    reported = _check_stack("protected-stack-mlflow-auth", [image, _server_from_image(image, stack="prod")])
    assert len(reported) == (1 if is_mlflow else 0)


@pytest.mark.parametrize(
    ("props", "passes"),
    [
        (_mlflow(), True),
        (_mlflow(command=NO_AUTH, ports=[{"internal": 5000.0, "external": 5000.0, "ip": "127.0.0.1"}]), True),
        (_mlflow(command=NO_AUTH, ports=[{"internal": 5000.0, "external": 5000.0, "ip": "::1"}]), True),
        (_mlflow(command=NO_AUTH, ports=[]), True),
        (_mlflow(command=NO_AUTH), False),
        # Without `ip` Docker publishes on every interface.
        (_mlflow(command=NO_AUTH, ports=[{"internal": 5000.0, "external": 5000.0}]), False),
        (_mlflow(command=NO_AUTH, ports=[{"internal": 5000.0, "external": 5000.0, "ip": "10.0.0.5"}]), False),
        (_mlflow(command=NO_AUTH, ports=[], networkMode="host"), False),
        (_mlflow(command=NO_AUTH, ports=[], publishAllPorts=True), False),
        (_mlflow(command=NO_AUTH, ports=[UNKNOWN_STRING_VALUE]), False),
    ],
)
def test_mlflow_public_needs_auth(props: dict[str, Any], passes: bool) -> None:
    assert (_check_stack("mlflow-public-needs-auth", [_stack_resource(CONTAINER, "s", props)]) == []) is passes


def test_an_open_server_is_told_every_way_in_and_a_guarded_one_nothing() -> None:
    public = [{"internal": 5000.0, "external": 5000.0, "ip": "0.0.0.0"}]
    guarded = _stack_resource(CONTAINER, "guarded", _mlflow(ports=public))
    proxy = _stack_resource(CONTAINER, "door", {**_proxy().props, "publishAllPorts": True})
    open_server = _stack_resource(CONTAINER, "open", _mlflow(command=NO_AUTH, ports=public, networkMode="host"))
    # The guarded server comes first: it must not end the search for open ones.
    assert _check_stack("mlflow-public-needs-auth", [guarded, proxy, open_server]) == [
        (
            open_server.urn,
            "the tracking server open is reachable beyond this host through 0.0.0.0:5000 -> 5000; the host network "
            "(every port it listens on); door (0.0.0.0:443 -> 443; publishAllPorts (every port the image exposes, "
            "on every interface)) without `--app-name basic-auth`.",
        )
    ]


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        # Exec form: each argument is one word, spaces and quotes included.
        (["mlflow", "server", "--app-name basic-auth"], ["mlflow", "server", "--app-name basic-auth"]),
        # Only a shell's -c makes the next argument a script; python's is not split.
        (["python", "-c", "import a, b", "--x 'y z'"], ["python", "-c", "import a, b", "--x 'y z'"]),
        (["/bin/sh", "-ec", "exec mlflow server"], ["/bin/sh", "-ec", "exec", "mlflow", "server"]),
        # Everything after the script is read as words too ($0, $1...), each argument in turn.
        (
            ["sh", "-c", 'exec "$@"', "sh", "--app-name 'basic-auth'"],
            ["sh", "-c", "exec", "$@", "sh", "--app-name", "basic-auth"],
        ),
    ],
)
def test_the_words_of_a_command(arguments: list[str], words: list[str]) -> None:
    assert readers._words(unknown_checking_proxy({"command": arguments})) == words


@pytest.mark.parametrize(
    ("arguments", "enabled"),
    [
        (["mlflow", "server", "--app-name", "basic-auth"], True),
        (["mlflow", "server", "--app-name=basic-auth"], True),
        (["mlflow", "server", "--app-name", "platform-basic-auth"], True),
        (["mlflow", "server", "--app-name=platform-basic-auth"], True),
        # One argv word is not the option and its value: MLflow would not start basic-auth.
        (["mlflow", "server", "--app-name basic-auth"], False),
        (["mlflow", "server", "--app-name"], False),
        (["mlflow", "server", "--app-name", "other", "--static-prefix", "basic-auth"], False),
        (["mlflow", "server", "--app-name=basic-auth=1"], False),
        (["mlflow", "server", "--app-name=x=basic-auth"], False),
    ],
)
def test_basic_auth_is_read_from_the_option_as_mlflow_parses_it(arguments: list[str], enabled: bool) -> None:
    assert identify.mlflow_auth_enabled(unknown_checking_proxy({"command": arguments})) is enabled


@pytest.mark.parametrize("entrypoint", ["/usr/local/bin/mlflow-entrypoint", "mlflow-entrypoint"])
def test_a_server_from_the_built_image_keeps_its_entrypoint_however_named(entrypoint: str) -> None:
    image = _built_image()
    server = _server_from_image(image, entrypoints=[entrypoint])
    assert identify.keeps_server_entrypoint(server.props)
    assert _check_stack("mlflow-public-needs-auth", [image, server]) != []


def _proxy(ip: str = "0.0.0.0") -> PolicyResource:
    props = {
        "image": PROXY_IMAGE_ID,
        "command": ["caddy", "run", "--config", "/etc/caddy/Caddyfile"],
        "ports": [{"internal": 443.0, "external": 443.0, "ip": ip, "protocol": "tcp"}],
        "healthcheck": {"tests": ["CMD", "caddy", "version"]},
        "restart": "unless-stopped",
    }
    return _stack_resource(CONTAINER, "proxy", props)


@pytest.mark.parametrize(
    ("resources", "passes"),
    [
        # The front door publishes 443 on every interface; the server publishes nothing: compliant.
        (lambda: [_proxy(), _stack_resource(CONTAINER, "server", _mlflow(ports=[]))], True),
        # Nothing public at all: the dev stack on loopback.
        (
            lambda: [_stack_resource(CONTAINER, "server", _mlflow(ports=[{"internal": 5000.0, "ip": "127.0.0.1"}]))],
            True,
        ),
        (
            lambda: [_proxy("127.0.0.1"), _stack_resource(CONTAINER, "server", _mlflow(ports=[{"ip": "127.0.0.1"}]))],
            True,
        ),
        # The front door is public and the server still publishes, even on loopback: a way around the proxy.
        (
            lambda: [
                _proxy(),
                _stack_resource(CONTAINER, "server", _mlflow(ports=[{"internal": 5000.0, "ip": "::1"}])),
            ],
            False,
        ),
        # Today's staging and prod: the server itself published on 0.0.0.0.
        (lambda: [_stack_resource(CONTAINER, "server", _mlflow())], False),
        (lambda: [_proxy(), _stack_resource(CONTAINER, "server", _mlflow(ports=[], networkMode="host"))], False),
        (lambda: [_proxy(), image := _built_image(), _server_from_image(image, ports=[{"ip": "127.0.0.1"}])], False),
    ],
)
def test_mlflow_behind_proxy(resources: Callable[[], list[PolicyResource]], passes: bool) -> None:
    found = resources()
    reported = _check_stack("mlflow-behind-proxy", found)
    assert (reported == []) is passes, reported
    if not passes:
        [(urn, message)] = reported
        assert urn == found[-1].urn
        assert "the tracking server server must publish no port" in message


def test_the_server_behind_a_proxy_is_told_every_way_it_publishes() -> None:
    server = _stack_resource(
        CONTAINER,
        "server",
        _mlflow(ports=[{"internal": 5000.0, "ip": "::1"}], networkMode="host", publishAllPorts=True),
    )
    assert _check_stack("mlflow-behind-proxy", [_proxy(), server]) == [
        (
            server.urn,
            "the stack publishes on a non-loopback address (proxy, server), so the tracking server server must publish "
            "no port, but it publishes ports[0], the host network, publishAllPorts: the front door (the TLS proxy) is "
            "the only way in.",
        )
    ]


def test_a_shared_stacks_server_that_publishes_is_told_why_in_full() -> None:
    server = _stack_resource(
        CONTAINER, "server", _mlflow(ports=[{"internal": 5000.0, "ip": "127.0.0.1"}], networkMode="host"), stack="qa"
    )
    assert _check_stack("shared-stack-tls", [server]) == [
        (
            server.urn,
            "the tracking server server of the shared stack 'qa' publishes ports[0], the host network: plain HTTP, "
            "where every request "
            "carries a password; only the TLS proxy may publish a port (every stack is shared unless the policy "
            "pack config sets environmentKind: dev (policy/config/<stack>.json)).",
        )
    ]
    assert _check_stack("shared-stack-tls", [server], {"environmentKind": "dev"}) == []


# --- Every rule over what each stack declares ------------------------------------------------


@dataclass
class Declared:
    """One resource as the program registered it, detached from the mocks so a test can break it."""

    type: str
    name: str
    urn: str
    parent: str
    protect: bool
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    dependencies: list[str]
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    # The mocks do not see resource options beyond `protect`; a broken variant sets this one itself.
    additional_secret_outputs: list[str] = field(default_factory=list)


def _declared(mocks: harness.EngineMocks) -> list[Declared]:
    return [
        Declared(
            type=registration.type,
            name=registration.name,
            urn=registration.urn,
            parent=registration.parent,
            protect=registration.protect,
            inputs=copy.deepcopy(registration.inputs),
            outputs=copy.deepcopy(registration.outputs),
            dependencies=list(registration.dependencies),
            property_dependencies=copy.deepcopy(registration.property_dependencies),
        )
        for registration in mocks.registrations.values()
    ]


def _evaluate(declared: list[Declared]) -> Violations:
    """Every policy over the declared resources: policy name -> messages (each prefixed with the resource name).

    Each policy gets the committed pack config of the stack named in the URNs, as `make deploy` and the
    workflows pass it (`--policy-pack-config policy/config/<stack>.json`; none when there is no file).
    """
    violations: Violations = defaultdict(list)
    [stack] = {readers.stack_of(resource.urn) for resource in declared}
    pack_config = _pack_config(stack)

    def reporter(policy: str, name: str | None) -> Callable[[str, str | None], None]:
        def report(message: str, urn: str | None = None) -> None:
            violations[policy].append(f"{name or urn}: {message}")

        return report

    # Resource policies see a resource's inputs, as the engine's Analyze call does.
    for policy in POLICIES:
        if isinstance(policy, ResourceValidationPolicy):
            for resource in declared:
                args = ResourceValidationArgs(
                    resource.type,
                    unknown_checking_proxy(copy.deepcopy(resource.inputs)),
                    resource.urn,
                    resource.name,
                    _options(resource.protect),
                    None,
                    pack_config.get(policy.name, {}),
                )
                policy.validate(args, reporter(policy.name, resource.name))

    # Stack policies see every resource's state (inputs and outputs), linked to its parent and dependencies.
    by_urn = {
        resource.urn: PolicyResource(
            resource.type,
            unknown_checking_proxy(copy.deepcopy({**resource.inputs, **resource.outputs})),
            resource.urn,
            resource.name,
            _options(resource.protect, resource.additional_secret_outputs),
            None,
            None,
            [],
            {},
        )
        for resource in declared
    }
    for resource in declared:
        linked = by_urn[resource.urn]
        linked.parent = by_urn.get(resource.parent)
        linked.dependencies = [by_urn[urn] for urn in resource.dependencies if urn in by_urn]
        linked.property_dependencies = {
            key: [by_urn[urn] for urn in urns if urn in by_urn] for key, urns in resource.property_dependencies.items()
        }
    for policy in POLICIES:
        if isinstance(policy, StackValidationPolicy):
            stack_args = StackValidationArgs(list(by_urn.values()), pack_config.get(policy.name, {}))
            policy.validate(stack_args, reporter(policy.name, None))
    return dict(violations)


# Configurations beyond the committed stacks, by the name a broken variant gives: (stack, overrides).
SWARM_OVERRIDES: dict[str, Any] = {
    "engine": "swarm",
    "artifactStore": "s3",
    "artifactBucket": "ml-artifacts",
    "mlflowReplicas": 3,
}
_VARIANT_STACKS: dict[str, tuple[str, dict[str, Any]]] = {"prod-swarm": ("prod", SWARM_OVERRIDES)}


def _declare(stack: str) -> list[Declared]:
    """What the program declares for `stack` (or a configuration of _VARIANT_STACKS) under mocks."""
    name, overrides = _VARIANT_STACKS.get(stack, (stack, {}))
    return _declared(harness.declaration(name, overrides).mocks)


def _one(declared: list[Declared], type_token: str, suffix: str) -> Declared:
    [found] = [resource for resource in declared if resource.type == type_token and resource.name.endswith(suffix)]
    return found


def _generated_password(declared: list[Declared]) -> str:
    value = _one(declared, RANDOM_PASSWORD, "postgres-password").outputs["result"]
    assert isinstance(value, str)
    assert len(value) >= 24
    return value


def _behind_a_proxy(declared: list[Declared]) -> None:
    """A public proxy added next to dev's server (dev has none of its own): the server must then publish nothing."""
    server = _one(declared, CONTAINER, "server-container")
    server.inputs["ports"] = []
    proxy = copy.deepcopy(server)
    proxy.name, proxy.urn = "proxy-container", server.urn.replace("server-container", "proxy-container")
    proxy.inputs = {
        "image": PROXY_IMAGE_ID,
        "command": ["caddy", "run", "--config", "/etc/caddy/Caddyfile"],
        "ports": [{"internal": 443, "external": 443, "ip": "0.0.0.0", "protocol": "tcp"}],
        "healthcheck": {"tests": ["CMD", "caddy", "version"]},
        "restart": "unless-stopped",
        "user": "10002:10002",
        "ulimits": [{"name": "nproc", "soft": 1024, "hard": 1024}],
    }
    proxy.outputs, proxy.property_dependencies = {}, {}
    declared.append(proxy)


def test_only_the_dev_stack_has_a_dev_pack_config_and_it_agrees_with_its_stack_file() -> None:
    # The pack's counterpart of each stack's `environmentKind` (components/settings/): the two agree.
    configured = sorted(path.stem for path in PACK_CONFIG_DIR.glob("*.json"))
    assert configured == ["dev"]
    for stack in STACKS:
        kind = stack_config(stack)["environmentKind"]
        expected = {name: DEV_KIND for name, policy in BY_NAME.items() if policy.config_schema} if kind == "dev" else {}
        assert _pack_config(stack) == expected, stack
    assert [stack for stack in STACKS if stack_config(stack)["environmentKind"] == "dev"] == ["dev"]
    assert set(BY_NAME["protected-stack-volumes"].config_schema.properties) == {"environmentKind"}  # type: ignore[union-attr]


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_committed_shared_stacks_sit_behind_a_proxy(stack: str) -> None:
    assert _evaluate(_declare(stack)) == {}


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_passes_every_policy(stack: str) -> None:
    declared = _declare(stack)
    # The rules had something to judge: the database and server containers, the data volumes,
    # both images, the password.
    types = [resource.type for resource in declared]
    names = {resource.name for resource in declared}
    assert {"mlflow-postgres-container", "mlflow-server-container"} <= names, names
    assert {"mlflow-postgres-data", "mlflow-server-artifacts"} <= names, names
    assert {"mlflow-db-bootstrap-container", "mlflow-backups-container", "mlflow-gc-container"} <= names, names
    assert {IMAGE, REMOTE_IMAGE, RANDOM_PASSWORD, NETWORK} <= set(types)
    assert {"mlflow-network-network", "mlflow-network-database"} <= names, names
    # Property dependencies were recorded: the password reaches the containers only through uploads.
    postgres = _one(declared, CONTAINER, "postgres-container")
    password = _one(declared, RANDOM_PASSWORD, "postgres-superuser-password")
    assert password.urn in postgres.property_dependencies["uploads"]
    assert password.urn not in postgres.property_dependencies.get("envs", [])
    assert _evaluate(declared) == {}


def _add_postgres_port(declared: list[Declared]) -> None:
    container = _one(declared, CONTAINER, "postgres-container")
    container.inputs["ports"] = [{"internal": 5432, "external": 5432, "ip": "127.0.0.1", "protocol": "tcp"}]


def _drop_healthcheck(declared: list[Declared]) -> None:
    del _one(declared, CONTAINER, "server-container").inputs["healthcheck"]


def _drop_restart(declared: list[Declared]) -> None:
    del _one(declared, CONTAINER, "postgres-container").inputs["restart"]


def _postgres_latest(declared: list[Declared]) -> None:
    _one(declared, REMOTE_IMAGE, "postgres-image").inputs["name"] = "postgres:latest"


def _untagged_base_image(declared: list[Declared]) -> None:
    _one(declared, IMAGE, "image-image").inputs["build"]["args"]["BASE_IMAGE"] = "python"


def _postgres_by_tag(declared: list[Declared]) -> None:
    image = _one(declared, REMOTE_IMAGE, "postgres-image")
    image.inputs["name"] = image.inputs["name"].split("@", 1)[0]


def _proxy_base_by_tag(declared: list[Declared]) -> None:
    build_args = _one(declared, IMAGE, "proxy-image").inputs["build"]["args"]
    build_args["CADDY_IMAGE"] = build_args["CADDY_IMAGE"].split("@", 1)[0]


def _container_by_tag(declared: list[Declared]) -> None:
    _one(declared, CONTAINER, "postgres-container").inputs["image"] = "postgres:17.11"


def _server_without_task_limit(declared: list[Declared]) -> None:
    del _one(declared, CONTAINER, "server-container").inputs["ulimits"]


def _job_as_root(declared: list[Declared]) -> None:
    _one(declared, CONTAINER, "db-bootstrap-container").inputs["user"] = "0:0"


def _password_in_env(declared: list[Declared]) -> None:
    container = _one(declared, CONTAINER, "postgres-container")
    container.inputs["envs"].append(f"POSTGRES_PASSWORD={_generated_password(declared)}")


def _password_in_database_url(declared: list[Declared]) -> None:
    container = _one(declared, CONTAINER, "server-container")
    container.inputs["envs"].append(f"DATABASE_URL=postgresql://mlflow:{_generated_password(declared)}@postgres/mlflow")


def _password_in_env_marked_secret(declared: list[Declared]) -> None:
    # Marking the container's envs secret hides them in the state, not from `docker inspect`.
    _password_in_database_url(declared)
    _one(declared, CONTAINER, "server-container").additional_secret_outputs = ["envs"]


def _env_computed_from_password(declared: list[Declared]) -> None:
    # What a preview shows for `envs=[Output.concat("PGPASSWORD_COPY=", password.result)]` before the password exists.
    container = _one(declared, CONTAINER, "server-container")
    password = _one(declared, RANDOM_PASSWORD, "postgres-password")
    password.outputs["result"] = UNKNOWN_STRING_VALUE
    container.inputs["envs"].append(UNKNOWN_STRING_VALUE)
    container.property_dependencies["envs"] = [password.urn]


def _unprotect_artifacts(declared: list[Declared]) -> None:
    _one(declared, VOLUME, "server-artifacts").protect = False


def _unprotect_pgdata(declared: list[Declared]) -> None:
    _one(declared, VOLUME, "postgres-data").protect = False


def _auth_off(declared: list[Declared]) -> None:
    command = _one(declared, CONTAINER, "server-container").inputs["command"]
    index = command.index("--app-name")
    del command[index : index + 2]


def _auth_off_on_loopback(declared: list[Declared]) -> None:
    """Auth off, and the front door only on this host: the shared-stack rule alone still fires."""
    _auth_off(declared)
    for resource in declared:
        for port in resource.inputs.get("ports") or [] if resource.type == CONTAINER else []:
            port["ip"] = "127.0.0.1"


def _server_published_on_loopback(declared: list[Declared]) -> None:
    _one(declared, CONTAINER, "server-container").inputs["ports"] = [
        {"internal": 5000, "external": 5000, "ip": "127.0.0.1", "protocol": "tcp"}
    ]


def _dev_published_everywhere(declared: list[Declared]) -> None:
    _one(declared, CONTAINER, "server-container").inputs["ports"][0]["ip"] = "0.0.0.0"


def _renamed(stack: str) -> Callable[[list[Declared]], None]:
    """The same resources under another stack name (and so without the dev stack's pack config)."""

    def rename(declared: list[Declared]) -> None:
        def new_urn(urn: str) -> str:
            return urn.replace("urn:pulumi:dev::", f"urn:pulumi:{stack}::", 1)

        for resource in declared:
            resource.urn, resource.parent = new_urn(resource.urn), new_urn(resource.parent)
            resource.dependencies = [new_urn(urn) for urn in resource.dependencies]
            resource.property_dependencies = {
                key: [new_urn(urn) for urn in urns] for key, urns in resource.property_dependencies.items()
            }

    return rename


def _password_in_healthcheck(declared: list[Declared]) -> None:
    container = _one(declared, CONTAINER, "postgres-container")
    container.inputs["healthcheck"]["tests"] = ["CMD", "psql", f"postgresql://mlflow:{_generated_password(declared)}@/"]


def _password_in_label(declared: list[Declared]) -> None:
    container = _one(declared, CONTAINER, "server-container")
    container.inputs["labels"].append({"label": "backend", "value": _generated_password(declared)})


def _password_in_build_arg(declared: list[Declared]) -> None:
    image = _one(declared, IMAGE, "image-image")
    image.inputs["build"]["args"]["DB_PASSWORD"] = _generated_password(declared)


def _server_without_label_or_flags(declared: list[Declared]) -> None:
    # The image's default command starts the server: no role label, no `mlflow server` arguments, no auth.
    server = _one(declared, CONTAINER, "server-container")
    server.inputs["labels"] = [item for item in server.inputs["labels"] if item["label"] != "org.mlflow-platform.role"]
    server.inputs["command"] = []


def _postgres_on_the_front_network(declared: list[Declared]) -> None:
    container = _one(declared, CONTAINER, "postgres-container")
    front = _one(declared, NETWORK, "network-network").inputs["name"]
    container.inputs["networksAdvanced"].insert(0, {"name": front})


def _database_network_routed_out(declared: list[Declared]) -> None:
    del _one(declared, NETWORK, "network-database").inputs["internal"]


def _postgres_on_the_default_bridge(declared: list[Declared]) -> None:
    del _one(declared, CONTAINER, "postgres-container").inputs["networksAdvanced"]


def _proxy_next_to_a_published_server(declared: list[Declared]) -> None:
    _behind_a_proxy(declared)
    _one(declared, CONTAINER, "server-container").inputs["ports"] = [
        {"internal": 5000, "external": 5000, "ip": "127.0.0.1", "protocol": "tcp"}
    ]


def _service_without_task_limit(declared: list[Declared]) -> None:
    spec = _one(declared, SERVICE, "server-container").inputs["taskSpec"]["containerSpec"]
    spec["commands"] = ["/usr/local/bin/mlflow-entrypoint"]


def _postgres_service_published(declared: list[Declared]) -> None:
    _one(declared, SERVICE, "postgres-container").inputs["endpointSpec"] = {
        "ports": [{"targetPort": 5432, "publishedPort": 5432, "protocol": "tcp", "publishMode": "ingress"}]
    }


def _password_in_a_swarm_config(declared: list[Declared]) -> None:
    # A config is plain in `docker config inspect`: unlike a swarm secret it may carry no secret.
    _one(declared, SERVICE_CONFIG, "backup-conf").inputs["data"] = _generated_password(declared)


BROKEN_VARIANTS: list[tuple[str, str, Callable[[list[Declared]], None], set[str]]] = [
    ("postgres-port-published", "dev", _add_postgres_port, {"postgres-not-published"}),
    ("no-healthcheck", "staging", _drop_healthcheck, {"container-healthcheck"}),
    ("no-restart-policy", "prod", _drop_restart, {"container-restart-policy"}),
    # Issue 19, finding 12a: a container whose tasks are not limited, or limited where the limit binds nothing.
    ("server-without-task-limit", "staging", _server_without_task_limit, {"container-task-limit"}),
    ("bootstrap-job-as-root", "dev", _job_as_root, {"container-task-limit"}),
    ("postgres-latest", "dev", _postgres_latest, {"image-pinned"}),
    ("untagged-base-image", "staging", _untagged_base_image, {"image-pinned", "shared-stack-image-digests"}),
    # Issue 19: a shared stack's images by tag alone, each input the rule reads.
    ("staging-postgres-by-tag", "staging", _postgres_by_tag, {"shared-stack-image-digests"}),
    ("prod-proxy-base-by-tag", "prod", _proxy_base_by_tag, {"shared-stack-image-digests"}),
    ("prod-container-by-tag", "prod", _container_by_tag, {"shared-stack-image-digests"}),
    ("password-in-env", "prod", _password_in_env, {"container-env-secret-names", "container-env-no-secret-values"}),
    ("password-in-database-url", "dev", _password_in_database_url, {"container-env-no-secret-values"}),
    ("password-in-env-marked-secret", "prod", _password_in_env_marked_secret, {"container-env-no-secret-values"}),
    ("env-computed-from-password", "staging", _env_computed_from_password, {"container-env-no-secret-values"}),
    ("staging-artifacts-unprotected", "staging", _unprotect_artifacts, {"protected-stack-volumes"}),
    ("prod-pgdata-unprotected", "prod", _unprotect_pgdata, {"protected-stack-volumes"}),
    # prod publishes on 0.0.0.0: without auth it breaks both rules.
    ("prod-auth-off", "prod", _auth_off, {"protected-stack-mlflow-auth", "mlflow-public-needs-auth"}),
    ("prod-auth-off-on-loopback", "prod", _auth_off_on_loopback, {"protected-stack-mlflow-auth"}),
    (
        "dev-published-without-auth",
        "dev",
        _dev_published_everywhere,
        {"mlflow-public-needs-auth", "mlflow-behind-proxy"},
    ),
    # Former bypasses, each caught now.
    *[
        (
            f"stack-named-{name}",
            "dev",
            _renamed(name),
            {
                "protected-stack-volumes",
                "protected-stack-mlflow-auth",
                "shared-stack-tls",
                "shared-stack-image-digests",
            },
        )
        for name in ("production", "prod-eu", "Prod")
    ],
    ("password-in-healthcheck", "prod", _password_in_healthcheck, {"container-env-no-secret-values"}),
    ("password-in-label", "staging", _password_in_label, {"container-env-no-secret-values"}),
    ("password-in-build-arg", "dev", _password_in_build_arg, {"container-env-no-secret-values"}),
    (
        "server-without-role-label",
        "prod",
        _server_without_label_or_flags,
        {"protected-stack-mlflow-auth", "mlflow-public-needs-auth"},
    ),
    # Issue 8's rule: with a public front door, the server publishes nothing, not even on loopback.
    # dev's server has no auth: behind a public front door it is public too.
    (
        "server-published-beside-proxy",
        "dev",
        _proxy_next_to_a_published_server,
        {"mlflow-behind-proxy", "mlflow-public-needs-auth"},
    ),
    # Issue 19's network split: in a shared stack Postgres is on the internal database network alone.
    ("postgres-on-the-front-network", "prod", _postgres_on_the_front_network, {"postgres-internal-networks"}),
    ("database-network-routed-out", "staging", _database_network_routed_out, {"postgres-internal-networks"}),
    ("postgres-on-the-default-bridge", "prod", _postgres_on_the_default_bridge, {"postgres-internal-networks"}),
    # A shared stack's server reachable in plain HTTP, even only on loopback, beside its proxy.
    ("prod-server-published", "prod", _server_published_on_loopback, {"shared-stack-tls", "mlflow-behind-proxy"}),
    # Issue 21: services are held to the containers' hardening where a swarm can apply it.
    ("service-without-task-limit", "prod-swarm", _service_without_task_limit, {"service-hardening"}),
    ("postgres-service-published", "prod-swarm", _postgres_service_published, {"postgres-service-not-published"}),
    ("password-in-a-swarm-config", "prod-swarm", _password_in_a_swarm_config, {"container-env-no-secret-values"}),
]


@pytest.mark.parametrize(
    ("stack", "mutate", "expected"),
    [pytest.param(stack, mutate, expected, id=name) for name, stack, mutate, expected in BROKEN_VARIANTS],
)
def test_a_broken_stack_is_caught_by_its_rule(
    stack: str, mutate: Callable[[list[Declared]], None], expected: set[str]
) -> None:
    declared = _declare(stack)
    assert _evaluate(declared) == {}
    mutate(declared)
    violations = _evaluate(declared)
    # Exactly the rules this change breaks, and nothing else.
    assert set(violations) == expected, violations


def test_every_policy_has_a_broken_variant() -> None:
    caught = set().union(*(expected for *_, expected in BROKEN_VARIANTS))
    assert caught == set(BY_NAME)


def test_a_shared_stack_with_its_artifacts_in_a_bucket_passes_every_policy() -> None:
    bucket = {
        "artifactStore": "s3",
        "artifactBucket": "ml-artifacts",
        "artifactEndpoint": "https://s3.example.internal",
        "artifactAccessKeyId": "AKIAEXAMPLE",
        "artifactSecretAccessKey": "s" * 40,
    }
    declared = _declared(harness.declaration("prod", bucket).mocks)
    server = _one(declared, CONTAINER, "server-container")
    # The rules judged a server whose key pair is an upload, not a volume-backed one.
    assert "AWS_SHARED_CREDENTIALS_FILE=/run/secrets/artifact-store-credentials" in server.inputs["envs"]
    assert _evaluate(declared) == {}


def test_a_swarm_stack_passes_every_policy_with_its_secrets_as_swarm_secrets() -> None:
    declared = _declare("prod-swarm")
    services = [resource for resource in declared if resource.type == SERVICE]
    assert len(services) == 6
    # The rules had services to judge, and swarm secrets computed from the generated passwords.
    password = _one(declared, RANDOM_PASSWORD, "postgres-password")
    secret = _one(declared, SWARM_SECRET, "server-container-run-secrets-postgres-password")
    assert password.urn in secret.property_dependencies["data"]
    assert _evaluate(declared) == {}


def test_service_hardening_names_everything_a_bare_service_lacks() -> None:
    bare = {
        "name": "web",
        "taskSpec": {
            "containerSpec": {
                "image": IMAGE_ID,
                "user": "0:0",
                "secrets": [{"secretId": "s", "fileName": "/run/secrets/x", "fileMode": 0o444, "fileUid": "0"}],
            },
            "restartPolicy": {"condition": "none"},
        },
    }
    assert _check_resource("service-hardening", SERVICE, bare) == [
        "taskSpec.containerSpec.user must be a non-root uid:gid (the task limit binds no root)",
        'taskSpec.containerSpec.capDrops must drop "ALL"',
        "taskSpec.containerSpec.readOnly must be true (a read-only root file system)",
        "taskSpec.containerSpec.healthcheck is missing: swarm cannot tell a hung task from a live one",
        "taskSpec.resources.limits.memoryBytes is missing: one leaking task can take the node",
        "taskSpec.restartPolicy.condition is 'none'; accepted: any, on-failure",
        "taskSpec.containerSpec.commands must start the entrypoint under the task-limit shell "
        "(`/bin/sh -c 'ulimit -u N ...; exec \"$@\"'`): a service has no ulimits of its own",
        "taskSpec.logDriver must rotate (json-file with max-size and max-file)",
        "taskSpec.containerSpec.secrets[0].fileMode must be 0400 (256), not 292",
    ]
    # Not a service: not judged.
    assert _check_resource("service-hardening", CONTAINER, bare) == []


def test_a_published_postgres_service_is_refused() -> None:
    postgres = {
        "labels": [{"label": "org.mlflow-platform.role", "value": "database"}],
        "endpointSpec": {"ports": [{"targetPort": 5432, "publishedPort": 5432}]},
    }
    assert _check_resource("postgres-service-not-published", SERVICE, postgres) == [
        "the Postgres service publishes 1 port(s) on every interface of its node; "
        "clients reach it on the stack's internal database network only."
    ]
    assert _check_resource("postgres-service-not-published", SERVICE, {**postgres, "endpointSpec": None}) == []
