"""Around the deployer's `up`: `destroy` (what `down` does), and the stand-in images `up` deploys with."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import docker
import docker.errors

from tools.local_deploy.common import MANAGED_LABEL, NODE_VOLUME_LABEL, PROJECT_LABEL, STACK_LABEL, DeployError, log
from tools.local_deploy.containers import grace_seconds, stop_container
from tools.local_deploy.state import load_state, save_state, state_path
from tools.local_deploy.swarm import destroy_swarm_objects

# What `down --keep-volumes` keeps of the state file: the volume records. Not the
# generated values: a destroy drops the random resources from Pulumi's state, so
# the next `up` generates new ones for the kept data, as the real engine does.
# Protected TLS resources (the internal CA) are kept: `pulumi destroy` refuses to
# delete a protected resource, so its state survives.
_KEPT_WITH_VOLUMES = ("project", "stack", "volumes", "retainedVolumes")


def _remove_volume(client: docker.DockerClient, name: str) -> None:
    client.volumes.get(name).remove()


def destroy(project: str, stack: str, keep_volumes: bool = False, purge: bool = False) -> None:
    """Removes what `up` made for the stack (swarm services, secrets and configs too):
    found by label (the stack's and this deployer's marker), so any process can do it,
    and by the names the state file recorded. A real `pulumi up` of the same stack on this engine is left alone.

    Kept: the volumes with `keep_volumes` (not the generated passwords: as in
    Pulumi, a destroy drops the random resources, so the next `up` generates new
    ones and must put them in force on the kept data), volumes declared
    retainOnDelete, the named volumes swarm tasks created (no resource declares them),
    and images declared keepLocally (the stand-ins among them).

    `purge` (for tests) also removes the retainOnDelete volumes, and with them the
    state file: nothing of the stack stays, so the next `up` starts from nothing
    instead of finding data initialised with a password it no longer knows.

    One resource that cannot be removed does not stop the others: every failure is
    reported together at the end.
    """
    if keep_volumes and purge:
        raise ValueError("keep_volumes and purge contradict each other")
    client = docker.from_env(timeout=300)
    filters = {"label": [f"{PROJECT_LABEL}={project}", f"{STACK_LABEL}={stack}", f"{MANAGED_LABEL}=true"]}
    state = load_state(stack)
    failures: list[str] = []

    def attempt(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as error:
            failures.append(f"{what}: {error}")
            return
        log(f"removed {what}")

    # Services first: their tasks' containers must be gone before the overlay networks can go.
    destroy_swarm_objects(client, project, stack, attempt)

    containers = {c.name: c for c in client.containers.list(all=True, filters=filters)}
    for name in state.get("containers", []):
        with suppress(docker.errors.NotFound):
            containers.setdefault(name, client.containers.get(name))
    for name, container in sorted(containers.items()):
        # Stopped as the provider's delete stops it: destroyGraceSeconds decides
        # whether Postgres shuts down cleanly or is killed.
        with suppress(docker.errors.DockerException):
            stop_container(container, grace_seconds(state, name))
        # v: the anonymous volumes (the secrets) go with the container, as pulumi-docker's removeVolumes.
        attempt(f"container {name}", partial(container.remove, v=True, force=True))

    networks = {n.name for n in client.networks.list(filters=filters)} | set(state.get("networks", []))
    for name in sorted(networks):
        for network in client.networks.list(names=[name]):
            if network.name == name:
                attempt(f"network {name}", network.remove)

    images = {*state.get("builtImages", []), *state.get("removeImages", [])}
    images |= {tag for image in client.images.list(filters=filters) for tag in image.tags}
    for reference in sorted(images):
        # noprune: the untagged parent layers are the classic builder's cache, and
        # pulumi-docker's BuildKit keeps its build cache across a destroy too.
        attempt(f"image {reference}", partial(client.images.remove, reference, noprune=True))

    if not keep_volumes:
        retained = set(state.get("retainedVolumes", []))
        labelled = client.volumes.list(filters=filters)
        node_volumes = {v.name for v in labelled if (v.attrs.get("Labels") or {}).get(NODE_VOLUME_LABEL) == "true"}
        volumes = {v.name for v in labelled} | set(state.get("volumes", []))
        for name in sorted(volumes):
            if name in retained and not purge:
                log(f"kept volume {name} (retainOnDelete)")
                continue
            if name in node_volumes and not purge:
                log(f"kept volume {name} (a swarm task's: no Pulumi resource, so no destroy removes it)")
                continue
            attempt(f"volume {name}", partial(_remove_volume, client, name))

    if keep_volumes:
        if state_path(stack).exists():
            # The volume records stay; the generated values and what was removed are forgotten.
            kept: dict[str, Any] = {key: state[key] for key in _KEPT_WITH_VOLUMES if key in state}
            kept["tls"] = {urn: entry for urn, entry in state.get("tls", {}).items() if entry.get("protected")}
            save_state(stack, kept)
    elif not failures:
        state_path(stack).unlink(missing_ok=True)
    elif state_path(stack).exists():
        # What could not be removed stays recorded for the next `down`; the passwords stay
        # only while a volume initialised with them does.
        volume_left = any(failure.startswith("volume ") for failure in failures)
        save_state(stack, {key: value for key, value in state.items() if volume_left or key != "random"})
    if failures:
        raise DeployError(f"down --stack {stack} left resources behind:\n" + "\n".join(failures))


def standins_enabled() -> bool:
    """Stand-ins replace the official images where no registry is reachable (the default,
    as in .ci/run); hosted runners that can pull postgres and python set LOCAL_DEPLOY_STANDINS=0."""
    return os.environ.get("LOCAL_DEPLOY_STANDINS", "1") == "1"


def standin_config() -> dict[str, object]:
    """Config overrides that point the stack at the local stand-in images (prepare builds them)."""
    from tools.local_deploy.prepare import STANDIN_CONFIG  # lazy: only `up` with stand-ins needs it

    return dict(STANDIN_CONFIG)


def require_standin_images(client: docker.DockerClient) -> None:
    """Before any create: a missing stand-in is one clear error, not a deployment that fails
    halfway with creates running in several threads."""
    from tools.local_deploy.prepare import STANDIN_CONFIG

    for key in ("baseImage", "postgresImage"):
        reference = str(STANDIN_CONFIG[key])
        try:
            client.images.get(reference)
        except docker.errors.ImageNotFound:
            raise DeployError(
                f"the stand-in image {reference} is not on this engine: run "
                "`venv/bin/python -m tools.local_deploy prepare` (or set LOCAL_DEPLOY_STANDINS=0 where a registry "
                "answers)"
            ) from None
