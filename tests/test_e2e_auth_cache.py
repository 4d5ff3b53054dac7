"""End to end: MLflow's basic-auth cache (authCacheTtlSeconds) never lets in what it should refuse.

Each uvicorn worker keeps its own cache; a password change or a deletion clears
it only in the worker that handled that request. The others keep accepting the
old credential until the TTL runs out: that is the documented trade-off, and
these tests hold it to its bound on a stack with several workers and a short TTL.
Requests go out on fresh connections, so the kernel spreads them over the workers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest
import requests

from tests import e2e

pytestmark = pytest.mark.docker

TTL_SECONDS = 5
WORKERS = 4
# Enough fresh connections that every one of the workers answers some of them.
PROBES = 48
OVERRIDES = {"authEnabled": True, "authCacheTtlSeconds": TTL_SECONDS, "workers": WORKERS, "hostPort": 5003}
SEARCH = "/api/2.0/mlflow/experiments/search"
USERS = "/api/2.0/mlflow/users"


@pytest.fixture(scope="module")
def deployed(docker_client: docker.DockerClient) -> Iterator[e2e.Deployed]:
    with e2e.stack("dev", OVERRIDES) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin(deployed: e2e.Deployed) -> tuple[str, str]:
    return (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))


def _statuses(deployed: e2e.Deployed, auth: tuple[str, str], count: int = PROBES) -> list[int]:
    """`count` authenticated reads, 8 at a time, each on a connection of its own."""

    def probe(_: int) -> int:
        response = requests.get(f"{deployed.tracking_uri}{SEARCH}", params={"max_results": 1}, auth=auth, timeout=30)
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(probe, range(count)))


def _new_user(deployed: e2e.Deployed, admin: tuple[str, str]) -> tuple[str, str]:
    user = (f"cache-{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex)
    created = requests.post(
        f"{deployed.tracking_uri}{USERS}/create",
        json={"username": user[0], "password": user[1]},
        auth=admin,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    # Every worker now caches the right password.
    assert set(_statuses(deployed, user)) == {200}
    return user


def test_the_cache_is_configured(deployed: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    server = deployed.container(docker_client, "mlflow")
    written = server.exec_run(["grep", "^auth_cache_ttl_seconds", "/tmp/mlflow-basic-auth.ini"])
    assert written.output.decode().strip() == f"auth_cache_ttl_seconds = {TTL_SECONDS}"
    command = server.attrs["Config"]["Cmd"]
    assert command[command.index("--workers") + 1] == str(WORKERS)


def test_a_wrong_password_is_refused_while_the_right_one_is_cached(
    deployed: e2e.Deployed, admin: tuple[str, str]
) -> None:
    user = _new_user(deployed, admin)
    assert set(_statuses(deployed, (user[0], user[1] + "x"))) == {401}
    assert set(_statuses(deployed, (user[0], ""))) == {401}
    assert set(_statuses(deployed, ("nobody", user[1]))) == {401}
    assert set(_statuses(deployed, user)) == {200}


def test_a_changed_password_is_refused_in_every_worker_after_the_ttl(
    deployed: e2e.Deployed, admin: tuple[str, str]
) -> None:
    user = _new_user(deployed, admin)
    new_password = "pw-" + uuid.uuid4().hex
    changed = requests.patch(
        f"{deployed.tracking_uri}{USERS}/update-password",
        json={"username": user[0], "password": new_password},
        auth=admin,
        timeout=30,
    )
    assert changed.status_code == 200, changed.text
    stale = _statuses(deployed, user)
    e2e.report(f"auth cache: old password accepted {stale.count(200)}/{len(stale)} times within the TTL")
    time.sleep(TTL_SECONDS + 1)
    assert set(_statuses(deployed, user)) == {401}
    assert set(_statuses(deployed, (user[0], new_password))) == {200}


def test_a_deleted_user_is_refused_in_every_worker_after_the_ttl(
    deployed: e2e.Deployed, admin: tuple[str, str]
) -> None:
    user = _new_user(deployed, admin)
    deleted = requests.delete(
        f"{deployed.tracking_uri}{USERS}/delete", json={"username": user[0]}, auth=admin, timeout=30
    )
    assert deleted.status_code == 200, deleted.text
    time.sleep(TTL_SECONDS + 1)
    assert set(_statuses(deployed, user)) == {401}
