"""The local deployer's swarm part: services, secrets, configs and overlay networks.

The conversion of every service input to the Docker SDK's spec, the refusals and the
auto-naming run without an engine; one docker-marked test makes a small service on the
engine in swarm mode, updates it (a rolling update onto a new secret), looks at the
secret inside a task and destroys everything.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pulumi
import pytest
import requests

from tools.local_deploy import state as local_state
from tools.local_deploy import swarm
from tools.local_deploy.common import (
    MANAGED_LABEL,
    NODE_VOLUME_LABEL,
    PROJECT_LABEL,
    STACK_LABEL,
    DeployError,
    UnsupportedInputError,
)
from tools.local_deploy.deployer import LocalDeployer
from tools.local_deploy.inputs import NETWORK, SECRET, SERVICE, SERVICE_CONFIG, check_inputs, check_options
from tools.local_deploy.lifecycle import destroy
from tools.local_deploy.prepare import STANDIN_DEBIAN_IMAGE
from tools.local_deploy.service_spec import Converge, RegistryLogin, service_spec

STACK_LABELS = {PROJECT_LABEL: "p", STACK_LABEL: "s", MANAGED_LABEL: "true"}
_LABELS = [{"label": "org.example.role", "value": "web"}]

# Every input the deployer implements, set.
_REGISTRY_PASSWORD = "registry-password-of-ci"
FULL_INPUTS: dict[str, Any] = {
    "name": "p-s-web",
    "labels": _LABELS,
    "auth": {"serverAddress": "registry.example", "username": "ci", "password": _REGISTRY_PASSWORD},
    "mode": {"replicated": {"replicas": 3.0}},
    "convergeConfig": {"delay": "500ms", "timeout": "2m"},
    "updateConfig": {
        "parallelism": 1.0,
        "delay": "1s",
        "failureAction": "rollback",
        "monitor": "30s",
        "maxFailureRatio": "0.1",
        "order": "start-first",
    },
    "rollbackConfig": {"parallelism": 2.0, "order": "stop-first"},
    "endpointSpec": {
        "mode": "dnsrr",
        "ports": [{"targetPort": 443.0, "publishedPort": 8443.0, "protocol": "tcp", "publishMode": "host"}],
    },
    "taskSpec": {
        "containerSpec": {
            "image": "registry.example/web@sha256:abc",
            "commands": ["/entrypoint"],
            "args": ["serve", "--port", "443"],
            "env": {"B": "2", "A": "1"},
            "user": "1000:1000",
            "readOnly": True,
            "capDrops": ["ALL"],
            "capAdds": ["NET_BIND_SERVICE"],
            "labels": [{"label": "org.example.container", "value": "yes"}],
            "mounts": [
                {
                    "type": "volume",
                    "source": "p-s-data",
                    "target": "/data",
                    "volumeOptions": {"labels": [{"label": "org.example.volume", "value": "data"}]},
                },
                {"type": "volume", "target": "/scratch"},
                {"type": "tmpfs", "target": "/tmp", "tmpfsOptions": {"sizeBytes": 1048576.0, "mode": 1023.0}},
                {"type": "volume", "source": "p-s-ro", "target": "/ro", "readOnly": True},
            ],
            "secrets": [
                {
                    "secretId": "sec1",
                    "secretName": "p-s-token-1a2b3c4",
                    "fileName": "/run/app/token",
                    "fileUid": "1000",
                    "fileGid": "1000",
                    "fileMode": 256.0,
                }
            ],
            "configs": [{"configId": "cfg1", "configName": "p-s-conf-7a8b9c0", "fileName": "/etc/app/app.conf"}],
            "healthcheck": {"tests": ["CMD", "true"], "interval": "5s", "timeout": "2s", "retries": 3.0},
            "stopSignal": "SIGQUIT",
            "stopGracePeriod": "1m",
            "init": True,
            "hostname": "web",
        },
        "resources": {"limits": {"memoryBytes": 536870912.0, "nanoCpus": 500000000.0}},
        "restartPolicy": {"condition": "any", "delay": "5s", "maxAttempts": 0.0, "window": "1m"},
        "placement": {
            "constraints": ["node.labels.mlflow-platform.postgres==true"],
            "prefs": ["spread=node.id"],
            "maxReplicas": 2.0,
        },
        "logDriver": {"name": "json-file", "options": {"max-size": "10m", "max-file": "3"}},
        "networksAdvanceds": [{"id": "net-id", "aliases": ["web", "www"]}, {"name": "p-s-db"}],
    },
}

SECOND = 10**9


def _sent(value: Any) -> Any:
    """What the engine receives: the SDK's unset (None) fields arrive as JSON null, which Go reads as unset."""
    if isinstance(value, dict):
        return {key: _sent(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_sent(item) for item in value]
    return value


def test_a_network_attachment_names_its_network_by_id_or_name_not_both() -> None:
    both = {"taskSpec": {**FULL_INPUTS["taskSpec"], "networksAdvanceds": [{"id": "net-id", "name": "p-s-net"}]}}
    with pytest.raises(DeployError, match="exactly one of id and name"):
        service_spec({**FULL_INPUTS, **both}, "web", STACK_LABELS)


def test_every_implemented_service_input_becomes_the_engines_spec() -> None:
    check_inputs(SERVICE, "web", FULL_INPUTS)
    spec = service_spec(FULL_INPUTS, "web", STACK_LABELS)
    assert spec.name == "p-s-web"
    assert spec.labels == {"org.example.role": "web", **STACK_LABELS}
    assert spec.replicas == 3
    assert spec.api_arguments()["mode"] == {"replicated": {"Replicas": 3}}
    assert spec.converge == Converge(delay_s=0.5, timeout_s=120)
    assert spec.auth == RegistryLogin(server="registry.example", username="ci", password=_REGISTRY_PASSWORD)
    # The login is no part of the spec the engine stores and shows (it travels as a header), nor of any repr.
    assert _REGISTRY_PASSWORD not in repr(spec)
    assert _REGISTRY_PASSWORD not in json.dumps(_sent(spec.api_arguments()))
    assert spec.update_config == {
        "Parallelism": 1,
        "Delay": 1 * SECOND,
        "FailureAction": "rollback",
        "Monitor": 30 * SECOND,
        "MaxFailureRatio": 0.1,
        "Order": "start-first",
    }
    # The provider's defaults fill what a block leaves out.
    assert spec.rollback_config == {
        "Parallelism": 2,
        "Delay": 0,
        "FailureAction": "pause",
        "Monitor": 5 * SECOND,
        "MaxFailureRatio": 0.0,
        "Order": "stop-first",
    }
    assert spec.endpoint_spec == {
        "Mode": "dnsrr",
        "Ports": [{"Protocol": "tcp", "TargetPort": 443, "PublishMode": "host", "PublishedPort": 8443}],
    }
    assert _sent(spec.task_template) == {
        "ContainerSpec": {
            "Image": "registry.example/web@sha256:abc",
            "Command": ["/entrypoint"],
            "Args": ["serve", "--port", "443"],
            "Hostname": "web",
            "Env": ["A=1", "B=2"],
            "User": "1000:1000",
            "Labels": {"org.example.container": "yes", **STACK_LABELS},
            "Mounts": [
                {
                    "Target": "/data",
                    "Source": "p-s-data",
                    "Type": "volume",
                    "ReadOnly": False,
                    # The stack's labels on a named volume: `down` finds it by them; and keeps it (node volume).
                    "VolumeOptions": {
                        "Labels": {"org.example.volume": "data", **STACK_LABELS, NODE_VOLUME_LABEL: "true"}
                    },
                },
                {"Target": "/scratch", "Type": "volume", "ReadOnly": False},
                {
                    "Target": "/tmp",
                    "Type": "tmpfs",
                    "ReadOnly": False,
                    "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 0o1777},
                },
                {
                    "Target": "/ro",
                    "Source": "p-s-ro",
                    "Type": "volume",
                    "ReadOnly": True,
                    "VolumeOptions": {"Labels": {**STACK_LABELS, NODE_VOLUME_LABEL: "true"}},
                },
            ],
            "StopGracePeriod": 60 * SECOND,
            "Secrets": [
                {
                    "SecretID": "sec1",
                    "SecretName": "p-s-token-1a2b3c4",
                    "File": {"Name": "/run/app/token", "UID": "1000", "GID": "1000", "Mode": 0o400},
                }
            ],
            "ReadOnly": True,
            "StopSignal": "SIGQUIT",
            "Healthcheck": {
                "Test": ["CMD", "true"],
                "Interval": 5 * SECOND,
                "Timeout": 2 * SECOND,
                "Retries": 3,
                "StartPeriod": 0,
            },
            "Configs": [
                {
                    "ConfigID": "cfg1",
                    "ConfigName": "p-s-conf-7a8b9c0",
                    # The provider's defaults: root, 0444.
                    "File": {"Name": "/etc/app/app.conf", "UID": "0", "GID": "0", "Mode": 0o444},
                }
            ],
            "Init": True,
            "CapabilityAdd": ["NET_BIND_SERVICE"],
            "CapabilityDrop": ["ALL"],
        },
        "Resources": {"Limits": {"NanoCPUs": 500000000, "MemoryBytes": 536870912}},
        "RestartPolicy": {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0, "Window": 60 * SECOND},
        "Placement": {
            "Constraints": ["node.labels.mlflow-platform.postgres==true"],
            "Preferences": [{"Spread": {"SpreadDescriptor": "node.id"}}],
            "MaxReplicas": 2,
        },
        "LogDriver": {"Name": "json-file", "Options": {"max-size": "10m", "max-file": "3"}},
        "Networks": [{"Target": "net-id", "Aliases": ["web", "www"]}, {"Target": "p-s-db"}],
    }


def test_a_minimal_service_gets_the_providers_defaults_and_no_wait() -> None:
    inputs = {"taskSpec": {"containerSpec": {"image": "x"}}}
    spec = service_spec(inputs, "web-res", STACK_LABELS)
    assert spec.name == "web-res"
    assert spec.replicas == 1
    assert (spec.update_config, spec.rollback_config, spec.endpoint_spec, spec.converge) == (None, None, None, None)
    assert _sent(spec.task_template) == {"ContainerSpec": {"Image": "x", "Labels": STACK_LABELS}}
    # convergeConfig given empty-handed: the provider's 7s / 3m.
    assert service_spec({**inputs, "convergeConfig": {}}, "w", {}).converge == Converge(delay_s=7, timeout_s=180)
    converge = service_spec({**inputs, "convergeConfig": {"timeout": "90s"}}, "w", {}).converge
    assert converge == Converge(delay_s=7, timeout_s=90)


@pytest.mark.parametrize(
    ("path", "inputs"),
    [
        ("mode.global", {"mode": {"global": True}}),
        ("auth.identityToken", {"auth": {"serverAddress": "r.example", "identityToken": "t"}}),
        ("endpointSpec.ports[0].name", {"endpointSpec": {"ports": [{"targetPort": 1, "name": "web"}]}}),
        ("taskSpec.forceUpdate", {"taskSpec": {"forceUpdate": 1}}),
        ("taskSpec.containerSpec.privileges", {"taskSpec": {"containerSpec": {"privileges": {"seLinuxContext": {}}}}}),
        ("taskSpec.containerSpec.sysctl", {"taskSpec": {"containerSpec": {"sysctl": {"net.core.somaxconn": "1"}}}}),
        ("taskSpec.containerSpec.dir", {"taskSpec": {"containerSpec": {"dir": "/srv"}}}),
        (
            "taskSpec.containerSpec.mounts[1].bindOptions",
            {"taskSpec": {"containerSpec": {"mounts": [{"target": "/a"}, {"target": "/b", "bindOptions": {"p": 1}}]}}},
        ),
        (
            "taskSpec.containerSpec.mounts[0].volumeOptions.driverName",
            {"taskSpec": {"containerSpec": {"mounts": [{"target": "/a", "volumeOptions": {"driverName": "nfs"}}]}}},
        ),
        ("taskSpec.resources.reservation", {"taskSpec": {"resources": {"reservation": {"memoryBytes": 1}}}}),
        ("taskSpec.placement.platforms", {"taskSpec": {"placement": {"platforms": [{"os": "linux"}]}}}),
        ("taskSpec.networksAdvanceds[0].driverOpts", {"taskSpec": {"networksAdvanceds": [{"driverOpts": ["a"]}]}}),
        ("taskSpec.runtime", {"taskSpec": {"runtime": "container"}}),
    ],
)
def test_an_unimplemented_service_input_is_refused_with_its_path(path: str, inputs: dict[str, Any]) -> None:
    with pytest.raises(
        UnsupportedInputError, match=rf"'web' \({re.escape(SERVICE)}\) sets the input '{re.escape(path)}'"
    ):
        check_inputs(SERVICE, "web", {"name": "w", **inputs})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"taskSpec": {"containerSpec": {"image": "x", "mounts": [{"type": "bind", "target": "/a"}]}}}, "mount type"),
        ({"taskSpec": {"containerSpec": {"image": "x", "secrets": [{"secretId": "s"}]}}}, "without secretName"),
        (
            {"taskSpec": {"containerSpec": {"image": "x", "configs": [{"configId": "c", "configName": "c"}]}}},
            "without fileName",
        ),
        ({"taskSpec": {"containerSpec": {"image": "x"}, "placement": {"prefs": ["node.id"]}}}, "spread="),
        ({"taskSpec": {}}, "without taskSpec.containerSpec"),
        ({"taskSpec": {"containerSpec": {"image": "x"}}, "endpointSpec": {"mode": "ingress"}}, "vip or dnsrr"),
        (
            {"taskSpec": {"containerSpec": {"image": "r.example/x"}}, "auth": {"serverAddress": "r.example"}},
            r"^'web': auth without username, password: a login is serverAddress, username and password together$",
        ),
        (
            # The SDK would send the login for other.example only: the nodes would pull r.example's image without it.
            {
                "taskSpec": {"containerSpec": {"image": "r.example:5000/x@sha256:ab"}},
                "auth": {"serverAddress": "other.example", "username": "u", "password": "p"},
            },
            r"^'web': auth.serverAddress 'other.example' is not the registry of the image "
            r"'r.example:5000/x@sha256:ab' \(r.example:5000\): the local deployer sends a login only for the image's",
        ),
    ],
)
def test_service_inputs_the_engine_would_misread_are_refused(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedInputError, match=message):
        service_spec(inputs, "web", STACK_LABELS)


@pytest.mark.parametrize("token", [SECRET, SERVICE_CONFIG])
def test_secrets_and_configs_refuse_unknown_inputs(token: str) -> None:
    check_inputs(token, "s", {"name": "n", "data": "eA==", "labels": _LABELS})
    with pytest.raises(UnsupportedInputError, match=r"'s'.*'dataRaw'"):
        check_inputs(token, "s", {"data": "eA==", "dataRaw": "x"})


def test_overlay_network_inputs_are_implemented_and_ingress_is_refused() -> None:
    check_inputs(NETWORK, "net", {"name": "n", "driver": "overlay", "attachable": True, "internal": True})
    with pytest.raises(UnsupportedInputError, match=r"'net'.*'ingress'"):
        check_inputs(NETWORK, "net", {"driver": "overlay", "ingress": True})


class _AnsweringApi(docker.APIClient):  # type: ignore[misc]  # docker-py is untyped
    """docker-py's own APIClient, with the engine's answers given here: what it sends is what the engine would get."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__(base_url="unix:///nonexistent/docker.sock", version="1.41")
        self.current = current
        self.sent: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def inspect_service(self, service: str, insert_defaults: bool | None = None) -> dict[str, Any]:
        if self.current is None:
            raise docker.errors.NotFound(f"service {service} not found")
        return self.current

    def _post_json(self, url: str, data: dict[str, Any], **kwargs: Any) -> requests.Response:
        self.sent.append((url.split("/v1.41", 1)[1], data, dict(kwargs.get("headers") or {})))
        answer = requests.Response()
        answer.status_code = 200
        answer._content = json.dumps({"ID": "svc-id"}).encode()
        return answer


def _registry_auth(headers: dict[str, str]) -> dict[str, Any]:
    """X-Registry-Auth as the engine decodes it (URL-safe base64 JSON)."""
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(headers["X-Registry-Auth"]))
    return decoded


@pytest.mark.parametrize("exists", [False, True], ids=["create", "update"])
def test_a_service_with_auth_is_sent_with_the_login_for_its_nodes(
    local_deployer: LocalDeployer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exists: bool
) -> None:
    """`auth`: the client logs in to the image's registry, then the create or update carries that login,
    which the manager keeps for the nodes that pull the image (the CLI's --with-registry-auth)."""
    # No Docker config file of this machine's user can add or change a login.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    current = {"ID": "svc-id", "Version": {"Index": 7}, "Spec": {"Labels": swarm.stack_labels(local_deployer)}}
    api = _AnsweringApi(current if exists else None)
    local_deployer._local.client = type("Client", (), {"api": api})()
    inputs = {
        "name": "p-unit-web",
        "auth": {"serverAddress": "registry.example:5000", "username": "ci", "password": _REGISTRY_PASSWORD},
        "taskSpec": {"containerSpec": {"image": "registry.example:5000/p/web@sha256:abc"}},
    }
    assert swarm.realise_service(local_deployer, _args(SERVICE, "web", inputs), inputs)[0] == "svc-id"
    [(login_url, login, _), (url, service, headers)] = api.sent
    assert (login_url, login) == (
        "/auth",
        {"username": "ci", "password": _REGISTRY_PASSWORD, "email": None, "serveraddress": "registry.example:5000"},
    )
    assert url == ("/services/svc-id/update" if exists else "/services/create")
    assert _registry_auth(headers) == {
        "username": "ci",
        "password": _REGISTRY_PASSWORD,
        "email": None,
        "serveraddress": "registry.example:5000",
    }
    # Only in that header: not in the spec the engine stores and shows, nor in the deployer's events.
    assert _REGISTRY_PASSWORD not in json.dumps(service)
    assert not any(_REGISTRY_PASSWORD in " ".join(event[1:]) for event in local_deployer.events)
    assert ("logged in to", "registry.example:5000 as ci") in [event[1:] for event in local_deployer.events]


def test_a_service_without_auth_sends_no_login(
    local_deployer: LocalDeployer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    api = _AnsweringApi(None)
    local_deployer._local.client = type("Client", (), {"api": api})()
    inputs = {"name": "p-unit-web", "taskSpec": {"containerSpec": {"image": "registry.example:5000/p/web@sha256:a"}}}
    swarm.realise_service(local_deployer, _args(SERVICE, "web", inputs), inputs)
    [(url, _, headers)] = api.sent
    assert url == "/services/create"
    assert "X-Registry-Auth" not in headers


def test_a_refused_login_fails_the_service_naming_registry_and_user_not_the_password(
    local_deployer: LocalDeployer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))

    class Refusing(_AnsweringApi):
        def _post_json(self, url: str, data: dict[str, Any], **kwargs: Any) -> requests.Response:
            self.sent.append((url, data, {}))
            answer = requests.Response()
            answer.status_code = 401
            answer.url = url
            # What the engine answers for a wrong password.
            answer._content = (
                b'{"message":"login attempt to https://registry.example:5000/v2/ failed with status: 401"}'
            )
            return answer

    api = Refusing(None)
    local_deployer._local.client = type("Client", (), {"api": api})()
    inputs = {
        "auth": {"serverAddress": "registry.example:5000", "username": "ci", "password": _REGISTRY_PASSWORD},
        "taskSpec": {"containerSpec": {"image": "registry.example:5000/p/web@sha256:abc"}},
    }
    with pytest.raises(DeployError) as raised:
        swarm.realise_service(local_deployer, _args(SERVICE, "web", inputs), inputs)
    assert str(raised.value) == (
        "'web': the login to registry.example:5000 as ci (auth) failed: "
        "login attempt to https://registry.example:5000/v2/ failed with status: 401"
    )
    # Nothing was created with a login the registry refuses.
    assert len(api.sent) == 1


def _args(token: str, name: str, inputs: dict[str, Any]) -> pulumi.runtime.MockResourceArgs:
    return pulumi.runtime.MockResourceArgs(typ=token, name=name, inputs=inputs, custom=True)


def test_auto_names_are_the_logical_name_and_seven_hex_characters() -> None:
    names = {swarm.auto_name("db-password") for _ in range(20)}
    assert all(re.fullmatch(r"db-password-[0-9a-f]{7}", name) for name in names)
    assert len(names) > 1


def test_secret_data_is_base64_and_a_bad_value_is_not_echoed() -> None:
    assert swarm.decode_data("s", base64.b64encode(b"\xfb\xff+/").decode()) == b"\xfb\xff+/"
    assert swarm.decode_data("s", base64.urlsafe_b64encode(b"\xfb\xff+/").decode()) == b"\xfb\xff+/"
    with pytest.raises(DeployError, match=r"^'s': data is not base64$"):
        swarm.decode_data("s", "hunter2!")


# --- On the engine, in swarm mode ---------------------------------------------------------------

_PROJECT = "mlflow-platform"
_STACK = "swarm-unit"
_FILTERS = {"label": [f"{PROJECT_LABEL}={_PROJECT}", f"{STACK_LABEL}={_STACK}"]}


@pytest.fixture
def swarm_deployer(
    docker_client: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalDeployer]:
    monkeypatch.setattr(local_state, "STATE_DIR", tmp_path / "local-deploy")
    swarm.swarm_init({"mlflow-platform.postgres": "true"})
    destroy(_PROJECT, _STACK, purge=True)
    deployer = LocalDeployer(_PROJECT, _STACK)
    try:
        yield deployer
    finally:
        destroy(_PROJECT, _STACK, purge=True)


def _make(deployer: LocalDeployer, token: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    args = pulumi.runtime.MockResourceArgs(typ=token, name=name, inputs=inputs, custom=True)
    return deployer.create(args, inputs)


def _service_inputs(secret_id: str, secret_name: str, config: tuple[str, str], generation: str) -> dict[str, Any]:
    return {
        "name": f"{_STACK}-web",
        "mode": {"replicated": {"replicas": 2}},
        "convergeConfig": {"delay": "500ms", "timeout": "40s"},
        "updateConfig": {"parallelism": 1, "order": "start-first", "failureAction": "rollback", "monitor": "1s"},
        "rollbackConfig": {"parallelism": 1, "order": "start-first", "monitor": "1s"},
        "taskSpec": {
            "containerSpec": {
                "image": STANDIN_DEBIAN_IMAGE,
                "commands": ["sleep", "infinity"],
                "env": {"GENERATION": generation},
                "user": "65534:65534",
                "readOnly": True,
                "capDrops": ["ALL"],
                "stopGracePeriod": "1s",
                "init": True,
                # Healthy only if the unprivileged user can read its secret.
                "healthcheck": {"tests": ["CMD", "cat", "/run/app/token"], "interval": "1s", "retries": 3},
                "mounts": [{"type": "volume", "source": f"{_STACK}-data", "target": "/data"}],
                "secrets": [
                    {
                        "secretId": secret_id,
                        "secretName": secret_name,
                        "fileName": "/run/app/token",
                        "fileUid": "65534",
                        "fileGid": "65534",
                        "fileMode": 0o400,
                    }
                ],
                "configs": [
                    {"configId": config[0], "configName": config[1], "fileName": "/etc/app/app.conf", "fileMode": 0o444}
                ],
            },
            "restartPolicy": {"condition": "any", "delay": "1s"},
            "networksAdvanceds": [{"name": f"{_STACK}-net", "aliases": ["web"]}],
        },
    }


def _task_containers(client: docker.DockerClient, service: str) -> list[Any]:
    """The containers of the tasks swarm wants running (after an update, the old ones may still be stopping)."""
    tasks = client.services.get(service).tasks(filters={"desired-state": "running"})
    return [client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"]) for task in tasks]


@pytest.mark.docker
def test_a_service_is_created_updated_in_place_and_destroyed(
    docker_client: docker.DockerClient, swarm_deployer: LocalDeployer
) -> None:
    started = time.monotonic()
    network = {"name": f"{_STACK}-net", "driver": "overlay", "attachable": True}
    _make(swarm_deployer, NETWORK, "net", network)
    first_id, first = _make(swarm_deployer, SECRET, "token", {"data": base64.b64encode(b"first-token").decode()})
    config_id, config = _make(swarm_deployer, SERVICE_CONFIG, "conf", {"data": base64.b64encode(b"a=1\n").decode()})
    assert re.fullmatch(r"token-[0-9a-f]{7}", first["name"])
    service_id, _ = _make(
        swarm_deployer, SERVICE, "web", _service_inputs(first_id, first["name"], (config_id, config["name"]), "1")
    )

    service = docker_client.services.get(service_id)
    [container, _] = _task_containers(docker_client, f"{_STACK}-web")
    check = container.exec_run(
        ["sh", "-c", "stat -c '%a %u:%g' /run/app/token /etc/app/app.conf; grep ' /run/app/token ' /proc/mounts"],
        user="65534",
    )
    lines = check.output.decode().splitlines()
    assert lines[:2] == ["400 65534:65534", "444 0:0"]
    # The secret is in memory: a tmpfs, never the container's disk.
    assert lines[2].split()[2] == "tmpfs"
    assert container.exec_run(["cat", "/run/app/token"], user="65534").output == b"first-token"

    # A second `up` with a new secret value: a new secret, the same service rolled onto it.
    swarm_deployer = LocalDeployer(_PROJECT, _STACK)
    _make(swarm_deployer, NETWORK, "net", network)
    second_id, second = _make(swarm_deployer, SECRET, "token", {"data": base64.b64encode(b"second-token").decode()})
    kept_id, kept = _make(swarm_deployer, SERVICE_CONFIG, "conf", {"data": base64.b64encode(b"a=1\n").decode()})
    # As Pulumi keeps an auto-name until the data changes: the same config, so nothing else rolls for it.
    assert second["name"] != first["name"]
    assert (kept_id, kept) == (config_id, config)
    updated_id, _ = _make(
        swarm_deployer, SERVICE, "web", _service_inputs(second_id, second["name"], (config_id, config["name"]), "2")
    )
    assert updated_id == service_id
    service.reload()
    assert service.attrs["UpdateStatus"]["State"] == "completed"
    containers = _task_containers(docker_client, f"{_STACK}-web")
    assert len(containers) == 2
    assert all(c.exec_run(["cat", "/run/app/token"], user="65534").output == b"second-token" for c in containers)
    swarm.collect_unused(swarm_deployer)
    names = {secret.name for secret in docker_client.secrets.list(filters=_FILTERS)}
    configs = {item.name for item in docker_client.configs.list(filters=_FILTERS)}
    assert (names, configs) == ({second["name"]}, {config["name"]})

    # An update whose tasks never get healthy: swarm rolls back, and the deployment fails naming the service.
    broken = _service_inputs(second_id, second["name"], (config_id, config["name"]), "3")
    broken["taskSpec"]["containerSpec"]["healthcheck"]["tests"] = ["CMD", "cat", "/run/app/missing"]
    with pytest.raises(DeployError, match=rf"^'web': the update of service {_STACK}-web failed \(rollback_completed\)"):
        _make(LocalDeployer(_PROJECT, _STACK), SERVICE, "web", broken)
    assert {
        c.exec_run(["printenv", "GENERATION"]).output for c in _task_containers(docker_client, f"{_STACK}-web")
    } == {b"2\n"}

    destroy(_PROJECT, _STACK, purge=True)
    assert docker_client.services.list(filters=_FILTERS) == []
    assert docker_client.secrets.list(filters=_FILTERS) + docker_client.configs.list(filters=_FILTERS) == []
    assert docker_client.networks.list(filters=_FILTERS) == []
    assert docker_client.volumes.list(filters=_FILTERS) == []
    assert docker_client.containers.list(all=True, filters={"label": f"com.docker.swarm.service.id={service_id}"}) == []
    assert time.monotonic() - started < 60


def _with_trigger(deployer: LocalDeployer, trigger: str, *, delete_before_replace: bool = True) -> LocalDeployer:
    """The options the program registers with the service (the deployer reads them as Pulumi's engine gets them)."""
    deployer.pending_options[(SERVICE, "web")] = {
        "replacement_trigger": trigger,
        "delete_before_replace": delete_before_replace,
    }
    return deployer


@pytest.mark.docker
def test_a_changed_replacement_trigger_replaces_the_service_old_tasks_gone_first(
    docker_client: docker.DockerClient, swarm_deployer: LocalDeployer
) -> None:
    def up(trigger: str, generation: str, **options: bool) -> tuple[LocalDeployer, str]:
        deployer = _with_trigger(LocalDeployer(_PROJECT, _STACK), trigger, **options)
        _make(deployer, NETWORK, "net", {"name": f"{_STACK}-net", "driver": "overlay", "attachable": True})
        secret_id, secret = _make(deployer, SECRET, "token", {"data": base64.b64encode(b"token").decode()})
        config_id, config = _make(deployer, SERVICE_CONFIG, "conf", {"data": base64.b64encode(b"a=1\n").decode()})
        inputs = _service_inputs(secret_id, secret["name"], (config_id, config["name"]), generation)
        service_id, _ = _make(deployer, SERVICE, "web", inputs)
        return deployer, service_id

    _, first_id = up("3.12.0", "1")
    # The same trigger: updated in place, a rolling update.
    _, rolled_id = up("3.12.0", "2")
    assert rolled_id == first_id
    old_containers = {c.id for c in _task_containers(docker_client, f"{_STACK}-web")}
    # Refused rather than attempted: a create-before-delete under the same fixed name.
    with pytest.raises(UnsupportedInputError, match=r"^'web': its replacement_trigger changed, .* set delete_before_"):
        up("3.17.2", "3", delete_before_replace=False)
    assert docker_client.services.get(f"{_STACK}-web").id == first_id

    deployer, replaced_id = up("3.17.2", "3")
    assert replaced_id != first_id
    with pytest.raises(docker.errors.NotFound):
        docker_client.services.get(first_id)
    events = [(event, name) for _, event, name in deployer.events if name == f"{_STACK}-web"]
    assert events[:3] == [
        ("replacing (replacement_trigger '3.12.0' -> '3.17.2') service", f"{_STACK}-web"),
        ("removed, its tasks stopped: service", f"{_STACK}-web"),
        ("created service", f"{_STACK}-web"),
    ]
    # Every old task's container was gone before the new service was created: none is left now either.
    left = docker_client.containers.list(all=True, filters={"label": f"com.docker.swarm.service.id={first_id}"})
    assert left == []
    new_containers = _task_containers(docker_client, f"{_STACK}-web")
    assert len(new_containers) == 2
    assert not {c.id for c in new_containers} & old_containers
    assert deployer.state["replacementTriggers"] == {"web": "3.17.2"}


def test_replacement_options_the_deployer_does_not_implement_are_refused() -> None:
    check_options(SERVICE, "web", {"replacement_trigger": "3.17.2", "delete_before_replace": True})
    with pytest.raises(UnsupportedInputError, match=r"^resource 'web' \(.*\) sets the option replace_on_changes"):
        check_options(SERVICE, "web", {"replace_on_changes": ["taskSpec"]})
    with pytest.raises(UnsupportedInputError, match=r"implements for docker:index/service:Service only$"):
        check_options(SECRET, "token", {"replacement_trigger": "1"})


class _FakeApi:
    """The low-level API `wait_converged` polls: one service, its tasks, its update status."""

    def __init__(self, tasks: list[dict[str, Any]], update_status: dict[str, Any] | None) -> None:
        self.task_list, self.update_status = tasks, update_status

    def inspect_service(self, name: str) -> dict[str, Any]:
        service: dict[str, Any] = {"Spec": {"TaskTemplate": {"v": 2}}, "PreviousSpec": {"TaskTemplate": {"v": 1}}}
        if self.update_status is not None:
            service["UpdateStatus"] = self.update_status
        return service

    def tasks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return self.task_list


def _task(state: str, desired: str = "running", err: str = "", at: str = "2026-01-01T00:00:01Z") -> dict[str, Any]:
    return {"DesiredState": desired, "Status": {"State": state, "Err": err, "Timestamp": at, "Message": state}}


def _wait(local_deployer: LocalDeployer, api: _FakeApi, *, update: bool) -> None:
    local_deployer._local.client = type("Client", (), {"api": api})()
    spec = service_spec({"name": "p-s-web", "mode": {"replicated": {"replicas": 2}}, **_MINIMAL}, "web", {})
    swarm.wait_converged(local_deployer, "web", spec, Converge(delay_s=0.01, timeout_s=0.05), update=update)


_MINIMAL: dict[str, Any] = {"taskSpec": {"containerSpec": {"image": "x"}}}


@pytest.fixture
def local_deployer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalDeployer:
    monkeypatch.setattr(local_state, "STATE_DIR", tmp_path / "local-deploy")
    return LocalDeployer("mlflow-platform", "unit")


def test_a_service_converges_when_its_replicas_run(local_deployer: LocalDeployer) -> None:
    tasks = [_task("running"), _task("running"), _task("shutdown", desired="shutdown")]
    _wait(local_deployer, _FakeApi(tasks, None), update=False)
    # An update that changed the tasks also waits for swarm's rolling update to complete.
    _wait(local_deployer, _FakeApi(tasks, {"State": "completed"}), update=True)


def test_a_service_that_does_not_converge_fails_with_the_last_task_error(local_deployer: LocalDeployer) -> None:
    tasks = [
        _task("failed", err="task: non-zero exit (1)", at="2026-01-01T00:00:02Z"),
        _task("failed", err="starting container failed: no such image", at="2026-01-01T00:00:05Z"),
        _task("starting"),
        _task("running"),
    ]
    with pytest.raises(DeployError) as raised:
        _wait(local_deployer, _FakeApi(tasks, None), update=False)
    assert str(raised.value) == (
        "'web': service p-s-web did not converge within 0s (update: none); "
        "last task error: failed: starting container failed: no such image"
    )
    # Replicas running but the rolling update still going: not converged either.
    with pytest.raises(DeployError, match=r"did not converge within 0s \(update: updating\)"):
        _wait(local_deployer, _FakeApi([_task("running"), _task("running")], {"State": "updating"}), update=True)


def test_a_changed_service_that_swarm_does_not_roll_out_converges_after_a_grace(
    local_deployer: LocalDeployer, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = [_task("running"), _task("running")]
    # Within the grace period, no UpdateStatus may still mean a rolling update about to start.
    with pytest.raises(DeployError, match=r"did not converge within 0s \(update: none\)"):
        _wait(local_deployer, _FakeApi(running, None), update=True)
    monkeypatch.setattr(swarm, "_NO_ROLLOUT_GRACE_S", 0.0)
    _wait(local_deployer, _FakeApi(running, None), update=True)


@pytest.mark.parametrize("state", ["rollback_completed", "paused", "rollback_paused"])
def test_a_rolled_back_or_paused_update_fails_naming_the_service(local_deployer: LocalDeployer, state: str) -> None:
    status = {"State": state, "Message": "update rolled back due to failure or early termination of task x"}
    api = _FakeApi([_task("running"), _task("running")], status)
    with pytest.raises(DeployError) as raised:
        _wait(local_deployer, api, update=True)
    message = str(raised.value)
    assert message.startswith(f"'web': the update of service p-s-web failed ({state}): update rolled back")
    assert "\n" not in message
