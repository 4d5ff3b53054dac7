"""mlflow/postgres/entrypoint.sh, run by sh against a fake data directory and a stub of the image's entrypoint."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

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


def test_a_cluster_starts_without_the_password_file(tmp_path: Path) -> None:
    # Nothing to initialise, so the password is not read (nor exported into the server's environment).
    result = _run(tmp_path, "17", "17")
    expected = "image entrypoint: postgres\npassword file: none\n"
    assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")


# The image's entrypoint: exports the password it read (as the official image's file_env does)
# and execs `postgres`, a stand-in that logs its arguments and environment and runs until SIGINT.
_IMAGE_ENTRYPOINT = """#!/bin/sh
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE"); export POSTGRES_PASSWORD
fi
unset POSTGRES_PASSWORD_FILE
[ -n "${FAIL_INIT:-}" ] && [ ! -s "$PGDATA/PG_VERSION" ] && { echo "initdb: failed" >&2; exit 3; }
echo 17 > "$PGDATA/PG_VERSION"
exec "$@"
"""
_POSTGRES = """#!/bin/sh
echo "server $* password=${POSTGRES_PASSWORD:-none}" >> "$LOG"
trap 'echo "server stopped by TERM" >> "$LOG"; exit 0' TERM
touch "$READY"
while [ -z "${ONCE:-}" ] || [ ! -e "$LOG.done" ]; do sleep 0.05; done
"""
_PG_ISREADY = """#!/bin/sh
[ -e "$READY" ]
"""


def _stub_image(pgdata: Path, bin_dir: Path) -> None:
    """An empty data directory, and the image's entrypoint, server and pg_isready as stubs on PATH."""
    pgdata.mkdir()
    bin_dir.mkdir()
    for name, text in (
        ("docker-entrypoint.sh", _IMAGE_ENTRYPOINT),
        ("postgres", _POSTGRES),
        ("pg_isready", _PG_ISREADY),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def test_an_empty_data_directory_is_initialised_by_a_server_that_never_serves_with_the_password(
    tmp_path: Path,
) -> None:
    pgdata, bin_dir, log = tmp_path / "pgdata", tmp_path / "bin", tmp_path / "log"
    _stub_image(pgdata, bin_dir)
    secret = tmp_path / "superuser-password"
    secret.write_text("Initdb-Secret-1")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PGDATA": str(pgdata),
        "PG_MAJOR": "17",
        "POSTGRES_PASSWORD_FILE": str(secret),
        "LOG": str(log),
        "READY": str(tmp_path / "ready"),
        "ONCE": "1",
    }
    process = subprocess.Popen(
        ["sh", str(SCRIPT), "postgres", "-c", "shared_buffers=16MB"], env=env, stderr=subprocess.PIPE, text=True
    )
    # The real server runs until told otherwise: wait for its line, then let it end.
    deadline = time.monotonic() + 30
    while log.read_text().count("server ") < 3 if log.exists() else True:
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.05)
    (tmp_path / "log.done").touch()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert log.read_text().splitlines() == [
        # Initialised with the password, listening on no TCP address, stopped as soon as it was up...
        "server -c shared_buffers=16MB -c listen_addresses= password=Initdb-Secret-1",
        "server stopped by TERM",
        # ...then the server that runs: without the password in its environment.
        "server -c shared_buffers=16MB password=none",
    ]
    assert "cluster initialised; starting the server without the password in its environment" in stderr


def test_a_failed_initialisation_stops_the_container(tmp_path: Path) -> None:
    pgdata, bin_dir = tmp_path / "pgdata", tmp_path / "bin"
    _stub_image(pgdata, bin_dir)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PGDATA": str(pgdata),
        "PG_MAJOR": "17",
        "FAIL_INIT": "1",
        "LOG": str(tmp_path / "log"),
        "READY": str(tmp_path / "ready"),
    }
    result = subprocess.run(["sh", str(SCRIPT), "postgres"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "initdb: failed" in result.stderr
    assert "initialising the data directory failed (exit 3)" in result.stderr
    assert not (tmp_path / "log").exists()


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
