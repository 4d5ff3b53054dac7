"""Realises the Pulumi program's resources on the local Docker engine, for end-to-end tests.

The Pulumi CLI and its provider plugins cannot be installed here, so `LocalDeployer`
stands in for the `docker` and `random` providers: Pulumi's mocks call it once a
resource's inputs are resolved (as the engine would call the provider), and it
creates the resource for real with the Docker SDK. It is a test double, not an
engine: no diffs. `up` replaces containers, updates swarm services in place, reuses this stack's
network and volumes, and remembers generated passwords in a small state file (the
part of Pulumi's state that must survive between runs).

`LocalDeployer` dispatches each resource to its realiser: randoms.py, tls.py,
docker_realise.py (networks, volumes, images), containers.py, swarm.py (services,
secrets, configs; service_spec.py converts a service's inputs); inputs.py refuses
what none of them implements. lifecycle.py holds `destroy` and the stand-ins,
state.py the state file.
"""

from __future__ import annotations

import asyncio
import json
import runpy
import time
from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from tools.local_deploy.common import AbortedError, DeployError, log
from tools.local_deploy.containers import realise_container
from tools.local_deploy.docker_realise import realise_image, realise_network, realise_remote_image, realise_volume
from tools.local_deploy.inputs import (
    COMPONENT_PREFIX,
    CONTAINER,
    IMAGE,
    NETWORK,
    RANDOM_PASSWORD,
    RANDOM_STRING,
    REMOTE_IMAGE,
    SECRET,
    SERVICE,
    SERVICE_CONFIG,
    TLS_CERT_REQUEST,
    TLS_LOCALLY_SIGNED_CERT,
    TLS_PRIVATE_KEY,
    TLS_SELF_SIGNED_CERT,
    VOLUME,
    check_inputs,
    check_options,
)
from tools.local_deploy.lifecycle import destroy, require_standin_images, standin_config, standins_enabled
from tools.local_deploy.randoms import realise_random
from tools.local_deploy.session import Realise, Session
from tools.local_deploy.swarm import collect_unused, realise_secret, realise_service, realise_service_config
from tools.local_deploy.tls import realise_tls
from tools.mocks import SECRET_CONFIG_KEYS, _working_directory, install
from tools.stack_config import PROJECT_DIR, project_name

# What `python -m tools.local_deploy`, the end-to-end tests and the benchmark call.
__all__ = [
    "DeployError",
    "LocalDeployer",
    "destroy",
    "down",
    "require_standin_images",
    "standin_config",
    "standins_enabled",
    "up",
]


# Type token -> what makes one such resource (check_inputs refuses any other type first).
REALISERS: dict[str, Realise] = {
    RANDOM_PASSWORD: realise_random,
    RANDOM_STRING: realise_random,
    NETWORK: realise_network,
    VOLUME: realise_volume,
    REMOTE_IMAGE: realise_remote_image,
    IMAGE: realise_image,
    CONTAINER: realise_container,
    SERVICE: realise_service,
    SECRET: realise_secret,
    SERVICE_CONFIG: realise_service_config,
    TLS_PRIVATE_KEY: realise_tls,
    TLS_SELF_SIGNED_CERT: realise_tls,
    TLS_CERT_REQUEST: realise_tls,
    TLS_LOCALLY_SIGNED_CERT: realise_tls,
}


class LocalDeployer(Session):
    """Mocks whose `create` makes each resource on the local Docker engine."""

    def create(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if args.typ.startswith(COMPONENT_PREFIX):
            return "", {}
        with self._idle:
            self._in_flight += 1
        try:
            return self._create(args, inputs)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _create(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        try:
            self.check_aborted(args.name)
            check_inputs(args.typ, args.name, inputs)
            check_options(args.typ, args.name, self.options(args))
            return REALISERS[args.typ](self, args, inputs)
        except Exception as error:
            failure = (
                error
                if isinstance(error, DeployError)
                else DeployError(f"'{args.name}' ({args.typ}) failed: {type(error).__name__}: {error}")
            )
            with self._state_lock:
                if self.first_error is None and not isinstance(failure, AbortedError):
                    self.first_error = failure
            self.aborted.set()
            if failure is error:
                raise
            raise failure from error


def _quiet_aborted_futures() -> None:
    """After a failed `up`, the SDK drops one future per registration that stopped with the
    failure; asyncio logs each from its finalizer ("Future exception was never retrieved"),
    hundreds of tracebacks repeating the one error `up` raised. Those are not logged."""
    loop: asyncio.AbstractEventLoop = _ensure_event_loop()  # type: ignore[no-untyped-call]  # `_sync_await`'s loop
    previous = loop.get_exception_handler()
    if getattr(previous, "quiets_aborted_futures", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), DeployError) and "never retrieved" in str(context.get("message")):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiets_aborted_futures = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def up(
    stack: str = "dev", overrides: Mapping[str, object] | None = None, *, standins: bool | None = None
) -> dict[str, object]:
    """Runs the program as `pulumi up` would, creating every resource; returns the stack outputs.

    Secret outputs are returned in the clear: this is for local tests only. Config is
    Pulumi.yaml's defaults, then the stack file, then the stand-ins (unless
    `standins=False`), then `overrides` (short keys).
    """
    if standins is None:
        standins = standins_enabled()
    config = {**(standin_config() if standins else {}), **(overrides or {})}
    deployer = LocalDeployer(project_name(), stack)
    if standins:
        require_standin_images(deployer.client)
    install(deployer, stack, config)
    values: dict[str, object] = {}

    def program() -> pulumi.Output[Any]:
        with _working_directory(str(PROJECT_DIR)):
            runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")
        root = pulumi_settings.get_root_resource()
        outputs: dict[str, Any] = dict(getattr(root, "outputs", {}))

        async def gather() -> None:
            for name in sorted(outputs):
                values[name] = await pulumi.Output.from_input(outputs[name]).future()

        return pulumi.Output.from_input(gather())

    _quiet_aborted_futures()
    # What pulumi.runtime.test does: run the program, then wait until every
    # registration (and so every create) and every output has finished.
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    # Secret keys are shown as <secret>, as `pulumi config` shows them: CI logs are readable by many.
    shown = {key: "<secret>" if key in SECRET_CONFIG_KEYS and value else value for key, value in config.items()}
    log(f"up: stack {stack}, config overrides {json.dumps(shown, sort_keys=True)}")
    try:
        _sync_await(run_pulumi_func(lambda: _sync_await(program().future())))
    except BaseException as error:
        deployer.aborted.set()
        # Creates in other threads see the abort within a second or two (a container
        # being replaced may take its stop grace period); they end before `up` does.
        # The longest stop grace the program declares is 60 s (MLflow, Postgres, the proxy).
        if not deployer.wait_idle(timeout=90):
            log("up: some creates were still running after the failure")
        # The SDK reports whichever registration it awaited first, which may be one
        # that only stopped because of the real failure.
        if deployer.first_error is not None and deployer.first_error is not error:
            raise deployer.first_error from None
        raise
    collect_unused(deployer)
    log(f"up: done in {time.monotonic() - deployer.started:.1f}s")
    return values


def down(stack: str = "dev", keep_volumes: bool = False, *, purge: bool = False) -> None:
    """Removes the stack's containers, networks, built images and (unless keep_volumes) volumes;
    with `purge`, the retainOnDelete volumes and the state file too (tests start from nothing)."""
    destroy(project_name(), stack, keep_volumes=keep_volumes, purge=purge)
