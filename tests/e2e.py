"""What the end-to-end tests share: deploying a stack for real and poking at it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import docker
import requests
from docker.models.containers import Container

from tests.local_deploy import deployer


@dataclass
class Deployed:
    """A stack brought up through the same code path as `python -m tests.local_deploy up`."""

    stack: str
    overrides: dict[str, object]
    outputs: dict[str, Any]
    seconds_to_healthy: float

    @property
    def tracking_uri(self) -> str:
        return str(self.outputs["tracking_uri"])

    @property
    def db_password(self) -> str:
        return unquote(urlsplit(str(self.outputs["backend_store_uri"])).password or "")

    def secrets(self) -> list[str]:
        values = [self.db_password]
        if self.outputs.get("admin_password"):
            values.append(str(self.outputs["admin_password"]))
        assert all(len(value) >= 24 for value in values)
        return values

    def container(self, client: docker.DockerClient, role: str) -> Container:
        return client.containers.get(str(self.outputs[f"{role}_container_name"]))


def deploy(stack: str, overrides: Mapping[str, object] | None = None) -> Deployed:
    started = time.monotonic()
    outputs = deployer.up(stack, dict(overrides or {}))
    return Deployed(stack, dict(overrides or {}), outputs, time.monotonic() - started)


def redeploy(deployed: Deployed, overrides: Mapping[str, object] | None = None) -> Deployed:
    return deploy(deployed.stack, {**deployed.overrides, **(overrides or {})})


@contextlib.contextmanager
def stack(stack_name: str, overrides: Mapping[str, object] | None = None) -> Iterator[Deployed]:
    """Deploys from nothing (leftovers of an earlier run removed first) and removes it all after,
    whether the deployment or the tests failed: the retainOnDelete volumes and the state
    file too (purge), or the next run would find data initialised with a password it
    no longer knows."""
    deployer.down(stack_name, purge=True)
    try:
        yield deploy(stack_name, overrides)
    finally:
        deployer.down(stack_name, purge=True)


def wait_until_serving(tracking_uri: str, timeout: float = 180, auth: tuple[str, str] | None = None) -> float:
    """Seconds until /health answers and a real API call (which needs Postgres) succeeds."""
    started = time.monotonic()
    last_error = ""
    while time.monotonic() - started < timeout:
        try:
            health = requests.get(f"{tracking_uri}/health", timeout=5)
            api = requests.get(
                f"{tracking_uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth, timeout=10
            )
            if health.status_code == 200 and api.status_code == 200:
                return time.monotonic() - started
            last_error = f"health {health.status_code}, api {api.status_code}: {api.text[:200]}"
        except requests.RequestException as error:
            last_error = str(error)
        time.sleep(0.5)
    raise AssertionError(f"{tracking_uri} did not serve within {timeout}s: {last_error}")


def wait_for_health_status(container: Container, status: str = "healthy", timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        container.reload()
        if container.attrs["State"].get("Health", {}).get("Status") == status:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{container.name} not {status} within {timeout}s: {container.attrs['State']}")


def report(message: str) -> None:
    """Figures for the CI log (pytest runs the end-to-end tests with -s)."""
    print(f"\n[e2e] {message}", flush=True)
