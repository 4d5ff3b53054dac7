"""pulumi-docker's Container on the local Docker engine: replace, create, upload, start, wait; and its delete."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import docker
import docker.errors
import docker.models.containers
import pulumi

from tools.local_deploy.common import DeployError
from tools.local_deploy.container_config import container_config, network_attachments, upload_archive
from tools.local_deploy.inputs import whole
from tools.local_deploy.session import Session

_CONTAINER_LOG_TAIL = 40
# pulumi-docker's defaults.
_DEFAULT_WAIT_TIMEOUT = 60
# pulumi-docker stops a container with `destroy_grace_seconds` as the timeout
# before it removes it (on replace and destroy); unset, the timeout is 0: SIGKILL.
_DEFAULT_DESTROY_GRACE_SECONDS = 0
# How long an attached (one-shot) container may run; the provider waits forever.
_ATTACH_TIMEOUT = 600


def grace_seconds(state: Mapping[str, Any], name: str) -> int:
    """The destroyGraceSeconds the container was created with (0 if unknown, as the provider)."""
    return int((state.get("destroyGraceSeconds") or {}).get(name, _DEFAULT_DESTROY_GRACE_SECONDS))


def stop_container(container: docker.models.containers.Container, grace: int) -> None:
    """The provider's delete: stop with the grace period as timeout, then remove.

    Docker sends the container's stop signal, waits `grace` seconds, then SIGKILLs.
    """
    container.reload()
    if container.attrs["State"].get("Running"):
        container.stop(timeout=grace)


def remove_container(session: Session, name: str) -> None:
    """An earlier `up` left it: the engine would replace it, so it goes first,
    stopped the way the provider's delete stops it."""
    try:
        old = session.client.containers.get(name)
    except docker.errors.NotFound:
        return
    stop_container(old, grace_seconds(session.state, name))
    old.remove(v=True, force=True)
    session.event("removed old container", name)


def create_container(
    session: Session, config: dict[str, Any], stop_timeout: int | None
) -> docker.models.containers.Container:
    """`containers.create`, plus StopTimeout, which the SDK's high-level API does not pass on."""
    create_kwargs = docker.models.containers._create_container_args({**config, "version": session.client.api._version})
    if stop_timeout is not None:
        create_kwargs["stop_timeout"] = stop_timeout
    response = session.client.api.create_container(**create_kwargs)
    return session.client.containers.get(response["Id"])


def realise_container(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    config = container_config(session, args, inputs)
    name = config["name"]
    remove_container(session, name)
    networks = network_attachments(args.name, inputs)
    if networks:
        first, aliases = networks[0]
        config["network"] = first
        config["networking_config"] = {first: session.client.api.create_endpoint_config(aliases=aliases)}
    stop_timeout = whole(inputs, "stopTimeout", -1) if inputs.get("stopTimeout") is not None else None
    container = create_container(session, config, stop_timeout)
    session.record("containers", name)
    grace = whole(inputs, "destroyGraceSeconds", _DEFAULT_DESTROY_GRACE_SECONDS)
    session.update_state(lambda state: state.setdefault("destroyGraceSeconds", {}).__setitem__(name, grace))
    try:
        # Every network joined before start, so the process never sees a partial set
        # (an internal network among them: the container is reachable there by its aliases only).
        for network, aliases in networks[1:]:
            session.client.networks.get(network).connect(container, aliases=aliases)
            session.event(f"connected to network {network}:", name)
        for upload in inputs.get("uploads") or []:
            directory, archive = upload_archive(upload)
            if not container.put_archive(directory, archive):
                raise DeployError(f"'{args.name}': uploading {upload['file']} into {name} failed")
        container.start()
        session.event("started container", name)
        if inputs.get("wait"):
            timeout = float(inputs.get("waitTimeout") or _DEFAULT_WAIT_TIMEOUT)
            wait_healthy(session, args.name, container, timeout)
        if inputs.get("attach"):
            wait_exited(session, args.name, container)
        elif inputs.get("logs"):
            raise DeployError(f"'{args.name}': logs without attach (the provider keeps no output then)")
    except Exception:
        # What the engine does with a failed create: nothing half-made stays behind
        # except the logs printed in the error.
        with suppress(docker.errors.DockerException):
            container.remove(v=True, force=True)
        raise
    container.reload()
    network_datas = [
        {"networkName": net, "ipAddress": data.get("IPAddress"), "gateway": data.get("Gateway")}
        for net, data in (container.attrs["NetworkSettings"].get("Networks") or {}).items()
    ]
    state = container.attrs["State"]
    # As the provider's read: the exit code of a container that is not running.
    exit_code = None if state.get("Running") else state.get("ExitCode")
    # mustRun only decides what a later refresh does with a stopped container;
    # an `up` from nothing, all this deployer does, never reads it.
    outputs: dict[str, Any] = {"name": name, "networkDatas": network_datas, "exitCode": exit_code}
    if inputs.get("attach") and inputs.get("logs"):
        # As the provider: an attached container's whole output, stdout and stderr.
        outputs["containerLogs"] = container.logs().decode(errors="replace")
    return str(container.id), outputs


def wait_exited(session: Session, resource: str, container: docker.models.containers.Container) -> None:
    """pulumi-docker's `attach`: the create returns once the container has exited,
    whatever its exit code (the provider records it as `exitCode` and does not fail)."""
    deadline = time.monotonic() + _ATTACH_TIMEOUT
    while True:
        session.check_aborted(resource)
        container.reload()
        if container.attrs["State"].get("Status") in ("exited", "dead"):
            code = container.attrs["State"].get("ExitCode")
            session.event(f"exited with code {code}:", str(container.name))
            return
        if time.monotonic() > deadline:
            raise DeployError(f"'{resource}': container {container.name} still runs after {_ATTACH_TIMEOUT}s")
        time.sleep(0.5)


def wait_healthy(
    session: Session, resource: str, container: docker.models.containers.Container, timeout: float
) -> None:
    """pulumi-docker's `wait`: the create succeeds only once Docker reports the container healthy."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        session.check_aborted(resource)
        container.reload()
        state = container.attrs["State"]
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy" or (health is None and state.get("Running")):
            session.event(f"healthy after {time.monotonic() - started:.1f}s:", container.name)
            return
        problem = None
        restarts = container.attrs.get("RestartCount") or 0
        # The engine would wait out the timeout; a crash on first start will not heal.
        if restarts:
            # Already running again, so State.ExitCode no longer holds the crash's code.
            problem = f"crashed and was restarted {restarts} times"
        elif state.get("Status") in ("exited", "dead"):
            problem = f"exited with code {state.get('ExitCode')}"
        elif health == "unhealthy":
            problem = "is unhealthy"
        elif time.monotonic() > deadline:
            problem = f"is not healthy after {timeout:.0f}s (health: {health})"
        if problem:
            logs = container.logs(tail=_CONTAINER_LOG_TAIL).decode(errors="replace")
            probe = (state.get("Health") or {}).get("Log") or []
            # A probe's output can be a whole traceback: its last line says what failed.
            probe_output = (probe[-1].get("Output") or "").strip().splitlines() if probe else []
            last_probe = f"\nlast health probe: {probe_output[-1]}" if probe_output else ""
            raise DeployError(
                f"'{resource}': container {container.name} {problem}; its last {_CONTAINER_LOG_TAIL} log lines:\n"
                f"{logs}{last_probe}"
            )
        time.sleep(1)
