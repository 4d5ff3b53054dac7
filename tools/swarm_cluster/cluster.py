"""`up` and `down` of the local 3-node swarm: Docker-in-Docker nodes and a TLS registry on one bridge.

up: stand-in images (prepare.ensure_cluster_images) -> the registry's TLS and login -> bridge
network -> registry (TLS, basic auth) -> 3 nodes -> `swarm init` on node 1 (the manager) and
`swarm join` of nodes 2 and 3 (workers) through each node's engine socket -> the Postgres node
label on one worker -> the CA trusted by the host engine -> the stand-in images the stacks run
pushed to the registry (logged in).
A failure anywhere runs `down`, so nothing is left half made.

down: removes every container, volume and network labelled `CLUSTER_LABEL` (the nodes'
volumes hold their whole engines: swarm state, images, the services' volumes), the host
engine's trust in the registry's CA (and the directories `up` made for it), and the state directory
(the registry's password with it). Safe to run any time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests

from tools.local_deploy import prepare
from tools.stack_config import stack_config
from tools.swarm_cluster import spec
from tools.swarm_cluster.certs import registry_tls
from tools.swarm_cluster.login import htpasswd_line, new_password

DEFAULT_STATE_DIR = prepare.BUILD_DIR / "swarm-cluster"
# dockerd reads <dir>/<registry host:port>/ca.crt for every pull and push: trusting a registry needs no restart.
HOST_CERTS_DIR = Path("/etc/docker/certs.d")
# Left beside the CA in the host's certs.d so `down` removes only directories this tool made.
_OWNER_MARKER = "mlflow-cluster.owner"
# The stand-ins a stack runs (python is also the base of the MLflow image, built by the program).
DEFAULT_PUSH = (prepare.STANDIN_BASE_IMAGE, prepare.STANDIN_POSTGRES_IMAGE, prepare.STANDIN_CADDY_IMAGE)
_ENGINE_TIMEOUT = 60.0
_JOIN_TIMEOUT = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """What a deploy onto the cluster needs; printed by `up` and kept in <state dir>/cluster.json."""

    docker_host: str
    """DOCKER_HOST of the manager's engine."""
    registry: str
    """imageRegistry: host:port every node and the host engine pull from and push to."""
    ca_certificate_file: str
    """imageRegistryCaCertificate's content is this file's."""
    nodes: list[str]
    manager: str
    postgres_node: str
    postgres_node_label: str
    images: dict[str, str]
    """Each pushed stand-in -> its reference in the registry."""
    registry_username: str
    """imageRegistryUsername: the registry answers 401 to anything without this login."""
    registry_password_file: str
    """imageRegistryPassword is this file's content (0600 in the 0700 state directory; never printed)."""

    def registry_login(self) -> dict[str, str]:
        """The Docker SDK's `auth_config` for the registry (a push, a pull, `login`)."""
        password = Path(self.registry_password_file).read_text()
        return {"username": self.registry_username, "password": password, "serveraddress": self.registry}


def connect(base_url: str | None = None) -> docker.DockerClient:
    try:
        client = docker.from_env() if base_url is None else docker.DockerClient(base_url=base_url)
        client.ping()
    except docker.errors.DockerException as error:
        raise spec.ClusterError(f"no Docker engine answers at {base_url or 'DOCKER_HOST'}: {error}") from error
    return client


def node_client(state_dir: Path, index: int) -> docker.DockerClient:
    return docker.DockerClient(base_url=f"unix://{spec.socket_path(state_dir, index)}", timeout=120)


def load(state_dir: Path = DEFAULT_STATE_DIR) -> Cluster:
    """The cluster `up` made, from its state file."""
    try:
        return Cluster(**json.loads((state_dir / "cluster.json").read_text()))
    except FileNotFoundError as error:
        raise spec.ClusterError(f"no cluster is up ({state_dir / 'cluster.json'} is missing)") from error


def _wait(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (docker.errors.DockerException, OSError, urllib.error.URLError) as error:
            last_error, result = error, None
        if result is not None:
            return result
        time.sleep(interval)
    reason = f": {last_error}" if last_error else ""
    raise spec.ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{reason}")


def stop_node(
    host: docker.DockerClient,
    manager: docker.DockerClient,
    node: str,
    node_id: str,
    timeout: float,
    results: dict[str, Any],
) -> float:
    """Stops the node's container and waits until the manager marks the node down; records both
    durations in `results` and returns when the stop began (time.monotonic), for what is timed after."""
    stopped_at = time.monotonic()
    host.containers.get(node).stop(timeout=10)
    results["node_stop_seconds"] = round(time.monotonic() - stopped_at, 1)
    while manager.nodes.get(node_id).attrs["Status"]["State"] != "down":
        if time.monotonic() - stopped_at > timeout:
            raise spec.ClusterError(f"the manager still sees {node} as up after {timeout:.0f}s")
        time.sleep(0.25)
    results["node_marked_down_seconds"] = round(time.monotonic() - stopped_at, 1)
    return stopped_at


def _leftovers(client: docker.DockerClient) -> list[str]:
    filters = {"label": spec.CLUSTER_LABEL}
    return [
        *(f"container {c.name}" for c in client.containers.list(all=True, filters=filters)),
        *(f"volume {v.name}" for v in client.volumes.list(filters=filters)),
        *(f"network {n.name}" for n in client.networks.list(filters=filters)),
    ]


def _write(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)


def _socket_gid() -> int:
    """The host's docker group (that of its engine socket): whoever may use the host engine may use the nodes'."""
    try:
        return os.stat("/var/run/docker.sock").st_gid
    except OSError:
        return 0


def _node_ip(client: docker.DockerClient, index: int) -> str:
    container = client.containers.get(spec.node_name(index))
    return str(container.attrs["NetworkSettings"]["Networks"][spec.NETWORK_NAME]["IPAddress"])


def _engine_up(state_dir: Path, client: docker.DockerClient, index: int) -> docker.DockerClient:
    def probe() -> docker.DockerClient | None:
        container = client.containers.get(spec.node_name(index))
        if container.status != "running":
            logs = container.logs(tail=20).decode(errors="replace")
            raise spec.ClusterError(f"node {container.name} is {container.status}:\n{logs}")
        node = node_client(state_dir, index)
        node.ping()
        return node

    return _wait(f"the engine of {spec.node_name(index)}", probe, _ENGINE_TIMEOUT)


def registry_status(
    registry: str, ca_file: Path, login: tuple[str, str] | None, path: str = "/v2/", accept: str = ""
) -> int:
    """The HTTP status of a GET of `path` on the registry, with basic auth `login` or anonymously."""
    headers = {"Accept": accept} if accept else {}
    response = requests.get(f"https://{registry}{path}", auth=login, headers=headers, verify=str(ca_file), timeout=5)
    return int(response.status_code)


def _push(client: docker.DockerClient, image: str, registry: str, login: dict[str, str]) -> str:
    reference = spec.registry_reference(registry, image)
    repository, _, tag = reference.rpartition(":")
    client.images.get(image).tag(repository, tag)
    try:
        for message in client.images.push(repository, tag, auth_config=login, stream=True, decode=True):
            if message.get("error"):
                raise spec.ClusterError(f"pushing {reference} failed: {message['error']}")
    finally:
        # The host keeps its own tag only: the registry's copy is the nodes' business.
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(reference, noprune=True)
    return reference


def _label_node(manager: docker.DockerClient, hostname: str, key: str, value: str) -> None:
    [node] = [n for n in manager.nodes.list() if n.attrs["Description"]["Hostname"] == hostname]
    node_spec = dict(node.attrs["Spec"])
    node_spec["Labels"] = {**node_spec.get("Labels", {}), key: value}
    node.update(node_spec)


def trust_on_host(registry: str, ca_certificate: str, state_dir: Path) -> None:
    """The CA in the host's <certs.d>/<registry>/ca.crt, and beside it the owner marker naming the
    directories this made (certs.d itself where it was missing): `down` removes those, and only those."""
    host_trust = HOST_CERTS_DIR / registry
    made: list[str] = []
    for directory in (host_trust, *host_trust.parents):
        if directory.exists():
            break
        made.append(str(directory))
    try:
        _write(host_trust / "ca.crt", ca_certificate, 0o644)
        marker = {"state_dir": str(state_dir), "made": made}
        _write(host_trust / _OWNER_MARKER, json.dumps(marker) + "\n", 0o644)
    except PermissionError as error:
        raise spec.ClusterError(
            f"cannot write {host_trust / 'ca.crt'} ({error.strerror}): the host engine pushes to the registry "
            "only if it trusts the registry's CA there; run as root (sudo)"
        ) from error


def _remove_host_trust(marker: Path) -> None:
    """The registry's directory in the host's certs.d, then each directory above it that `up` made
    (deepest first) while it is empty: another registry's trust put there since stays, with its parents."""
    trust = marker.parent
    try:
        made = [Path(path) for path in json.loads(marker.read_text()).get("made", [])]
    except (ValueError, AttributeError):
        made = []  # an older `up`'s marker (the state directory only): its directory alone
    shutil.rmtree(trust)
    for directory in sorted((d for d in made if d in trust.parents), key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()


def up(
    *,
    client: docker.DockerClient | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    subnet: str = spec.DEFAULT_SUBNET,
    postgres_node_label: str | None = None,
    push: Sequence[str] = DEFAULT_PUSH,
    log: Callable[[str], None] = print,
) -> Cluster:
    """Brings the cluster up (see the module's docstring); `down` on any failure."""
    # Bad arguments are refused before the engine is asked anything.
    label = postgres_node_label or str(stack_config("dev")["postgresNodeLabel"])
    label_key, label_value = spec.parse_node_label(label)
    addresses = spec.addresses(subnet)
    spec.socket_path(state_dir, spec.NODE_COUNT)
    client = client or connect()
    leftovers = _leftovers(client)
    if leftovers:
        raise spec.ClusterError(
            f"a cluster is already there ({', '.join(leftovers)}); run `python -m tools.swarm_cluster down` first"
        )
    with contextlib.ExitStack() as on_failure:
        on_failure.callback(down, client=client, state_dir=state_dir, log=log)
        cluster = _up(client, state_dir, addresses, label, (label_key, label_value), push, log)
        on_failure.pop_all()
    return cluster


def _up(
    client: docker.DockerClient,
    state_dir: Path,
    addresses: spec.Addresses,
    label: str,
    label_pair: tuple[str, str],
    push: Sequence[str],
    log: Callable[[str], None],
) -> Cluster:
    started = time.monotonic()

    def step(message: str) -> None:
        log(f"swarm-cluster: [{time.monotonic() - started:5.1f}s] {message}")

    prepare.ensure_cluster_images(client)
    registry = addresses.registry
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, mode=0o700)
    state_dir.chmod(0o700)
    tls = registry_tls(addresses.registry_ip)
    _write(state_dir / "ca.crt", tls.ca_certificate, 0o644)
    # Read by the registry's unprivileged user through a read-only mount; the 0700 state
    # directory above keeps the key from the host's other users.
    _write(state_dir / "registry-tls" / "registry.crt", tls.certificate, 0o644)
    _write(state_dir / "registry-tls" / "registry.key", tls.key, 0o644)
    (state_dir / "registry-tls").chmod(0o755)
    certs_dir = state_dir / "certs.d"
    _write(certs_dir / registry / "ca.crt", tls.ca_certificate, 0o644)
    # The login: the password for whoever deploys (root's, like the state directory), the registry
    # only its bcrypt hash, read by the registry's unprivileged user through a read-only mount.
    password = new_password()
    password_file = state_dir / "registry-password"
    _write(password_file, password, 0o600)
    _write(state_dir / "registry-auth" / "htpasswd", htpasswd_line(spec.REGISTRY_USERNAME, password) + "\n", 0o644)
    (state_dir / "registry-auth").chmod(0o755)

    step(f"network {spec.NETWORK_NAME} ({addresses.subnet})")
    client.networks.create(
        spec.NETWORK_NAME,
        driver="bridge",
        labels=spec.labels("network"),
        ipam=docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=addresses.subnet, gateway=addresses.gateway)]
        ),
    )
    # Created first so they carry the label `down` looks for (run would make them unlabelled).
    client.volumes.create(spec.REGISTRY_VOLUME, labels=spec.labels("registry"))
    for index in range(1, spec.NODE_COUNT + 1):
        client.volumes.create(spec.node_volume(index), labels=spec.labels("node"))

    step(f"registry {registry}")
    client.containers.run(
        **spec.registry_container(
            image=prepare.STANDIN_REGISTRY_IMAGE,
            tls_dir=state_dir / "registry-tls",
            auth_dir=state_dir / "registry-auth",
        ),
        networking_config={spec.NETWORK_NAME: client.api.create_endpoint_config(ipv4_address=addresses.registry_ip)},
    )

    bounding = spec.bounding_set(Path("/proc/self/status").read_text())
    for index in range(1, spec.NODE_COUNT + 1):
        (state_dir / spec.node_name(index)).mkdir(mode=0o750)
        client.containers.run(
            **spec.node_container(
                index,
                image=prepare.STANDIN_DIND_IMAGE,
                state_dir=state_dir,
                certs_dir=certs_dir,
                socket_gid=_socket_gid(),
                bounding=bounding,
            )
        )
    nodes = {index: _engine_up(state_dir, client, index) for index in range(1, spec.NODE_COUNT + 1)}
    step(f"{spec.NODE_COUNT} engines answer")

    manager = nodes[1]
    manager.swarm.init(advertise_addr="eth0", listen_addr="0.0.0.0:2377")
    manager.swarm.reload()
    worker_token = manager.swarm.attrs["JoinTokens"]["Worker"]
    manager_address = f"{_node_ip(client, 1)}:2377"
    for index in range(2, spec.NODE_COUNT + 1):
        nodes[index].swarm.join(
            remote_addrs=[manager_address], join_token=worker_token, advertise_addr="eth0", listen_addr="0.0.0.0:2377"
        )

    def all_ready() -> bool | None:
        states = [n.attrs["Status"]["State"] for n in manager.nodes.list()]
        return True if states.count("ready") == spec.NODE_COUNT else None

    _wait(f"{spec.NODE_COUNT} ready swarm nodes", all_ready, _JOIN_TIMEOUT)
    step(f"swarm: {spec.node_name(1)} manager, the others workers, all ready")
    # A worker, not the manager: losing the Postgres node must not also take the control plane.
    postgres_node = spec.node_name(2)
    _label_node(manager, postgres_node, *label_pair)
    step(f"node label {label} on {postgres_node}")

    trust_on_host(registry, tls.ca_certificate, state_dir)
    credentials = (spec.REGISTRY_USERNAME, password)

    def registry_answers() -> bool | None:
        # 200 with the login: the registry is up, and its htpasswd takes the password.
        return True if registry_status(registry, state_dir / "ca.crt", credentials) == 200 else None

    _wait(f"the registry at https://{registry}/v2/ to take the login", registry_answers, 30)
    login = {"username": spec.REGISTRY_USERNAME, "password": password, "serveraddress": registry}
    images = {}
    for image in push:
        images[image] = _push(client, image, registry, login)
        step(f"pushed {images[image]}")

    cluster = Cluster(
        docker_host=f"unix://{spec.socket_path(state_dir, 1)}",
        registry=registry,
        ca_certificate_file=str(state_dir / "ca.crt"),
        nodes=[spec.node_name(index) for index in range(1, spec.NODE_COUNT + 1)],
        manager=spec.node_name(1),
        postgres_node=postgres_node,
        postgres_node_label=label,
        images=images,
        registry_username=spec.REGISTRY_USERNAME,
        registry_password_file=str(password_file),
    )
    (state_dir / "cluster.json").write_text(json.dumps(asdict(cluster), indent=2) + "\n")
    for node in nodes.values():
        node.close()
    return cluster


def down(
    *,
    client: docker.DockerClient | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    log: Callable[[str], None] = print,
) -> None:
    """Removes everything `up` made, whatever state it is in; raises after trying everything if anything stays."""
    client = client or connect()
    failures: list[str] = []
    filters = {"label": spec.CLUSTER_LABEL}

    def attempt(what: str, action: Callable[[], Any]) -> None:
        try:
            action()
            log(f"swarm-cluster: removed {what}")
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, OSError) as error:
            failures.append(f"{what}: {error}")

    # The nodes' engines, their containers and mounts die with the node containers' namespaces.
    for container in client.containers.list(all=True, filters=filters):
        attempt(f"container {container.name}", functools.partial(container.remove, force=True, v=True))
    for volume in client.volumes.list(filters=filters):
        attempt(f"volume {volume.name}", functools.partial(volume.remove, force=True))
    for network in client.networks.list(filters=filters):
        attempt(f"network {network.name}", network.remove)
    for marker in HOST_CERTS_DIR.glob(f"*/{_OWNER_MARKER}"):
        attempt(f"host trust {marker.parent}", functools.partial(_remove_host_trust, marker))
    if state_dir.exists():
        attempt(f"state {state_dir}", functools.partial(shutil.rmtree, state_dir))
    left = _leftovers(client)
    if failures or left:
        raise spec.ClusterError("down left things behind: " + "; ".join([*failures, *left]))
