"""What the local swarm cluster is made of, as plain data: names, labels, addresses, node and registry specs.

Nothing here talks to an engine, so every choice (capabilities, dockerd flags, mounts,
addresses) is unit-tested; tools/swarm_cluster/cluster.py realises these specs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every container, volume and network of the cluster carries this label: `down` finds them by it,
# and never touches anything else on the engine.
CLUSTER_LABEL = "org.mlflow-platform.swarm-cluster"
PREFIX = "mlflow-cluster"
NETWORK_NAME = PREFIX
REGISTRY_NAME = f"{PREFIX}-registry"
REGISTRY_VOLUME = f"{PREFIX}-registry-data"
REGISTRY_PORT = 5000
# The registry's one login (htpasswd basic auth): every push and pull, the host's and the nodes', uses it.
REGISTRY_USERNAME = "mlflow-cluster"
REGISTRY_AUTH_DIR = "/etc/docker/registry/auth"
NODE_COUNT = 3
# The cluster's bridge. A fixed subnet so the registry has a fixed address that the nodes and the
# host both reach (the host sits on the bridge): one image reference works for a push from the
# host and a pull on any node. Outside 172.17-172.18/16 (the nodes' own docker0 and
# docker_gwbridge) and 10.0.0.0/8 (swarm's overlay address pool), which it must not overlap.
DEFAULT_SUBNET = "172.29.231.0/24"
# Where each node's engine socket appears, in a host directory bind-mounted into the node.
NODE_SOCKET_DIR = "/run/cluster-engine"
NODE_SOCKET_NAME = "docker.sock"
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107

# The capability names Docker 20.10 knows (its gocapability list stops at CAP_AUDIT_READ, 37):
# it refuses `--cap-add BPF` ("unknown capability") although the kernel has it.
_ENGINE_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
)  # fmt: skip


class ClusterError(RuntimeError):
    """The cluster could not be brought up or down; the message says which step and why."""


def node_name(index: int) -> str:
    """mlflow-cluster-node-1 .. -3: the container, its hostname, and so the swarm node's name."""
    return f"{PREFIX}-node-{index}"


def node_volume(index: int) -> str:
    return f"{node_name(index)}-docker"


def labels(role: str) -> dict[str, str]:
    return {CLUSTER_LABEL: role}


def parse_node_label(pair: str) -> tuple[str, str]:
    """`key=value` (postgresNodeLabel's form) -> (key, value)."""
    key, separator, value = pair.partition("=")
    if not separator or not key or not value:
        raise ClusterError(f"a node label is key=value, got {pair!r}")
    return key, value


@dataclass(frozen=True)
class Addresses:
    """The fixed addresses on the cluster's bridge."""

    subnet: str
    gateway: str
    registry_ip: str

    @property
    def registry(self) -> str:
        """host:port of the registry, as images are named (`<registry>/<repository>:<tag>`)."""
        return f"{self.registry_ip}:{REGISTRY_PORT}"


def addresses(subnet: str = DEFAULT_SUBNET) -> Addresses:
    """The gateway is the subnet's first host (the host's side of the bridge), the registry the second."""
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as error:
        raise ClusterError(f"subnet {subnet!r} is not an IPv4 network: {error}") from error
    if network.num_addresses < 8:
        raise ClusterError(f"subnet {subnet} is too small for a gateway, a registry and {NODE_COUNT} nodes")
    return Addresses(subnet=str(network), gateway=str(network[1]), registry_ip=str(network[2]))


def capabilities(bounding_set: int) -> list[str]:
    """The capabilities a node asks for: every one the engine knows that the host's bounding set holds.

    Why not `--privileged`: it asks runc for every capability, and this engine runs without
    CAP_SYS_RESOURCE in its bounding set, so runc fails with "unable to apply caps".
    """
    return [name for bit, name in enumerate(_ENGINE_CAPABILITIES) if bounding_set >> bit & 1]


def bounding_set(status: str) -> int:
    """CapBnd of a /proc/<pid>/status text."""
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise ClusterError("no CapBnd line in /proc/self/status")


def socket_path(state_dir: Path, index: int) -> Path:
    path = state_dir / node_name(index) / NODE_SOCKET_NAME
    if len(str(path)) > _MAX_SOCKET_PATH:
        raise ClusterError(
            f"the engine socket path {path} is longer than a unix socket allows ({_MAX_SOCKET_PATH}); "
            "pass a shorter --state-dir"
        )
    return path


def dockerd_arguments(*, socket_gid: int) -> list[str]:
    """The node's dockerd flags (the image's entrypoint runs `dockerd "$@"`).

    - The API only on a unix socket in a bind-mounted directory, group-owned by the host's
      docker group: reachable from the host as the host's own engine is, by the same users,
      and not over TCP, where any local process could drive a root-equivalent engine.
    - overlay2 on /var/lib/docker, which is a named volume (ext4 under the host's
      /var/lib/docker/volumes): overlay on the node's own overlay root would fail.
    - No --insecure-registry: the registry speaks TLS with a CA the node trusts through
      /etc/docker/certs.d (see `node_mounts`).
    """
    return [
        "--host", f"unix://{NODE_SOCKET_DIR}/{NODE_SOCKET_NAME}",
        "--group", str(socket_gid),
        "--storage-driver", "overlay2",
        "--log-driver", "json-file",
        "--log-opt", "max-size=10m",
        "--log-opt", "max-file=2",
    ]  # fmt: skip


def node_container(
    index: int, *, image: str, state_dir: Path, certs_dir: Path, socket_gid: int, bounding: int
) -> dict[str, Any]:
    """Keyword arguments of `containers.run` for node `index` (Docker SDK names)."""
    name = node_name(index)
    return {
        "image": image,
        "command": dockerd_arguments(socket_gid=socket_gid),
        "name": name,
        "hostname": name,
        "labels": labels("node"),
        "detach": True,
        "cap_add": capabilities(bounding),
        # What --privileged would also have lifted: the seccomp and AppArmor profiles (the
        # read-only /sys, /proc/sys and cgroups are remounted by the image's entrypoint).
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined", "label=disable"],
        "volumes": {
            node_volume(index): {"bind": "/var/lib/docker", "mode": "rw"},
            str(state_dir / name): {"bind": NODE_SOCKET_DIR, "mode": "rw"},
            str(certs_dir): {"bind": "/etc/docker/certs.d", "mode": "ro"},
        },
        # The nodes join (2377/tcp), gossip (7946/tcp+udp) and carry overlay traffic (VXLAN,
        # 4789/udp) over this bridge: containers on one bridge reach each other on every port.
        "network": NETWORK_NAME,
        # dockerd's and containerd's pid files and state under /run would survive a stop, and a
        # restarted node's dockerd refuses to start over a pid file naming a live pid (its own).
        "tmpfs": {"/run": "rw,nosuid,nodev,exec,mode=755"},
    }


def registry_container(*, image: str, tls_dir: Path, auth_dir: Path) -> dict[str, Any]:
    """Keyword arguments of `containers.run` for the registry, except its fixed address
    (`networking_config`, which needs the engine's API object).

    Basic auth from `<auth_dir>/htpasswd` (bcrypt lines; the registry refuses any other hash):
    without a login every request gets 401, so a node pulls only with the credentials a
    service carries (`--with-registry-auth`), as with a registry a team runs.
    """
    return {
        "image": image,
        "name": REGISTRY_NAME,
        "hostname": REGISTRY_NAME,
        "labels": labels("registry"),
        "detach": True,
        "environment": {
            "REGISTRY_HTTP_TLS_CERTIFICATE": "/etc/docker/registry/tls/registry.crt",
            "REGISTRY_HTTP_TLS_KEY": "/etc/docker/registry/tls/registry.key",
            "REGISTRY_AUTH": "htpasswd",
            "REGISTRY_AUTH_HTPASSWD_REALM": REGISTRY_NAME,
            "REGISTRY_AUTH_HTPASSWD_PATH": f"{REGISTRY_AUTH_DIR}/htpasswd",
        },
        "volumes": {
            REGISTRY_VOLUME: {"bind": "/var/lib/registry", "mode": "rw"},
            str(tls_dir): {"bind": "/etc/docker/registry/tls", "mode": "ro"},
            str(auth_dir): {"bind": REGISTRY_AUTH_DIR, "mode": "ro"},
        },
        "network": NETWORK_NAME,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
    }


def registry_reference(registry: str, image: str) -> str:
    """`mlflow-platform-standin/python:3.11-bookworm` -> `<registry>/mlflow-platform-standin/python:3.11-bookworm`."""
    return f"{registry}/{image}"
