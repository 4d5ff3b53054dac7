"""pulumi-docker's Service, Secret and ServiceConfig on the local engine in swarm mode; swarm init and leave.

A service that exists (an earlier `up` of the stack made it) is updated in place, as
the provider updates it, so swarm performs its rolling update (and its rollback), unless
its `replacement_trigger` changed: then it is replaced, the old one removed first
(delete_before_replace, the only kind a fixed name allows);
secrets and configs are immutable in swarm, so a new value is a new, auto-named object
and the stack's old ones are removed once no service uses them (`collect_unused`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets as random_source
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import docker
import docker.errors
import pulumi

from tools.local_deploy.common import (
    MANAGED_LABEL,
    PROJECT_LABEL,
    STACK_LABEL,
    DeployError,
    UnsupportedInputError,
    log,
)
from tools.local_deploy.service_spec import Converge, RegistryLogin, ServiceSpec, service_spec
from tools.local_deploy.session import Session

# `docker swarm init --advertise-addr 127.0.0.1`: one node, reachable from itself only.
_ADVERTISE_ADDR = "127.0.0.1"
# How long `down` waits for a removed service's containers to stop (their stop grace
# periods; the longest the program declares is 60 s) before removing networks.
_TASKS_GONE_TIMEOUT = 90
# Swarm's update states after which nothing more happens without a new update.
_UPDATE_FAILED = {"rollback_completed", "paused", "rollback_paused"}
# Swarm starts a rolling update (UpdateStatus "updating") within milliseconds of a change to
# the tasks; a change it does not roll out (placement only, when the node still fits) never
# sets UpdateStatus. Tasks that have run as declared this long after the update mean that.
_NO_ROLLOUT_GRACE_S = 5.0


def auto_name(resource: str) -> str:
    """Pulumi's auto-naming: the logical name and 7 random hex characters."""
    return f"{resource}-{random_source.token_hex(4)[:7]}"


def stack_labels(session: Session) -> dict[str, str]:
    return {PROJECT_LABEL: session.project, STACK_LABEL: session.stack, MANAGED_LABEL: "true"}


def _stack_filters(project: str, stack: str) -> dict[str, list[str]]:
    return {"label": [f"{PROJECT_LABEL}={project}", f"{STACK_LABEL}={stack}", f"{MANAGED_LABEL}=true"]}


def decode_data(resource: str, value: object) -> bytes:
    """The provider's `data` is base64 (standard or URL-safe alphabet)."""
    text = str(value or "")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        try:
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            # Never the value: it is a secret.
            raise DeployError(f"'{resource}': data is not base64") from None


def _realise_swarm_object(
    session: Session, kind: str, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A secret or config: immutable, so an existing one of the same name is reused only if its data
    is the same (its digest is kept in the state file: the engine never returns a secret's data)."""
    data = decode_data(args.name, inputs.get("data"))
    labels = session.labels(inputs)
    collection = session.client.secrets if kind == "secrets" else session.client.configs
    digest = hashlib.sha256(data).hexdigest()
    name = str(inputs.get("name") or _kept_auto_name(session, args.name, digest))
    existing = [item for item in collection.list(filters={"name": name}) if item.name == name]
    if existing:
        if session.state.get("swarmDigests", {}).get(name) != digest:
            raise DeployError(
                f"'{args.name}': a {kind[:-1]} named {name} exists with other data, and swarm {kind} are "
                f"immutable; leave `name` unset (auto-naming) or run `python -m tools.local_deploy down --stack "
                f"{session.stack}`"
            )
        made = existing[0]
        session.event(f"reused {kind[:-1]}", name)
    else:
        made = collection.create(name=name, data=data, labels=labels)
        session.event(f"created {kind[:-1]}", name)
    session.update_state(lambda state: state.setdefault("swarmDigests", {}).__setitem__(name, digest))
    if not inputs.get("name"):
        session.update_state(lambda state: state.setdefault("swarmAutoNames", {}).__setitem__(args.name, name))
    session.record(kind, name)
    session.made_this_up.add(name)
    return str(made.id), {"name": name}


def _kept_auto_name(session: Session, resource: str, digest: str) -> str:
    """As Pulumi keeps an auto-name in its state until a change replaces the resource: the name the
    last `up` gave this resource while its data is the same, a new one once the data changed."""
    kept = session.state.get("swarmAutoNames", {}).get(resource)
    if kept and session.state.get("swarmDigests", {}).get(kept) == digest:
        return str(kept)
    return auto_name(resource)


def realise_secret(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    return _realise_swarm_object(session, "secrets", args, inputs)


def realise_service_config(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    return _realise_swarm_object(session, "configs", args, inputs)


def log_in(session: Session, resource: str, login: RegistryLogin | None) -> None:
    """A service's `auth`: the client logs in to the image's registry, so that its create or update
    carries the login (X-Registry-Auth) and the manager hands it to the nodes that pull the image.

    `reauth`: always asks the engine, which checks the password against the registry (a wrong one
    fails here, not as tasks that cannot pull); the login stays in this client's memory, no file.
    """
    if login is None:
        return
    try:
        session.client.api.login(login.username, login.password, registry=login.server, reauth=True)
    except docker.errors.APIError as error:
        # The engine's message names the registry and the status; never the password.
        raise DeployError(
            f"'{resource}': the login to {login.server} as {login.username} (auth) failed: {error.explanation}"
        ) from None
    session.event("logged in to", f"{login.server} as {login.username}")


def realise_service(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    spec = service_spec(inputs, args.name, stack_labels(session))
    api = session.client.api
    log_in(session, args.name, spec.auth)
    try:
        current = api.inspect_service(spec.name)
    except docker.errors.NotFound:
        current = None
    trigger = session.options(args).get("replacement_trigger")
    if current is not None and _replacement_triggered(session, args.name, trigger):
        _remove_before_replacing(session, args, current, trigger)
        current = None
    if current is None:
        service_id = str(api.create_service(**spec.api_arguments())["ID"])
        session.record("services", spec.name)
        session.event("created service", spec.name)
        if spec.converge:
            try:
                wait_converged(session, args.name, spec, spec.converge, update=False)
            except Exception:
                # As a failed container create: nothing half-made stays behind.
                with suppress(docker.errors.DockerException):
                    api.remove_service(service_id)
                raise
    else:
        service_id = str(current["ID"])
        found = current["Spec"].get("Labels") or {}
        if any(found.get(key) != value for key, value in stack_labels(session).items()):
            # Someone else's service of that name (another stack, a real `pulumi up`): never updated.
            raise DeployError(
                f"'{args.name}': a service named {spec.name} exists that this stack's `up` did not make; remove it"
            )
        api.update_service(service_id, version=current["Version"]["Index"], **spec.api_arguments())
        session.record("services", spec.name)
        session.event("updated service", spec.name)
        if spec.converge:
            wait_converged(session, args.name, spec, spec.converge, update=True)
    session.update_state(lambda state: state.setdefault("replacementTriggers", {}).__setitem__(args.name, trigger))
    return service_id, {"name": spec.name}


def _replacement_triggered(session: Session, resource: str, trigger: object) -> bool:
    """Pulumi replaces a resource whose `replacement_trigger` differs from the one in its state.
    A service this deployer made before it recorded triggers has none recorded: kept, not replaced."""
    recorded = session.state.get("replacementTriggers", {})
    return resource in recorded and recorded[resource] != trigger


def _remove_before_replacing(
    session: Session, args: pulumi.runtime.MockResourceArgs, current: dict[str, Any], trigger: object
) -> None:
    """A replacement with delete_before_replace: the old service goes, and its tasks' containers (each
    stopped within its grace period) before the new one is created, as the provider's delete waits."""
    name = str(current["Spec"]["Name"])
    if not session.options(args).get("delete_before_replace"):
        # Pulumi would create the new service first, under the same fixed name: the engine refuses that.
        raise UnsupportedInputError(
            f"'{args.name}': its replacement_trigger changed, and a replacement that creates service {name} "
            "before deleting the old one is not implemented (nor possible under a fixed name): set "
            "delete_before_replace"
        )
    before = session.state.get("replacementTriggers", {}).get(args.name)
    session.event(f"replacing (replacement_trigger {before!r} -> {trigger!r}) service", name)
    session.client.api.remove_service(current["ID"])
    if not wait_tasks_gone(session.client, [str(current["ID"])], _TASKS_GONE_TIMEOUT):
        raise DeployError(
            f"'{args.name}': the tasks of the replaced service {name} were still there after {_TASKS_GONE_TIMEOUT}s"
        )
    session.event("removed, its tasks stopped: service", name)


def wait_tasks_gone(client: docker.DockerClient, service_ids: list[str], timeout: float) -> bool:
    """Waits until no container of the (removed) services is left; False if some still are after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = [
            container
            for service_id in service_ids
            for container in client.containers.list(
                all=True, filters={"label": f"com.docker.swarm.service.id={service_id}"}
            )
        ]
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _task_error(tasks: list[dict[str, Any]]) -> str:
    """The newest task error (a crash, a failed health check, a rejected mount), or the newest state."""
    newest = sorted(tasks, key=lambda task: str(task.get("Status", {}).get("Timestamp", "")), reverse=True)
    for task in newest:
        status = task.get("Status") or {}
        if status.get("Err"):
            return f"{status.get('State')}: {status['Err']}"
    return f"{newest[0]['Status'].get('State')}: {newest[0]['Status'].get('Message')}" if newest else "no task"


def _converged(tasks: list[dict[str, Any]], replicas: int) -> bool:
    """Every task swarm wants running runs, and there are as many as declared. A task with a
    health check reaches `running` only once healthy (swarm holds it in `starting` until then)."""
    wanted = [task for task in tasks if task.get("DesiredState") == "running"]
    return len(wanted) == replicas and all(task["Status"].get("State") == "running" for task in wanted)


def wait_converged(session: Session, resource: str, spec: ServiceSpec, converge: Converge, *, update: bool) -> None:
    """convergeConfig: the create or update succeeds once the service runs as declared. After an
    update whose task template changed, swarm's rolling update must also have completed; a rollback
    (or a paused update) fails the deployment."""
    api = session.client.api
    started = time.monotonic()
    deadline = started + converge.timeout_s
    replicas = spec.replicas
    while True:
        session.check_aborted(resource)
        service = api.inspect_service(spec.name)
        tasks = api.tasks(filters={"service": spec.name})
        status = service.get("UpdateStatus") or {}
        state = status.get("State")
        if state in _UPDATE_FAILED:
            raise DeployError(
                f"'{resource}': the update of service {spec.name} failed ({state}): {status.get('Message')}; "
                f"last task error: {_task_error(tasks)}"
            )
        previous = service.get("PreviousSpec") or {}
        # An update that changes the tasks starts a rolling update (UpdateStatus); one that only
        # changes the replicas or labels does not, and the engine resets UpdateStatus on every update.
        rolling = update and previous.get("TaskTemplate") != service["Spec"].get("TaskTemplate")
        rolled = not rolling or state == "completed"
        if rolling and state is None and time.monotonic() - started >= _NO_ROLLOUT_GRACE_S:
            rolled = True
        if rolled and _converged(tasks, replicas):
            session.event(f"converged after {time.monotonic() - started:.1f}s:", spec.name)
            return
        if time.monotonic() > deadline:
            raise DeployError(
                f"'{resource}': service {spec.name} did not converge within {converge.timeout_s:.0f}s "
                f"(update: {state or 'none'}); last task error: {_task_error(tasks)}"
            )
        time.sleep(converge.delay_s)


def _in_use(client: docker.DockerClient) -> set[str]:
    """IDs of the secrets and configs some service refers to."""
    used: set[str] = set()
    for service in client.api.services():
        container = service["Spec"]["TaskTemplate"].get("ContainerSpec") or {}
        used |= {str(item["SecretID"]) for item in container.get("Secrets") or []}
        used |= {str(item["ConfigID"]) for item in container.get("Configs") or []}
    return used


def collect_unused(session: Session) -> None:
    """After a successful `up`: the stack's secrets and configs that this `up` did not make and that no
    service uses any more go, as Pulumi deletes a replaced resource once its replacement is in place.
    One a rolled-back service still uses stays."""
    if not swarm_active(session.client):
        return
    used = _in_use(session.client)
    filters = _stack_filters(session.project, session.stack)
    for collection in (session.client.secrets, session.client.configs):
        for item in collection.list(filters=filters):
            if item.name in session.made_this_up or item.id in used:
                continue
            with suppress(docker.errors.NotFound):
                item.remove()
                session.event("removed unused", str(item.name))


def swarm_active(client: docker.DockerClient) -> bool:
    return bool(client.info().get("Swarm", {}).get("ControlAvailable"))


def destroy_swarm_objects(
    client: docker.DockerClient, project: str, stack: str, attempt: Callable[[str, Callable[[], object]], None]
) -> None:
    """`down`'s swarm part, before containers and networks: the services, then (once their tasks'
    containers are gone, so the overlay networks can go) the secrets and configs."""
    if not swarm_active(client):
        return
    filters = _stack_filters(project, stack)
    services = client.services.list(filters=filters)
    ids = [service.id for service in services]
    for service in services:
        attempt(f"service {service.name}", service.remove)
    wait_tasks_gone(client, ids, _TASKS_GONE_TIMEOUT)
    for secret in client.secrets.list(filters=filters):
        attempt(f"secret {secret.name}", secret.remove)
    for config in client.configs.list(filters=filters):
        attempt(f"config {config.name}", config.remove)


def swarm_init(node_labels: Mapping[str, str]) -> None:
    """Puts the engine in swarm mode as a single-node manager (if it is not one already) and labels the node."""
    client = docker.from_env(timeout=120)
    state = client.info().get("Swarm", {}).get("LocalNodeState")
    if state == "active" and not swarm_active(client):
        raise DeployError("this engine is a swarm worker, not a manager; run `swarm-leave` first")
    if state != "active":
        client.swarm.init(advertise_addr=_ADVERTISE_ADDR, listen_addr=f"{_ADVERTISE_ADDR}:2377")
        log(f"swarm initialised (advertise address {_ADVERTISE_ADDR})")
    else:
        log("swarm already active")
    node = client.nodes.get(str(client.info()["Swarm"]["NodeID"]))
    spec = dict(node.attrs["Spec"])
    labels = dict(spec.get("Labels") or {})
    if any(labels.get(key) != value for key, value in node_labels.items()):
        spec["Labels"] = {**labels, **node_labels}
        node.update(spec)
        log(f"labelled node {node.attrs['Description']['Hostname']}: {node_labels}")


def swarm_leave() -> None:
    """Leaves swarm mode (the services of every stack go with it); nothing to do if not in one."""
    client = docker.from_env(timeout=120)
    if client.info().get("Swarm", {}).get("LocalNodeState") == "inactive":
        log("swarm not active")
        return
    client.swarm.leave(force=True)
    log("left the swarm")
