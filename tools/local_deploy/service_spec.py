"""pulumi-docker's Service inputs as the Docker SDK's service spec (docker.types), with the provider's defaults.

Pure conversion, no engine: inputs.py has already refused every input not handled here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import docker.auth
import docker.types

from tools.local_deploy.common import NODE_VOLUME_LABEL, DeployError, UnsupportedInputError
from tools.local_deploy.container_config import duration_ns
from tools.local_deploy.inputs import label_map, whole

# pulumi-docker's (terraform-provider-docker's) defaults where a block is given without the key.
_DEFAULT_CONVERGE_DELAY = "7s"
_DEFAULT_CONVERGE_TIMEOUT = "3m"
_UPDATE_DEFAULTS: Mapping[str, Any] = {
    "parallelism": 1,
    "delay": "0s",
    "failureAction": "pause",
    "monitor": "5s",
    "maxFailureRatio": "0.0",
    "order": "stop-first",
}
# Secret and config files: the provider's default owner and mode.
_DEFAULT_FILE_MODE = 0o444


@dataclass(frozen=True)
class Converge:
    """convergeConfig: poll every `delay_s` until the service runs as declared, for at most `timeout_s`."""

    delay_s: float
    timeout_s: float


@dataclass(frozen=True)
class RegistryLogin:
    """A service's `auth`: the login every node pulls the service's image with.

    pulumi-docker sends it as the create's and update's X-Registry-Auth (the CLI's
    `--with-registry-auth`); the manager keeps it with the service for its nodes, and never
    returns it in an inspect. The Docker SDK sends that header from the client's logins for the
    image's registry, so realise_service logs the client in first (`APIClient.login`).
    """

    server: str
    username: str
    # Secret: out of repr, so no log line, error or assertion message shows it.
    password: str = field(repr=False)


@dataclass(frozen=True)
class ServiceSpec:
    """What `APIClient.create_service` / `update_service` take, plus the converge settings."""

    name: str
    labels: dict[str, str]
    task_template: docker.types.TaskTemplate
    replicas: int
    update_config: docker.types.UpdateConfig | None
    rollback_config: docker.types.RollbackConfig | None
    endpoint_spec: docker.types.EndpointSpec | None
    converge: Converge | None
    auth: RegistryLogin | None = None
    """Not among api_arguments: the SDK sends it as a header, from the client's login."""

    def api_arguments(self) -> dict[str, Any]:
        return {
            "task_template": self.task_template,
            "name": self.name,
            "labels": self.labels,
            "mode": docker.types.ServiceMode("replicated", replicas=self.replicas),
            "update_config": self.update_config,
            "rollback_config": self.rollback_config,
            "endpoint_spec": self.endpoint_spec,
        }


def _seconds(value: str) -> float:
    return duration_ns(value) / 1e9


def _update_config(config: Mapping[str, Any], kind: type[docker.types.UpdateConfig]) -> docker.types.UpdateConfig:
    merged = {**_UPDATE_DEFAULTS, **{key: value for key, value in config.items() if value is not None}}
    return kind(
        parallelism=whole(merged, "parallelism", 1),
        delay=duration_ns(str(merged["delay"])),
        failure_action=str(merged["failureAction"]),
        monitor=duration_ns(str(merged["monitor"])),
        max_failure_ratio=float(merged["maxFailureRatio"]),
        order=str(merged["order"]),
    )


def _file_reference(item: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The file part of a secret or config reference; pulumi-docker takes uid and gid as strings."""
    if not item.get(f"{kind}Name"):
        # The schema says optional, but swarm refuses the service ("malformed config reference").
        raise UnsupportedInputError(f"a {kind} reference without {kind}Name (swarm requires it): {dict(item)!r}")
    if not item.get("fileName"):
        # The provider requires it; without it Docker would use the secret's name under /run/secrets.
        raise UnsupportedInputError(f"a {kind} reference without fileName: {dict(item)!r}")
    return {
        "filename": str(item["fileName"]),
        "uid": str(item.get("fileUid") or "0"),
        "gid": str(item.get("fileGid") or "0"),
        "mode": whole(item, "fileMode", _DEFAULT_FILE_MODE),
    }


def _mount(mount: Mapping[str, Any], stack_labels: Mapping[str, str]) -> docker.types.Mount:
    kind = str(mount.get("type") or "volume")
    if kind not in ("volume", "tmpfs"):
        # bind mounts tie a task to one node's file system: the swarm target declares none.
        raise UnsupportedInputError(f"mount type {kind!r} (only volume and tmpfs are implemented)")
    arguments: dict[str, Any] = {
        "target": str(mount["target"]),
        "source": mount.get("source") or None,
        "type": kind,
        "read_only": bool(mount.get("readOnly")),
    }
    if kind == "volume":
        volume_labels = label_map((mount.get("volumeOptions") or {}).get("labels"))
        # A named volume a task creates carries the stack's labels, so `down` finds it by them, and the
        # node-volume mark, so `down` keeps it as `pulumi destroy` does (it is no Pulumi resource).
        arguments["labels"] = (
            {**volume_labels, **stack_labels, NODE_VOLUME_LABEL: "true"}
            if mount.get("source")
            else volume_labels or None
        )
    else:
        tmpfs = mount.get("tmpfsOptions") or {}
        if tmpfs.get("sizeBytes") is not None:
            arguments["tmpfs_size"] = whole(tmpfs, "sizeBytes", 0)
        if tmpfs.get("mode") is not None:
            arguments["tmpfs_mode"] = whole(tmpfs, "mode", 0)
    return docker.types.Mount(**arguments)


def _container_spec(spec: Mapping[str, Any], stack_labels: Mapping[str, str]) -> docker.types.ContainerSpec:
    healthcheck = None
    if spec.get("healthcheck"):
        check = spec["healthcheck"]
        healthcheck = docker.types.Healthcheck(
            test=list(check.get("tests") or []),
            interval=duration_ns(check.get("interval") or "0s"),
            timeout=duration_ns(check.get("timeout") or "0s"),
            retries=int(check.get("retries") or 0),
            start_period=duration_ns(check.get("startPeriod") or "0s"),
        )
    secrets = [
        docker.types.SecretReference(
            **_file_reference(item, "secret"),
            secret_id=str(item["secretId"]),
            secret_name=str(item["secretName"]),
        )
        for item in spec.get("secrets") or []
    ]
    configs = [
        docker.types.ConfigReference(
            **_file_reference(item, "config"),
            config_id=str(item["configId"]),
            config_name=str(item["configName"]),
        )
        for item in spec.get("configs") or []
    ]
    env = spec.get("env") or {}
    stop_grace = spec.get("stopGracePeriod")
    return docker.types.ContainerSpec(
        image=str(spec["image"]),
        command=list(spec["commands"]) if spec.get("commands") else None,
        args=list(spec["args"]) if spec.get("args") else None,
        hostname=spec.get("hostname") or None,
        env=[f"{key}={value}" for key, value in sorted(env.items())] or None,
        user=spec.get("user") or None,
        labels={**label_map(spec.get("labels")), **stack_labels},
        mounts=[_mount(mount, stack_labels) for mount in spec.get("mounts") or []] or None,
        stop_grace_period=duration_ns(stop_grace) if stop_grace else None,
        secrets=secrets or None,
        configs=configs or None,
        read_only=True if spec.get("readOnly") else None,
        stop_signal=spec.get("stopSignal") or None,
        healthcheck=healthcheck,
        init=True if spec.get("init") else None,
        cap_add=list(spec["capAdds"]) if spec.get("capAdds") else None,
        cap_drop=list(spec["capDrops"]) if spec.get("capDrops") else None,
    )


def _preference(pref: str) -> tuple[str, str]:
    """pulumi-docker's `prefs` are the CLI's `spread=<descriptor>` strings."""
    strategy, separator, descriptor = pref.partition("=")
    if strategy != "spread" or not separator or not descriptor:
        raise UnsupportedInputError(f"placement preference {pref!r} (only spread=<descriptor> exists)")
    return ("spread", descriptor)


def _task_template(task: Mapping[str, Any], stack_labels: Mapping[str, str]) -> docker.types.TaskTemplate:
    if not task.get("containerSpec"):
        raise UnsupportedInputError("a service without taskSpec.containerSpec")
    limits = (task.get("resources") or {}).get("limits") or {}
    resources = None
    if limits:
        resources = docker.types.Resources(
            cpu_limit=whole(limits, "nanoCpus", 0) or None, mem_limit=whole(limits, "memoryBytes", 0) or None
        )
    restart_policy = None
    if task.get("restartPolicy"):
        policy = task["restartPolicy"]
        restart_policy = docker.types.RestartPolicy(
            condition=str(policy.get("condition") or "any"),
            delay=duration_ns(policy.get("delay") or "0s"),
            max_attempts=whole(policy, "maxAttempts", 0),
            window=duration_ns(policy.get("window") or "0s"),
        )
    placement = None
    if task.get("placement"):
        where = task["placement"]
        placement = docker.types.Placement(
            constraints=list(where.get("constraints") or []) or None,
            preferences=[_preference(str(pref)) for pref in where.get("prefs") or []] or None,
            maxreplicas=whole(where, "maxReplicas", 0) or None,
        )
    log_driver = None
    if task.get("logDriver"):
        driver = task["logDriver"]
        log_driver = docker.types.DriverConfig(name=str(driver["name"]), options=dict(driver.get("options") or {}))
    networks = [
        docker.types.NetworkAttachmentConfig(target=_network(net), aliases=list(net.get("aliases") or []) or None)
        for net in task.get("networksAdvanceds") or []
    ]
    return docker.types.TaskTemplate(
        container_spec=_container_spec(task["containerSpec"], stack_labels),
        resources=resources,
        restart_policy=restart_policy,
        placement=placement,
        log_driver=log_driver,
        networks=networks or None,
    )


def _network(attachment: Mapping[str, Any]) -> str:
    """The network an attachment names: by `id` (what the provider asks for) or the deprecated `name`."""
    if bool(attachment.get("id")) == bool(attachment.get("name")):
        raise DeployError(f"a network attachment sets exactly one of id and name (they conflict): {attachment}")
    return str(attachment.get("id") or attachment["name"])


def _endpoint_spec(endpoint: Mapping[str, Any]) -> docker.types.EndpointSpec | None:
    ports = [
        {
            "Protocol": str(port.get("protocol") or "tcp"),
            "TargetPort": whole(port, "targetPort", 0),
            "PublishMode": str(port.get("publishMode") or "ingress"),
            **({"PublishedPort": whole(port, "publishedPort", 0)} if port.get("publishedPort") else {}),
        }
        for port in endpoint.get("ports") or []
    ]
    mode = endpoint.get("mode") or None
    if mode not in (None, "vip", "dnsrr"):
        raise UnsupportedInputError(f"endpointSpec.mode {mode!r} (vip or dnsrr)")
    return docker.types.EndpointSpec(mode=mode, ports=ports or None) if ports or mode else None


def _registry_login(resource: str, auth: Mapping[str, Any], image: str) -> RegistryLogin | None:
    """`auth` as the login for the image's registry; refused where the SDK would not send it for the image."""
    server, username, password = (str(auth.get(key) or "") for key in ("serverAddress", "username", "password"))
    if not (server or username or password):
        return None
    given = {"serverAddress": server, "username": username, "password": password}
    if not all(given.values()):
        unset = ", ".join(key for key, value in given.items() if not value)
        raise UnsupportedInputError(
            f"'{resource}': auth without {unset}: a login is serverAddress, username and password together"
        )
    # The SDK picks the login by the registry the image's name starts with (docker.io for a bare name).
    image_registry, _ = docker.auth.resolve_repository_name(image)
    if docker.auth.resolve_index_name(server) != image_registry:
        raise UnsupportedInputError(
            f"'{resource}': auth.serverAddress {server!r} is not the registry of the image {image!r} "
            f"({image_registry}): the local deployer sends a login only for the image's own registry"
        )
    return RegistryLogin(server=server, username=username, password=password)


def service_spec(inputs: Mapping[str, Any], default_name: str, stack_labels: Mapping[str, str]) -> ServiceSpec:
    """The service as the engine takes it. `stack_labels` (the stack's and the deployer's marker) go on
    the service, its containers and the named volumes its tasks create, so `down` finds them all."""
    replicated = (inputs.get("mode") or {}).get("replicated") or {}
    converge = None
    # A convergeConfig block without keys still asks for the wait, with the provider's defaults.
    if inputs.get("convergeConfig") is not None:
        config = inputs["convergeConfig"]
        converge = Converge(
            delay_s=_seconds(config.get("delay") or _DEFAULT_CONVERGE_DELAY),
            timeout_s=_seconds(config.get("timeout") or _DEFAULT_CONVERGE_TIMEOUT),
        )
    task = inputs.get("taskSpec") or {}
    task_template = _task_template(task, stack_labels)
    return ServiceSpec(
        name=str(inputs.get("name") or default_name),
        labels={**label_map(inputs.get("labels")), **stack_labels},
        task_template=task_template,
        # The provider's default: one replica.
        replicas=whole(replicated, "replicas", 1),
        update_config=_update_config(inputs["updateConfig"], docker.types.UpdateConfig)
        if inputs.get("updateConfig")
        else None,
        rollback_config=_update_config(inputs["rollbackConfig"], docker.types.RollbackConfig)
        if inputs.get("rollbackConfig")
        else None,
        endpoint_spec=_endpoint_spec(inputs.get("endpointSpec") or {}),
        converge=converge,
        auth=_registry_login(default_name, inputs.get("auth") or {}, str(task["containerSpec"]["image"])),
    )
