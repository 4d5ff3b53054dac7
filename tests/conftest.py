"""Shared pytest setup: resource type tokens and the Docker engine fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    from tests.local_deploy import deployer

    if deployer.standins_enabled():
        try:
            deployer.require_standin_images(client)
        except deployer.DeployError as error:
            # Every end-to-end test would fail on it: one line for the whole run instead.
            pytest.exit(str(error), returncode=1)
    yield client
    client.close()
