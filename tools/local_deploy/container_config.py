"""pulumi-docker's Container inputs as the Docker SDK's `containers.create` arguments, and its uploads."""

from __future__ import annotations

import base64
import io
import re
import tarfile
import time
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import docker.types
import pulumi

from tools.local_deploy.common import UnsupportedInputError
from tools.local_deploy.inputs import whole
from tools.local_deploy.session import Session

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def duration_ns(value: str) -> int:
    """A Go duration ("5s", "1m30s"), as healthcheck inputs take, in nanoseconds (Docker's unit)."""
    if value in ("0", ""):
        return 0
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return int(sum(float(number) * _DURATION_UNITS_NS[unit] for number, unit in parts))


def _mib(value: object) -> int:
    """pulumi-docker takes memory, swap and shm sizes in MB (MiB); Docker wants bytes."""
    return int(float(value)) * 1024 * 1024  # type: ignore[arg-type]


def upload_archive(upload: Mapping[str, Any]) -> tuple[str, bytes]:
    """(directory, tar) for one `uploads` entry: the file's content, owner, group and mode.

    pulumi-docker writes the file with `docker cp` semantics into its parent
    directory, before the container starts; mode 0644 (0744 if `executable`)
    unless `permissions` says otherwise.
    """
    path = PurePosixPath(upload["file"])
    if not path.is_absolute() or path.name in ("", ".", ".."):
        raise ValueError(f"upload file {upload['file']!r} is not an absolute file path")
    if upload.get("contentBase64"):
        data = base64.b64decode(upload["contentBase64"])
    elif upload.get("content") is not None:
        data = str(upload["content"]).encode()
    else:
        raise ValueError(f"upload {upload['file']!r} has neither content nor contentBase64")
    mode = 0o744 if upload.get("executable") else 0o644
    if upload.get("permissions"):
        mode = int(str(upload["permissions"]), 8)
    info = tarfile.TarInfo(path.name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    for attribute, key in (("uid", "owner"), ("gid", "group")):
        owner = str(upload.get(key) or "0")
        if not owner.isdigit():
            # The provider resolves names on the host running Pulumi, which says
            # nothing about the image's users: only numeric ids are meaningful.
            raise ValueError(f"upload {upload['file']!r}: {key} {owner!r} is not a numeric id")
        setattr(info, attribute, int(owner))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(data))
    return str(path.parent), buffer.getvalue()


def _ulimit(item: Mapping[str, Any]) -> docker.types.Ulimit:
    """One `ulimits` entry. pulumi-docker requires name, soft and hard; a missing one is refused here
    rather than read as Docker's -1, which means no limit at all."""
    missing = [key for key in ("name", "soft", "hard") if item.get(key) is None]
    if missing:
        raise UnsupportedInputError(f"ulimit {dict(item)!r} lacks {', '.join(missing)}")
    return docker.types.Ulimit(name=str(item["name"]), soft=whole(item, "soft", 0), hard=whole(item, "hard", 0))


def network_attachments(resource: str, inputs: Mapping[str, Any]) -> list[tuple[str, list[str] | None]]:
    """(network, aliases) of each `networksAdvanced` entry, in order: the container joins the first
    when it is created and the others before it starts, each with its own aliases there."""
    networks = inputs.get("networksAdvanced") or []
    if networks and inputs.get("networkMode"):
        raise UnsupportedInputError(f"'{resource}': networkMode and networksAdvanced together")
    names = [str(network["name"]) for network in networks]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        # Docker refuses a second endpoint on one network; the provider would fail halfway through.
        raise UnsupportedInputError(f"'{resource}': networksAdvanced names the network {twice[0]} twice")
    return [(name, list(network.get("aliases") or []) or None) for name, network in zip(names, networks, strict=True)]


def container_config(session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> dict[str, Any]:
    """Docker SDK `containers.create` arguments for everything but networks and uploads."""
    config: dict[str, Any] = {
        "image": inputs["image"],
        "name": inputs.get("name") or args.name,
        "labels": session.labels(inputs),
        "detach": True,
    }
    if inputs.get("command"):
        config["command"] = list(inputs["command"])
    if inputs.get("entrypoints"):
        config["entrypoint"] = list(inputs["entrypoints"])
    if inputs.get("envs"):
        config["environment"] = list(inputs["envs"])
    if inputs.get("user"):
        config["user"] = inputs["user"]
    ports: dict[str, list[tuple[str, ...] | tuple[str, int]]] = {}
    for port in inputs.get("ports") or []:
        key = f"{int(port['internal'])}/{port.get('protocol') or 'tcp'}"
        ip = port.get("ip") or "0.0.0.0"
        binding = (ip, int(port["external"])) if port.get("external") else (ip,)
        ports.setdefault(key, []).append(binding)
    if ports:
        config["ports"] = ports
    mounts = []
    for volume in inputs.get("volumes") or []:
        # No volumeName: an anonymous volume, removed with the container.
        mounts.append(
            docker.types.Mount(
                target=volume["containerPath"],
                source=volume.get("volumeName") or None,
                type="volume",
                read_only=bool(volume.get("readOnly")),
            )
        )
    for mount in inputs.get("mounts") or []:
        mounts.append(
            docker.types.Mount(
                target=mount["target"],
                source=mount.get("source") or None,
                type=mount.get("type") or "volume",
                read_only=bool(mount.get("readOnly")),
            )
        )
    if mounts:
        config["mounts"] = mounts
    if inputs.get("healthcheck"):
        check = inputs["healthcheck"]
        config["healthcheck"] = {
            "test": list(check.get("tests") or []),
            "interval": duration_ns(check.get("interval") or "0s"),
            "timeout": duration_ns(check.get("timeout") or "0s"),
            "retries": int(check.get("retries") or 0),
            "start_period": duration_ns(check.get("startPeriod") or "0s"),
        }
    if inputs.get("restart"):
        config["restart_policy"] = {"Name": inputs["restart"]}
    if inputs.get("readOnly"):
        config["read_only"] = True
    if inputs.get("tmpfs"):
        config["tmpfs"] = dict(inputs["tmpfs"])
    capabilities = inputs.get("capabilities") or {}
    if capabilities.get("adds"):
        config["cap_add"] = list(capabilities["adds"])
    if capabilities.get("drops"):
        config["cap_drop"] = list(capabilities["drops"])
    if inputs.get("securityOpts"):
        config["security_opt"] = list(inputs["securityOpts"])
    if inputs.get("ulimits"):
        # Docker sets them (HostConfig.Ulimits) on the container's first process, which its children inherit.
        config["ulimits"] = [_ulimit(item) for item in inputs["ulimits"]]
    if inputs.get("memory"):
        config["mem_limit"] = _mib(inputs["memory"])
    if inputs.get("memorySwap"):
        config["memswap_limit"] = _mib(inputs["memorySwap"])
    if inputs.get("shmSize"):
        config["shm_size"] = _mib(inputs["shmSize"])
    if inputs.get("logDriver") or inputs.get("logOpts"):
        config["log_config"] = docker.types.LogConfig(
            type=inputs.get("logDriver") or "json-file", config=dict(inputs.get("logOpts") or {})
        )
    if inputs.get("stopSignal"):
        config["stop_signal"] = inputs["stopSignal"]
    if inputs.get("networkMode"):
        config["network_mode"] = inputs["networkMode"]
    return config
