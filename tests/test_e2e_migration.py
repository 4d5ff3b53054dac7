"""End to end: a stack made by the previous layout (MLflow connecting as the cluster's
superuser) moves to the least-privilege layout on its next `up`, with its data.

The old layout is deployed by the program as it was before the change
(LEGACY_COMMIT, checked out with `git archive` into .build/), with that commit's
own local deployer; then this tree's program deploys the same stack over the
same volumes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from tests import e2e
from tools.local_deploy import deployer
from tools.stack_config import PROJECT_DIR

pytestmark = pytest.mark.docker

# The last commit where MLflow connected as the image's superuser `mlflow`.
LEGACY_COMMIT = "5b51a0c26cbdef19d748c75b5813b8d76c659cd6"
STACK = "migration"
OVERRIDES: dict[str, object] = {"hostPort": 5004, "authEnabled": True, "tlsMode": "off", "environmentKind": "dev"}
API = "/api/2.0/mlflow"


def _legacy(checkout: Path, *arguments: str) -> str:
    """`python -m tests.local_deploy ...` as the legacy commit runs it; returns stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.local_deploy", *arguments],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(checkout)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def checkout() -> Iterator[Path]:
    target = PROJECT_DIR / ".build" / "legacy-layout"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "archive", LEGACY_COMMIT], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    # The stand-in build installs from the wheelhouse (gitignored): hard links, no copy.
    shutil.rmtree(target / "mlflow" / "wheelhouse")
    subprocess.run(["cp", "-al", str(PROJECT_DIR / "mlflow" / "wheelhouse"), str(target / "mlflow")], check=True)
    try:
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_a_stack_of_the_superuser_layout_migrates_with_its_data(
    checkout: Path, docker_client: docker.DockerClient
) -> None:
    deployer.down(STACK)
    sets = [f"--set={key}={json.dumps(value)}" for key, value in OVERRIDES.items()]
    try:
        legacy = json.loads(_legacy(checkout, "up", "--stack", STACK, *sets).strip().splitlines()[-1])
        postgres = docker_client.containers.get(str(legacy["postgres_container_name"]))
        before = postgres.exec_run(
            ["psql", "-U", "mlflow", "-d", "mlflow", "-Atc", "select rolsuper from pg_roles where rolname = 'mlflow'"]
        )
        assert before.output.decode().strip() == "t", before.output
        legacy_auth = (str(legacy["admin_username"]), str(legacy["admin_password"]))
        base = f"{legacy['tracking_uri']}{API}"
        created = requests.post(f"{base}/experiments/create", json={"name": "legacy"}, auth=legacy_auth, timeout=30)
        assert created.status_code == 200, created.text
        experiment_id = created.json()["experiment_id"]
        user = requests.post(
            f"{base}/users/create",
            json={"username": "alice", "password": "alice-" + "x" * 20},
            auth=legacy_auth,
            timeout=30,
        )
        assert user.status_code == 200, user.text

        migrated = e2e.deploy(STACK, OVERRIDES)
        auth = (str(migrated.outputs["admin_username"]), str(migrated.outputs["admin_password"]))
        base = f"{migrated.tracking_uri}{API}"
        found = requests.get(f"{base}/experiments/get", params={"experiment_id": experiment_id}, auth=auth, timeout=30)
        assert found.status_code == 200, found.text
        assert found.json()["experiment"]["name"] == "legacy"
        alice = requests.get(f"{base}/users/get", params={"username": "alice"}, auth=auth, timeout=30)
        assert alice.status_code == 200, alice.text

        postgres = migrated.container(docker_client, "postgres")

        def query(database: str, sql: str) -> str:
            result = postgres.exec_run(
                ["psql", "-X", "-h", "127.0.0.1", "-U", "mlflow", "-d", database, "-Atc", sql],
                environment={"PGPASSWORD": migrated.db_password},
            )
            assert result.exit_code == 0, result.output
            return str(result.output.decode().strip())

        assert (
            query(
                "mlflow",
                "select concat(rolsuper, rolcreaterole, rolcreatedb) from pg_roles where rolname = current_user",
            )
            == "fff"
        )
        assert query("mlflow", "select rolname from pg_roles where rolsuper order by 1") == "postgres"
        for database in ("mlflow", "mlflow_auth"):
            foreign = query(
                database, "select count(*) from pg_tables where schemaname = 'public' and tableowner <> current_user"
            )
            assert foreign == "0", database
        bootstrap = docker_client.containers.get(f"mlflow-platform-{STACK}-db-bootstrap").logs().decode()
        assert "legacy layout" in bootstrap
        e2e.report(
            "superuser layout -> least privilege: experiment and user kept, mlflow no longer superuser; bootstrap: "
            + " | ".join(line for line in bootstrap.splitlines() if "legacy" in line or "handed" in line)
        )
    finally:
        deployer.down(STACK)
        # What the legacy deployer recorded (its state lives in its checkout).
        _legacy(checkout, "down", "--stack", STACK)
