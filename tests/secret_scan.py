"""Looking for a stack's secret values where they must not be: read from the host, as root.

Docker reports each container's processes by their host pids (`docker top`), and each
volume by its directory under the engine's data root, so the host sees every process's
initial environment (/proc/<pid>/environ) and command line, and every file of every
volume, whatever user the container runs as.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from docker.models.containers import Container

from components.workload import SECRETS_DIR

# Large enough for any secret: a value split across two chunks is still found.
_CHUNK = 1 << 20
_OVERLAP = 256


def uploaded_secrets(containers: list[Container]) -> dict[str, str]:
    """The secret values as the running containers received them (every file under /run/secrets),
    each with where it was found first (container:file)."""
    found: dict[str, str] = {}
    for container in containers:
        if container.status != "running":
            continue
        listing = container.exec_run(["sh", "-c", f"ls {SECRETS_DIR}"]).output.decode().split()
        for name in listing:
            content = container.exec_run(["cat", f"{SECRETS_DIR}/{name}"]).output.decode()
            if "-----BEGIN CERTIFICATE-----" in content:
                continue  # a certificate is public; its key (tls.key) is not
            for token in re.split(r"[\s:]+", content):
                if len(token) >= 24:
                    found.setdefault(token, f"{container.name}:{SECRETS_DIR}/{name}")
    return found


def _require_root() -> None:
    assert os.geteuid() == 0, "scanning other users' processes and the engine's volumes needs root on the Docker host"


def scan_processes(containers: list[Container], secrets: set[str]) -> int:
    """Fails if a secret is in the environment or command line of a process of the containers; the count read."""
    _require_root()
    scanned = 0
    for container in containers:
        if container.status != "running":
            continue
        top = container.top()
        pid_column = top["Titles"].index("PID")
        for process in top["Processes"]:
            pid = process[pid_column]
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:  # ended between the listing and the read
                continue
            for secret in secrets:
                assert secret.encode() not in environ, f"{container.name}: a secret in the environment of pid {pid}"
                assert secret.encode() not in cmdline, f"{container.name}: a secret on the command line of pid {pid}"
            scanned += 1
    return scanned


@dataclass
class VolumeScan:
    files: int = 0
    # Files of the anonymous secrets volumes that hold a secret: where the standalone engine
    # keeps them (README: Secrets), each container's own.
    secret_files: list[str] = field(default_factory=list)
    # Each volume's directory on the host, as read: which volumes the scan covered.
    sources: set[str] = field(default_factory=set)


def _holds(path: Path, secrets: set[bytes]) -> bool:
    with path.open("rb") as handle:
        tail = b""
        while chunk := handle.read(_CHUNK):
            window = tail + chunk
            if any(secret in window for secret in secrets):
                return True
            tail = window[-_OVERLAP:]
    return False


def scan_volumes(containers: list[Container], secrets: set[str]) -> VolumeScan:
    """Fails if a file of a volume the containers mount holds a secret, except in their secrets volumes."""
    _require_root()
    wanted = {secret.encode() for secret in secrets}
    result = VolumeScan()
    for container in containers:
        for mount in container.attrs["Mounts"]:
            if mount["Type"] != "volume" or mount["Source"] in result.sources:
                continue
            result.sources.add(mount["Source"])
            for path in Path(mount["Source"]).rglob("*"):
                if not path.is_file() or path.is_symlink():
                    continue
                result.files += 1
                if _holds(path, wanted):
                    where = f"{container.name}:{mount['Destination']}/{path.relative_to(mount['Source'])}"
                    assert mount["Destination"] == SECRETS_DIR, f"a secret in {where} ({path})"
                    result.secret_files.append(where)
    return result
