"""A container's memory, sampled from a thread: the bench's stacks and the end-to-end tests' transfers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import docker.errors

_MIB = 1024 * 1024


def memory_mib(container: Any) -> float:
    """What `docker stats` shows: usage minus the inactive page cache."""
    stats = container.stats(stream=False, one_shot=True)["memory_stats"]
    inactive = stats.get("stats", {}).get("inactive_file", 0)
    return float(stats.get("usage", 0) - inactive) / _MIB


def cgroup_peak_mib(container: Any) -> float | None:
    """The kernel's own peak since the container started, page cache included; None where neither file is.

    cgroup v2's `memory.peak` (read inside the container, whose cgroup namespace makes it
    its own root), or v1's `memory.max_usage_in_bytes`, which `docker stats` passes on.
    """
    stats = container.stats(stream=False, one_shot=True)["memory_stats"]
    if "max_usage" in stats:
        return float(stats["max_usage"]) / _MIB
    result = container.exec_run(["cat", "/sys/fs/cgroup/memory.peak"])
    return float(result.output) / _MIB if result.exit_code == 0 else None


@contextmanager
def peak_memory(container: Any, interval: float = 1.0) -> Iterator[dict[str, float]]:
    """Samples the container's memory every `interval` seconds while the block runs; yields the peak so far."""
    with peak_total_memory(lambda: [container], interval) as peak:
        yield peak


@contextmanager
def peak_total_memory(containers: Callable[[], Iterable[Any]], interval: float = 1.0) -> Iterator[dict[str, float]]:
    """The peak of the summed memory of `containers()`, called at every sample: a swarm service's
    replicas, whose containers swarm may replace while the block runs."""
    peak = {"mib": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            # A container gone between the listing and its stats skips the sample, not the sampler.
            with suppress(docker.errors.DockerException, KeyError):
                peak["mib"] = max(peak["mib"], sum(memory_mib(container) for container in containers()))
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(timeout=10)
