"""Every container's task limit (issue 19, finding 12a): declared on each, one value per uid, and enough
for the largest settings of two stacks on one host (components/task_limits.py says why per uid)."""

from __future__ import annotations

import pytest

from components.mlflow_server import database_connections
from components.postgres import server_command
from components.task_limits import (
    MAX_WORKERS,
    MLFLOW_TASKS,
    POSTGRES_BACKGROUND_TASKS,
    POSTGRES_TASKS,
    PROXY_TASKS,
    STACKS_PER_HOST,
    UVICORN_WORKER_TASKS,
)
from tests import harness
from tests.conftest import CONTAINER
from tests.test_settings import INTEGER_BOUNDS
from tools.stack_config import STACKS

# Container (by name) -> (user, task limit), written out: a changed limit or user must change this table.
EXPECTED = {
    "postgres": ("999:999", 2304),
    "db-bootstrap": ("10001:10001", 4096),
    "mlflow": ("10001:10001", 4096),
    "gc": ("10001:10001", 4096),
    "backup": ("10001:10001", 4096),
    "proxy": ("10002:10002", 1024),
}


@pytest.mark.parametrize("stack", STACKS)
def test_every_container_limits_its_tasks_as_its_uid(stack: str) -> None:
    containers = harness.declaration(stack).mocks.of_type(CONTAINER)
    declared = {
        str(container.inputs["name"]).removeprefix(f"mlflow-platform-{stack}-"): (
            container.inputs["user"],
            container.inputs["ulimits"],
        )
        for container in containers
    }
    # dev has no proxy (tlsMode off).
    expected = {name: value for name, value in EXPECTED.items() if stack != "dev" or name != "proxy"}
    assert declared == {
        name: (user, [{"name": "nproc", "soft": limit, "hard": limit}]) for name, (user, limit) in expected.items()
    }


def test_one_limit_per_uid() -> None:
    # RLIMIT_NPROC counts the tasks of a uid, whichever container runs them: two limits for one
    # uid would be one count checked against two numbers.
    limits: dict[str, set[int]] = {}
    for user, limit in EXPECTED.values():
        limits.setdefault(user, set()).add(limit)
    assert limits == {"999:999": {POSTGRES_TASKS}, "10001:10001": {MLFLOW_TASKS}, "10002:10002": {PROXY_TASKS}}


def test_the_limits_leave_room_for_two_stacks_at_their_largest() -> None:
    assert INTEGER_BOUNDS["workers"] == (1, MAX_WORKERS)
    largest_connections = database_connections(MAX_WORKERS, auth_enabled=True)
    [max_connections] = [
        int(argument.split("=", 1)[1])
        for argument in server_command(1024, largest_connections)
        if "max_connections" in argument
    ]
    assert max_connections == 980
    assert STACKS_PER_HOST * (max_connections + POSTGRES_BACKGROUND_TASKS) <= POSTGRES_TASKS
    # The server's workers, with a margin of a quarter for gc, backups and the bootstrap.
    assert MLFLOW_TASKS >= STACKS_PER_HOST * MAX_WORKERS * UVICORN_WORKER_TASKS * 5 // 4
