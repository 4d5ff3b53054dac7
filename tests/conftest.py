"""Shared pytest setup: resource type tokens and the Docker engine fixture."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import ast_guard

# Before any failure is reported: pytest parses source to show one (see tests/ast_guard.py).
ast_guard.install()
CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
IMAGE = "docker:index/image:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
TLS_SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"


@functools.cache
def _mutmut_durations() -> dict[str, float]:
    # mutmut runs from its copy mutants/, where it keeps each test's duration from its stats run.
    stats = Path("mutmut-stats.json")
    return dict(json.loads(stats.read_text(encoding="utf-8"))["duration_by_test"]) if stats.exists() else {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `make mutation`, the quickest tests first.

    mutmut stops a mutant's tests at the first failure (-x), so a mutant that a quick test
    kills no longer waits for the slow ones (the PostgreSQL and policy-pack tests) to pass
    first. The fast suite passes in any order; only a mutant's run is reordered.
    """
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    durations = _mutmut_durations()
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stacks shared between end-to-end modules (tests/e2e.py `shared`) go at the end, pass or fail."""
    e2e = sys.modules.get("tests.e2e")  # imported only by end-to-end tests: nothing to do without them
    if e2e is not None:
        e2e.release_shared()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker engine, or a skip; with REQUIRE_DOCKER=1 a missing engine fails the test instead."""
    import docker  # lazy: the unit tests need no engine

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as error:  # any failure to answer means: no usable engine
        message = f"no Docker engine answers ({type(error).__name__}: {error})"
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(f"REQUIRE_DOCKER=1 but {message}")
        pytest.skip(message)
    from tools.local_deploy import deployer

    if deployer.standins_enabled():
        try:
            deployer.require_standin_images(client)
        except deployer.DeployError as error:
            # Every end-to-end test would fail on it: one line for the whole run instead.
            pytest.exit(str(error), returncode=1)
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_store(docker_client: Any) -> Iterator[Any]:
    """A real S3 server (SeaweedFS) outside every stack, with a bucket and a key pair scoped to it."""
    from tests.s3_store import running_store  # lazy: boto3 and the engine only for end-to-end tests

    with running_store(docker_client) as store:
        yield store


@pytest.fixture(scope="module")
def swarm_manager(docker_client: Any) -> None:
    """The engine is a swarm manager (`docker swarm init`), or a skip; with REQUIRE_DOCKER=1 a failure."""
    swarm = docker_client.info().get("Swarm", {})
    if swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable"):
        return
    message = (
        f"the Docker engine is not a swarm manager (node state {swarm.get('LocalNodeState')!r}, "
        f"manager {bool(swarm.get('ControlAvailable'))}); `docker swarm init` makes it one"
    )
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but {message}")
    pytest.skip(message)
