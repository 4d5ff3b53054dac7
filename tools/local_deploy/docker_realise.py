"""pulumi-docker's Network, Volume, RemoteImage and Image, made on the local Docker engine."""

from __future__ import annotations

from collections import deque
from typing import Any

import docker
import docker.errors
import docker.utils
import pulumi

from tools.local_deploy.common import MANAGED_LABEL, PROJECT_LABEL, STACK_LABEL, DeployError, UnsupportedInputError, log
from tools.local_deploy.inputs import IMAGE
from tools.local_deploy.session import Session
from tools.stack_config import PROJECT_DIR

_BUILD_LOG_TAIL = 30


def realise_network(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    name = inputs.get("name") or args.name
    driver = inputs.get("driver") or "bridge"
    internal = bool(inputs.get("internal"))
    attachable = bool(inputs.get("attachable"))
    labels = session.labels(inputs)
    existing = [network for network in session.client.networks.list(names=[name]) if network.name == name]
    if existing:
        # Left by an earlier `up` of this stack (its containers are replaced, the
        # network is not): reuse it when it is the same network, as the engine would.
        attrs = existing[0].attrs
        same = (attrs.get("Driver"), bool(attrs.get("Internal")), bool(attrs.get("Attachable"))) == (
            driver,
            internal,
            attachable,
        )
        if not same or (attrs.get("Labels") or {}) != labels:
            raise DeployError(
                f"'{args.name}': a different network named {name} already exists; "
                f"run `python -m tools.local_deploy down --stack {session.stack}` or remove it"
            )
        network = existing[0]
        session.event("reused network", name)
    else:
        # attachable: plain containers (`docker run --network`) may join an overlay network.
        network = session.client.networks.create(
            name, driver=driver, internal=internal, attachable=attachable, labels=labels, check_duplicate=True
        )
        session.event("created network", name)
    session.record("networks", name)
    scope = "swarm" if driver == "overlay" else "local"
    return str(network.id), {
        "name": name,
        "driver": driver,
        "internal": internal,
        "attachable": attachable,
        "scope": scope,
    }


def realise_volume(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    name = inputs.get("name") or args.name
    try:
        # `down --keep-volumes` left it: the data of the previous `up` is found again.
        volume = session.client.volumes.get(name)
        session.event("reused volume", name)
    except docker.errors.NotFound:
        volume = session.client.volumes.create(name, labels=session.labels(inputs))
        session.event("created volume", name)
        session.record("volumes", name)
    if session.options(args).get("retain_on_delete"):
        session.record("retainedVolumes", name)
    return name, {"name": name, "driver": volume.attrs.get("Driver"), "mountpoint": volume.attrs.get("Mountpoint")}


def realise_remote_image(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    reference = inputs["name"]
    try:
        image = session.client.images.get(reference)
        session.event("found local image", reference)
    except docker.errors.ImageNotFound:
        log(f"{reference} is not local; pulling it")
        try:
            image = session.client.images.pull(reference)
        except docker.errors.DockerException as error:
            raise DeployError(
                f"'{args.name}': image {reference} is not on this engine and cannot be pulled: {error}"
            ) from error
        session.event("pulled image", reference)
    if not inputs.get("keepLocally"):
        session.record("removeImages", reference)
    digests = image.attrs.get("RepoDigests") or []
    outputs = {"name": reference, "imageId": image.id, "repoDigest": digests[0] if digests else ""}
    return f"{image.id}{reference}", outputs


def push_target(name: str, inputs: dict[str, Any]) -> tuple[str, str, dict[str, str] | None] | None:
    """Where an Image with skipPush false goes: (repository, tag, the login or None); None with skipPush true.

    pulumi-docker pushes `imageName` to the registry its name starts with, logging in to
    `registry.server` with `registry.username` and `registry.password`. Refused: a push without
    `registry` (pulumi-docker would fall back on the Docker client's stored logins, which this does not read),
    a `registry.server` other than the image name's, and half a login.
    """
    if inputs.get("skipPush") is True:
        return None
    image_name = str(inputs["imageName"])
    registry = inputs.get("registry") or {}
    server = str(registry.get("server") or "")
    if not server:
        raise UnsupportedInputError(
            f"resource '{name}' ({IMAGE}) pushes {image_name} without `registry`: the local deployer pushes only "
            "with registry.server set (or needs skipPush = true)"
        )
    repository, tag = docker.utils.parse_repository_tag(image_name)
    if tag and tag.startswith("sha256:"):
        raise UnsupportedInputError(f"resource '{name}' ({IMAGE}): imageName {image_name} is a digest, not a tag")
    if repository.split("/", 1)[0] != server or "/" not in repository:
        raise UnsupportedInputError(
            f"resource '{name}' ({IMAGE}): imageName {image_name} is not in registry.server {server}: "
            "the login would be for another registry"
        )
    username, password = registry.get("username") or "", registry.get("password") or ""
    if bool(username) != bool(password):
        raise UnsupportedInputError(
            f"resource '{name}' ({IMAGE}): registry.username and registry.password are set together or not at all"
        )
    login = {"username": str(username), "password": str(password), "serveraddress": server} if username else None
    return repository, tag or "latest", login


def _push(session: Session, name: str, repository: str, tag: str, login: dict[str, str] | None) -> str:
    """Pushes repository:tag; returns the registry's digest (sha256:...) from the push's answer."""
    reference = f"{repository}:{tag}"
    session.event("pushing image", reference)
    digest = ""
    tail: deque[str] = deque(maxlen=_BUILD_LOG_TAIL)
    try:
        stream = session.client.images.push(repository, tag, auth_config=login, stream=True, decode=True)
        for chunk in stream:
            if session.aborted.is_set():
                session.check_aborted(name)
            text = " ".join(str(chunk.get(key)) for key in ("id", "status", "progress") if chunk.get(key))
            if text:
                tail.append(text)
            if chunk.get("error"):
                tail.append(str(chunk["error"]))
                raise DeployError(f"'{name}': pushing {reference} failed:\n" + "\n".join(tail))
            digest = str((chunk.get("aux") or {}).get("Digest") or digest)
    except docker.errors.DockerException as error:
        raise DeployError(f"'{name}': pushing {reference} failed: {error}") from error
    if not digest.startswith("sha256:"):
        raise DeployError(f"'{name}': the registry gave no digest for {reference}:\n" + "\n".join(tail))
    session.event(f"pushed image ({digest[:19]})", reference)
    return digest


def realise_image(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    # Refused before the build: a bad push would otherwise fail only after minutes of building.
    push = push_target(args.name, inputs)
    image_name = inputs["imageName"]
    build = inputs.get("build") or {}
    # pulumi-docker resolves both paths against the program's directory, and the
    # Dockerfile defaults to the one in the context.
    context = (PROJECT_DIR / (build.get("context") or ".")).resolve()
    dockerfile = context / "Dockerfile"
    if build.get("dockerfile"):
        dockerfile = (PROJECT_DIR / build["dockerfile"]).resolve()
    session.record("builtImages", image_name)
    session.event("building image", image_name)
    tail: deque[str] = deque(maxlen=_BUILD_LOG_TAIL)
    stream = session.client.api.build(
        path=str(context),
        dockerfile=str(dockerfile),
        buildargs=dict(build.get("args") or {}),
        target=build.get("target") or None,
        tag=image_name,
        labels={PROJECT_LABEL: session.project, STACK_LABEL: session.stack, MANAGED_LABEL: "true"},
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    )
    for chunk in stream:
        if session.aborted.is_set():
            stream.close()
            session.check_aborted(args.name)
        text = str(chunk.get("stream") or chunk.get("status") or "").rstrip()
        for line in text.splitlines():
            tail.append(line)
            if line.startswith("Step "):
                log(f"  {image_name}: {line[:110]}")
        if chunk.get("error"):
            tail.append(str(chunk["error"]))
            raise DeployError(
                f"'{args.name}': building {image_name} from {context} failed; last lines of the build:\n"
                + "\n".join(tail)
            )
    image = session.client.images.get(image_name)
    size_mb = (image.attrs.get("Size") or 0) / 1e6
    session.event(f"built image ({size_mb:.0f} MB, {image.id[:19]})", image_name)
    outputs = {
        "imageName": image_name,
        # For a local build pulumi-docker's repoDigest is the image ID.
        "repoDigest": image.id,
        "baseImageName": image_name,
        "context": build.get("context"),
        "dockerfile": build.get("dockerfile"),
    }
    if push is None:
        return str(image.id), outputs
    repository, tag, login = push
    digest = _push(session, args.name, repository, tag, login)
    # After a push, `<repository>@<digest>`: what any node pulls, whatever the tag points at later.
    outputs |= {"repoDigest": f"{repository}@{digest}", "registryServer": inputs["registry"]["server"]}
    return str(image.id), outputs
