"""StandaloneTarget: what it makes of a workload, and what it gives every container of every stack.

The one place for hardening (no capabilities, no privilege gain, memory equal to swap),
log rotation, the stack's labels, secret uploads (0400, the workload's uid, secret),
the /run/secrets volume, protected volumes and a job that fails the deployment.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pulumi
import pytest

from components.standalone import StandaloneTarget
from components.target import Job
from components.workload import (
    DATABASE,
    FRONT,
    Attachment,
    File,
    HealthCheck,
    Mount,
    Port,
    StackNetworkRole,
    Workload,
    config_file,
    secret_file,
)
from tests.conftest import CONTAINER, IMAGE, NETWORK, RANDOM_PASSWORD, REMOTE_IMAGE, VOLUME
from tests.expected import (
    CONFIGURATIONS,
    PROTECTED,
    SECRETS_VOLUME,
    built,
    containers,
    declared_volume,
    hardened,
    mode_overrides,
    unit_context,
)
from tests.harness import EngineMocks, Registration, declaration, install
from tools.local_deploy.container_config import container_config
from tools.local_deploy.containers import grace_seconds
from tools.local_deploy.deployer import LocalDeployer
from tools.local_deploy.inputs import HANDLED_INPUTS

OWNER = "mlflow-platform:test:Owner"


def _labels(role: str) -> list[dict[str, str]]:
    """The stack's labels, then the role: what an operator filters `docker ps` and `docker volume ls` by."""
    return [
        {"label": "com.pulumi.project", "value": "mlflow-platform"},
        {"label": "com.pulumi.stack", "value": "unit"},
        {"label": "org.mlflow-platform.role", "value": role},
    ]


TOKEN = "token-0123456789abcdef"

# A workload that sets every field a description has.
EVERYTHING = Workload(
    name="mlflow-platform-unit-web",
    role="web",
    image="sha256:" + "c" * 64,
    user="1234:5678",
    memory_mb=300,
    max_tasks=96,
    entrypoint=["/usr/local/bin/web"],
    command=["serve", "--port", "8000"],
    environment=["WEB_PORT=8000", "WEB_MODE=strict"],
    files=[
        secret_file("/run/secrets/token", TOKEN),
        config_file("/etc/web/web.conf", "port = 8000\n"),
        File("/usr/local/bin/web-hook", "#!/bin/sh\n", mode="0755"),
    ],
    mounts=[Mount("/var/lib/web", "web-data"), Mount("/srv/seed", "web-seed", read_only=True), Mount("/etc/web")],
    tmpfs={"/tmp": "rw,noexec,size=1m"},
    shm_size_mb=64,
    health=HealthCheck(test=["CMD", "web", "health"], interval="1s", timeout="2s", retries=3, start_period="4s"),
    stop_signal="SIGQUIT",
    stop_grace_seconds=7,
    network_aliases=["web", "www"],
    ports=[Port(8000, 18000, "127.0.0.1"), Port(8001, 18001, "::1")],
    extra_labels={"org.example.extra": "x"},
)
# Every input it becomes, but the lifecycle a service or a job adds.
EVERYTHING_INPUTS: dict[str, Any] = {
    "name": "mlflow-platform-unit-web",
    "image": "sha256:" + "c" * 64,
    "user": "1234:5678",
    "entrypoints": ["/usr/local/bin/web"],
    "command": ["serve", "--port", "8000"],
    "envs": ["WEB_PORT=8000", "WEB_MODE=strict"],
    "uploads": [
        # A secret file belongs to the workload's uid, whatever its user's group.
        {"file": "/run/secrets/token", "content": TOKEN, "owner": "1234", "group": "1234", "permissions": "0400"},
        {"file": "/etc/web/web.conf", "content": "port = 8000\n", "owner": "0", "group": "0", "permissions": "0444"},
        {"file": "/usr/local/bin/web-hook", "content": "#!/bin/sh\n", "permissions": "0755"},
    ],
    "volumes": [
        {"volumeName": "web-data", "containerPath": "/var/lib/web"},
        {"volumeName": "web-seed", "containerPath": "/srv/seed", "readOnly": True},
        {"containerPath": "/etc/web"},
        {"containerPath": "/run/secrets"},
    ],
    "ports": [
        {"internal": 8000, "external": 18000, "ip": "127.0.0.1", "protocol": "tcp"},
        {"internal": 8001, "external": 18001, "ip": "::1", "protocol": "tcp"},
    ],
    "healthcheck": {
        "tests": ["CMD", "web", "health"],
        "interval": "1s",
        "timeout": "2s",
        "retries": 3,
        "startPeriod": "4s",
    },
    "readOnly": True,
    "tmpfs": {"/tmp": "rw,noexec,size=1m"},
    "shmSize": 64,
    "capabilities": {"drops": ["ALL"]},
    "securityOpts": ["no-new-privileges:true"],
    "ulimits": [{"name": "nproc", "soft": 96, "hard": 96}],
    "memory": 300,
    "memorySwap": 300,
    "logDriver": "json-file",
    "logOpts": {"max-size": "5m", "max-file": "2"},
    "labels": [*_labels("web"), {"label": "org.example.extra", "value": "x"}],
    "networksAdvanced": [{"name": "mlflow-platform-unit", "aliases": ["web", "www"]}],
}
# The least a workload says: a name, a role, an image, a user, a memory limit and a task limit.
MINIMAL = Workload(
    name="mlflow-platform-unit-web", role="web", image="img", user="1234:5678", memory_mb=300, max_tasks=96
)


def _minimal_inputs(**changes: Any) -> dict[str, Any]:
    inputs = {
        **{key: EVERYTHING_INPUTS[key] for key in ("name", "user", "capabilities", "securityOpts", "memory")},
        "ulimits": EVERYTHING_INPUTS["ulimits"],
        **{key: EVERYTHING_INPUTS[key] for key in ("memorySwap", "logDriver", "logOpts", "readOnly")},
        "image": "img",
        "labels": _labels("web"),
        # Nothing to upload, yet the secrets volume: the same shape for every workload.
        "uploads": [],
        "volumes": [{"containerPath": "/run/secrets"}],
        "networksAdvanced": [{"name": "mlflow-platform-unit"}],
        "restart": "unless-stopped",
        # No health check, nothing to wait for.
        "wait": False,
    }
    return {key: value for key, value in {**inputs, **changes}.items() if value is not None}


def _service(workload: Workload, *, protect_data: bool = False) -> tuple[EngineMocks, Registration]:
    def build() -> pulumi.ComponentResource:
        owner = pulumi.ComponentResource(OWNER, "owner")
        target = StandaloneTarget(unit_context(protect_data=protect_data))
        before = target.volume(owner, "owner-volume", "mlflow-platform-unit-before", "web")
        target.service(owner, "owner-container", workload, depends_on=[before])
        return owner

    mocks, _ = built(build)
    return mocks, mocks.one(CONTAINER, "owner-container")


def test_a_service_gets_every_field_of_its_description_and_the_stacks_hardening() -> None:
    mocks, container = _service(EVERYTHING)
    assert container.inputs == {
        **EVERYTHING_INPUTS,
        "restart": "unless-stopped",
        "wait": True,
        "waitTimeout": 90,
        "stopSignal": "SIGQUIT",
        "stopTimeout": 7,
        # pulumi-docker's own replace and destroy would not wait at all.
        "destroyGraceSeconds": 7,
    }
    # The secret file's content travels as a secret, so the whole uploads input is stored as one.
    assert container.secret_inputs() == {"uploads"}
    owner, volume = mocks.one(OWNER), mocks.one(VOLUME, "owner-volume")
    assert (container.parent, container.custom) == (owner.urn, True)
    # Fixed names: the old container goes before its replacement is created.
    assert container.delete_before_replace is True
    assert container.dependencies == [volume.urn]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {}),
        # Health-gated only when there is a health check to wait for: no timeout without one.
        (
            {"health": EVERYTHING.health},
            {"healthcheck": EVERYTHING_INPUTS["healthcheck"], "wait": True, "waitTimeout": 90},
        ),
        (
            {"health": EVERYTHING.health, "wait_healthy": False},
            {"healthcheck": EVERYTHING_INPUTS["healthcheck"], "wait": False},
        ),
        ({"read_only_root": False}, {"readOnly": None}),
        ({"networks": []}, {"networksAdvanced": None, "networkMode": "none"}),
        # An empty list says "publishes nothing"; None says nothing about ports.
        ({"ports": []}, {"ports": []}),
        ({"network_aliases": ["web"]}, {"networksAdvanced": [{"name": "mlflow-platform-unit", "aliases": ["web"]}]}),
        (
            {"files": [config_file("/etc/web/web.conf", "x")]},
            {"uploads": [EVERYTHING_INPUTS["uploads"][1] | {"content": "x"}]},
        ),
    ],
    ids=["minimal", "health", "not-waited-for", "writable-root", "no-network", "no-ports", "aliases", "config-only"],
)
def test_what_a_service_leaves_out(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    _, container = _service(dataclasses.replace(MINIMAL, **changes))
    assert container.inputs == _minimal_inputs(**expected)
    # Nothing secret to upload: nothing stored as a secret.
    assert container.secret_inputs() == set()


FRONT_NAME, DATABASE_NAME = "mlflow-platform-unit", "mlflow-platform-unit-db"


@pytest.mark.parametrize(
    ("joins", "changes", "expected"),
    [
        # Named networks, each with its own aliases, front first whatever order they are named in.
        (
            (FRONT,),
            {"networks": [Attachment(DATABASE, ["db"]), Attachment(FRONT, ["web"])]},
            [{"name": FRONT_NAME, "aliases": ["web"]}, {"name": DATABASE_NAME, "aliases": ["db"]}],
        ),
        ((FRONT,), {"networks": [Attachment(DATABASE)]}, [{"name": DATABASE_NAME}]),
        # None: the stack context's networks, with the workload's aliases on each.
        (
            (FRONT, DATABASE),
            {"network_aliases": ["web"]},
            [
                {"name": FRONT_NAME, "aliases": ["web"]},
                {"name": DATABASE_NAME, "aliases": ["web"]},
            ],
        ),
        ((DATABASE,), {}, [{"name": DATABASE_NAME}]),
    ],
    ids=["each-its-own-aliases", "database-alone", "the-contexts-networks", "the-contexts-database-network"],
)
def test_a_workload_joins_the_stacks_networks_in_a_fixed_order(
    joins: tuple[StackNetworkRole, ...], changes: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    def build() -> pulumi.ComponentResource:
        owner = pulumi.ComponentResource(OWNER, "owner")
        stack = dataclasses.replace(unit_context(), database_network=DATABASE_NAME, joins=joins)
        stack.target.service(owner, "owner-container", dataclasses.replace(MINIMAL, **changes))
        return owner

    mocks, _ = built(build)
    assert mocks.one(CONTAINER, "owner-container").inputs == _minimal_inputs(networksAdvanced=expected)


@pytest.mark.parametrize(
    ("database_network", "changes", "message"),
    [
        # unit_context() declares the front network only.
        (
            "",
            {"networks": [Attachment(DATABASE)]},
            "the stack's database network is not declared (StackContext has no name for it)",
        ),
        (
            DATABASE_NAME,
            {"networks": [Attachment(FRONT), Attachment(FRONT, ["web"])]},
            "workload mlflow-platform-unit-web names one of the stack's networks twice",
        ),
        # Docker publishes nothing of a container on an internal network alone.
        (
            DATABASE_NAME,
            {"networks": [Attachment(DATABASE)], "ports": [Port(8000, 18000, "127.0.0.1")]},
            "workload mlflow-platform-unit-web publishes ports but is not on the stack's front network",
        ),
    ],
    ids=["undeclared-network", "network-twice", "published-off-the-front-network"],
)
def test_a_workload_the_networks_cannot_take_is_refused(
    database_network: str, changes: dict[str, Any], message: str
) -> None:
    def build() -> None:
        stack = dataclasses.replace(unit_context(), database_network=database_network)
        stack.target.service(
            pulumi.ComponentResource(OWNER, "owner"), "owner-container", dataclasses.replace(MINIMAL, **changes)
        )

    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        built(build)
    assert str(raised.value) == message


class _ExitsWith(EngineMocks):
    def __init__(self, exit_code: int | None, logs: str | None = None) -> None:
        super().__init__()
        self.exit_code, self.logs = exit_code, logs

    def create(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        resource_id, outputs = super().create(args, inputs)
        if args.typ == CONTAINER:
            outputs["exitCode"] = self.exit_code
            outputs["containerLogs"] = self.logs
        return resource_id, outputs


JOB = dataclasses.replace(EVERYTHING, role="web-migration")


def _job(mocks: EngineMocks) -> tuple[Job, list[object]]:
    """Runs JOB; returns it and what its `succeeded` Output resolved to."""
    found: list[Job] = []
    succeeded: list[object] = []

    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        install(mocks, "dev")
        owner = pulumi.ComponentResource(OWNER, "owner")
        job = unit_context().target.job(owner, "owner-job", JOB)
        found.append(job)
        return job.succeeded.apply(succeeded.append)

    run()
    return found[0], succeeded


def test_a_job_runs_once_attached_and_succeeds_on_exit_code_zero() -> None:
    mocks = _ExitsWith(0)
    job, succeeded = _job(mocks)
    container = mocks.one(CONTAINER, "owner-job")
    # No restart, no wait for health, no stop settings: it runs to its end, once per change.
    assert container.inputs == {
        **EVERYTHING_INPUTS,
        "labels": [*_labels("web-migration"), {"label": "org.example.extra", "value": "x"}],
        "restart": "no",
        "mustRun": False,
        "attach": True,
        # Its output kept, so that a failure says why.
        "logs": True,
    }
    assert container.delete_before_replace is True
    assert succeeded == [job.container]


@pytest.mark.parametrize("exit_code", [3, 1, None])
def test_a_job_that_did_not_exit_zero_fails_the_deployment(exit_code: int | None) -> None:
    with pytest.raises(Exception, match=r"^the web migration exited with code .*; see `docker logs ") as raised:
        _job(_ExitsWith(exit_code))
    assert str(raised.value) == (
        f"the web migration exited with code {exit_code}; see `docker logs mlflow-platform-unit-web`"
    )


def test_a_failed_job_says_the_last_line_of_its_output() -> None:
    with pytest.raises(Exception, match="exited with code 1: ") as raised:
        _job(_ExitsWith(1, "starting\nbootstrap_db: externalDatabaseUrl names host 'x', which ...\n\n"))
    assert str(raised.value) == (
        "the web migration exited with code 1: bootstrap_db: externalDatabaseUrl names host 'x', which ...; "
        "see `docker logs mlflow-platform-unit-web`"
    )


@pytest.mark.parametrize("protect", [False, True])
def test_a_volume_is_labelled_and_protected_with_the_stacks_data(protect: bool) -> None:
    mocks, _ = _service(MINIMAL, protect_data=protect)
    volume = mocks.one(VOLUME, "owner-volume")
    assert volume.inputs == {
        "name": "mlflow-platform-unit-before",
        "labels": _labels("web"),
    }
    # Kept on a destroy too (retainOnDelete), not only refused (protect).
    assert (volume.protect, volume.retain_on_delete) == (protect, protect)
    assert volume.parent == mocks.one(OWNER).urn


def test_the_network_and_the_images() -> None:
    def build() -> pulumi.ComponentResource:
        owner = pulumi.ComponentResource(OWNER, "owner")
        target = unit_context().target
        target.network(owner, "owner-network", "mlflow-platform-unit")
        target.network(owner, "owner-internal", "mlflow-platform-unit-db", internal=True)
        target.pulled_image(owner, "owner-pulled", "postgres:16.4")
        target.built_image(owner, "owner-built", "p/web:1", "./web", {"A": "1", "B": ""})
        return owner

    mocks, _ = built(build)
    assert mocks.one(NETWORK, "owner-network").inputs == {
        "name": "mlflow-platform-unit",
        # Not `internal` unless told: Docker publishes no ports of a container only on an internal network.
        "driver": "bridge",
        "labels": _labels("network"),
    }
    # No gateway: nothing on it leaves its subnet.
    assert mocks.one(NETWORK, "owner-internal").inputs == {
        "name": "mlflow-platform-unit-db",
        "driver": "bridge",
        "internal": True,
        "labels": _labels("network"),
    }
    # keepLocally: a destroy must not delete an image other stacks may run.
    assert mocks.one(REMOTE_IMAGE).inputs == {"name": "postgres:16.4", "keepLocally": True}
    assert mocks.one(IMAGE).inputs == {
        "imageName": "p/web:1",
        "build": {"context": "./web", "dockerfile": "./web/Dockerfile", "args": {"A": "1", "B": ""}},
        "skipPush": True,
        "buildOnPreview": False,
    }
    owner = mocks.one(OWNER).urn
    assert {r.parent for r in mocks.registrations.values() if r.custom} == {owner}


def _role(container: Registration) -> str:
    return str(
        next(item["value"] for item in container.inputs["labels"] if item["label"] == "org.mlflow-platform.role")
    )


@pytest.mark.parametrize(("stack", "mode"), CONFIGURATIONS)
def test_every_container_and_volume_of_every_stack_gets_what_the_target_applies(stack: str, mode: str) -> None:
    mocks = declaration(stack, mode_overrides(mode)).mocks
    found = containers(mocks)
    assert len(found) >= 5
    for name, container in found.items():
        inputs = container.inputs
        # The stack's labels come first; a workload's own (the bootstrap's) follow.
        applied = {key: inputs[key] for key in hardened(stack, "", 0, 0)} | {"labels": inputs["labels"][:3]}
        assert applied == hardened(stack, _role(container), inputs["memory"], inputs["ulimits"][0]["soft"]), name
        assert inputs["volumes"][-1] == SECRETS_VOLUME, name
        assert container.delete_before_replace is True, name
        uid = str(inputs["user"]).split(":")[0]
        for upload in inputs["uploads"]:
            if upload["permissions"] == "0400":
                assert (upload["owner"], upload["group"]) == (uid, uid), (name, upload["file"])
    volumes = mocks.of_type(VOLUME)
    assert len(volumes) >= 4
    for volume in volumes:
        suffix = str(volume.inputs["name"]).removeprefix(f"mlflow-platform-{stack}-")
        role = volume.inputs["labels"][2]["value"]
        assert (volume.inputs, volume.protect, volume.retain_on_delete) == declared_volume(stack, suffix, role)
        assert PROTECTED[stack] is volume.protect


def test_the_local_deployer_implements_the_stop_and_one_shot_inputs() -> None:
    assert {"stopSignal", "stopTimeout", "destroyGraceSeconds", "attach", "mustRun", "networkMode"} <= HANDLED_INPUTS[
        CONTAINER
    ]
    assert "keepers" in HANDLED_INPUTS[RANDOM_PASSWORD]
    # The provider stops with a 0 s timeout (an immediate SIGKILL) when no grace is declared.
    assert grace_seconds({}, "c") == 0
    assert grace_seconds({"destroyGraceSeconds": {"c": 120}}, "c") == 120


def test_the_local_deployer_maps_stop_signal_and_network_mode() -> None:
    deployer = LocalDeployer("p", "unit-stop")
    args = pulumi.runtime.MockResourceArgs(typ=CONTAINER, name="c", inputs={})
    config = container_config(deployer, args, {"image": "x", "stopSignal": "SIGINT", "networkMode": "none"})
    assert (config["stop_signal"], config["network_mode"]) == ("SIGINT", "none")
