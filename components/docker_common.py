"""Settings every container of the stack shares: labels, log rotation, hardening."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import pulumi
import pulumi_docker as docker

# Docker's default json-file driver never rotates: a chatty server fills the disk.
LOG_DRIVER = "json-file"
RESTART_POLICY = "unless-stopped"
# Blocks setuid binaries and file capabilities from raising privileges.
NO_NEW_PRIVILEGES = "no-new-privileges:true"
# Both containers take their secrets from files here. It is an anonymous volume:
# the provider uploads files before the container starts, and Docker refuses
# uploads into a read-only root file system but not into a volume. The provider
# removes the anonymous volume with the container.
SECRETS_DIR = "/run/secrets"


def stack_labels(project: str, stack: str, role: str) -> dict[str, str]:
    """Labels that let an operator find everything one stack owns (`docker ps --filter label=...`)."""
    return {
        "com.pulumi.project": project,
        "com.pulumi.stack": stack,
        "org.mlflow-platform.role": role,
    }


def container_labels(labels: Mapping[str, str]) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label=key, value=value) for key, value in sorted(labels.items())]


def volume_labels(labels: Mapping[str, str]) -> list[docker.VolumeLabelArgs]:
    return [docker.VolumeLabelArgs(label=key, value=value) for key, value in sorted(labels.items())]


def network_labels(labels: Mapping[str, str]) -> list[docker.NetworkLabelArgs]:
    return [docker.NetworkLabelArgs(label=key, value=value) for key, value in sorted(labels.items())]


def log_rotation(max_size: str, max_files: int) -> dict[str, str]:
    return {"max-size": max_size, "max-file": str(max_files)}


def secrets_volume() -> docker.ContainerVolumeArgs:
    return docker.ContainerVolumeArgs(container_path=SECRETS_DIR)


class Hardening(TypedDict):
    """Container inputs every container of the stack shares."""

    capabilities: docker.ContainerCapabilitiesArgs
    security_opts: list[str]
    memory: pulumi.Input[int]
    memory_swap: pulumi.Input[int]
    log_driver: str
    log_opts: dict[str, str]


def hardening(memory_mb: pulumi.Input[int], log_max_size: str, log_max_files: int) -> Hardening:
    """No capabilities, no privilege gain, a memory limit with no swap on top, rotated logs.

    Spread into each `docker.Container(...)`, so no container can miss one of them.
    """
    return {
        "capabilities": docker.ContainerCapabilitiesArgs(drops=["ALL"]),
        "security_opts": [NO_NEW_PRIVILEGES],
        "memory": memory_mb,
        # Equal to the limit: no swap on top, so a leak is killed instead of thrashing the host.
        "memory_swap": memory_mb,
        "log_driver": LOG_DRIVER,
        "log_opts": log_rotation(log_max_size, log_max_files),
    }
