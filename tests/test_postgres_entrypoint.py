"""mlflow/postgres/entrypoint.sh, run by sh against a fake data directory and a stub of the image's entrypoint."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "mlflow" / "postgres" / "entrypoint.sh"


def _run(tmp_path: Path, data_major: str | None, image_major: str) -> subprocess.CompletedProcess[str]:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    if data_major is not None:
        (pgdata / "PG_VERSION").write_text(f"{data_major}\n")
    stub = tmp_path / "bin" / "docker-entrypoint.sh"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "image entrypoint: $*"\necho "password file: ${POSTGRES_PASSWORD_FILE-none}"\n')
    stub.chmod(0o755)
    env = {
        "PATH": f"{stub.parent}:{os.environ['PATH']}",
        "PGDATA": str(pgdata),
        "PG_MAJOR": image_major,
        "POSTGRES_IMAGE_REFERENCE": "registry.example.com/postgres:18.1",
        "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres-superuser-password",
    }
    return subprocess.run(["sh", str(SCRIPT), "postgres"], env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("data_major", "password_file"),
    [
        # An empty data directory: the image's initdb needs the superuser's password.
        (None, "/run/secrets/postgres-superuser-password"),
        # A cluster: nothing to initialise, so the password is not read (nor exported into the server's environment).
        ("17", "none"),
    ],
)
def test_same_major_or_no_data_hands_over_to_the_image(
    tmp_path: Path, data_major: str | None, password_file: str
) -> None:
    result = _run(tmp_path, data_major, "17")
    expected = f"image entrypoint: postgres\npassword file: {password_file}\n"
    assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")


def test_another_major_stops_naming_key_majors_and_procedure(tmp_path: Path) -> None:
    result = _run(tmp_path, "17", "18")
    assert result.returncode == 78
    assert result.stdout == ""
    assert (
        "config key 'postgresImage' is registry.example.com/postgres:18.1 (PostgreSQL 18), "
        "but the data volume holds a PostgreSQL 17 cluster"
    ) in result.stderr
    assert "set postgresImage back to a 17.x image" in result.stderr
    assert "README.md, section 'Upgrading Postgres to a new major version'" in result.stderr


def test_the_procedure_the_message_names_exists() -> None:
    readme = (SCRIPT.parents[2] / "README.md").read_text(encoding="utf-8")
    assert "\n## Upgrading Postgres to a new major version\n" in readme
