"""mlflow/backup/mlflow-backup's schedule, lock and retention, run by sh with stub database tools.

`pg_dump`, `psql` and `tar` are stubs on PATH; everything else (flock, sha256sum, date)
is the host's own, as in the container. The end-to-end tests (test_e2e_backups.py) run
the same script against a real stack.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "mlflow" / "backup" / "mlflow-backup"

# pg_dump: fails while $STUBS/fail-dump exists; otherwise records when it ran (start, end)
# in $STUBS/dumps and takes $DUMP_SECONDS, so overlapping runs would show.
_PG_DUMP = """#!/bin/sh
[ ! -e "$STUBS/fail-dump" ] || { echo "pg_dump: connection refused" >&2; exit 1; }
for arg; do case "$arg" in --file=*) file=${arg#--file=} ;; esac; done
start=$(date +%s.%N)
sleep "${DUMP_SECONDS:-0}"
echo "dump of $*" >"$file"
echo "$start $(date +%s.%N)" >>"$STUBS/dumps"
"""
# psql: the few questions the script asks, answered for a stack whose schema is current.
_PSQL = """#!/bin/sh
case "$*" in
  *"FROM pg_database"*) echo 1 ;;
  *to_regclass*) echo t ;;
  *"FROM alembic_version"*) echo 1b5f0d9ad7c1 ;;
  *) ;;
esac
"""
_TAR = """#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -czf) echo artifacts >"$2"; shift ;; esac; shift; done
"""


@pytest.fixture
def backup(tmp_path: Path) -> dict[str, str]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in (("pg_dump", _PG_DUMP), ("psql", _PSQL), ("tar", _TAR)):
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    (tmp_path / "backups").mkdir()
    (tmp_path / "artifacts").mkdir()
    config = tmp_path / "backup.conf"
    config.write_text(
        "\n".join(
            [
                "PGHOST=postgres",
                "PGPORT=5432",
                "PGUSER=mlflow",
                f"PGPASSFILE={tmp_path / 'pgpass'}",
                "TRACKING_DB=mlflow",
                "AUTH_DB=mlflow_auth",
                f"BACKUP_DIR={tmp_path / 'backups'}",
                f"ARTIFACTS_DIR={tmp_path / 'artifacts'}",
                "INTERVAL_SECONDS=1",
                "KEEP=2",
                "MLFLOW_VERSION=3.17.2",
                "",
            ]
        )
    )
    return {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "MLFLOW_BACKUP_CONFIG": str(config),
        "STUBS": str(stubs),
        "TMPDIR": str(tmp_path),
    }


def _backups(env: dict[str, str]) -> list[str]:
    listed = subprocess.run(
        ["sh", str(SCRIPT), "list"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [line.split()[0] for line in listed]


def test_now_prints_the_id_last_and_retention_keeps_the_newest(backup: dict[str, str]) -> None:
    ids = []
    for _ in range(3):
        result = subprocess.run(["sh", str(SCRIPT), "now"], env=backup, capture_output=True, text=True, check=True)
        ids.append(result.stdout.splitlines()[-1])
    assert len(set(ids)) == 3
    assert _backups(backup) == [ids[2], ids[1]]
    assert "retention (keep 2): deleted backup " + ids[0] in result.stderr


def test_two_backups_at_once_run_one_after_the_other(backup: dict[str, str]) -> None:
    env = {**backup, "DUMP_SECONDS": "0.5"}
    runs = [subprocess.Popen(["sh", str(SCRIPT), "now"], env=env, stdout=subprocess.PIPE) for _ in range(2)]
    assert [run.wait(timeout=30) for run in runs] == [0, 0]
    # Two dumps (tracking, auth) per backup; sorted by start, none begins before the last ended.
    spans = sorted(tuple(map(float, line.split())) for line in Path(env["STUBS"], "dumps").read_text().splitlines())
    assert len(spans) == 4
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


def test_a_failed_scheduled_backup_is_logged_and_retried(backup: dict[str, str]) -> None:
    fail = Path(backup["STUBS"], "fail-dump")
    fail.touch()
    schedule = subprocess.Popen(
        ["sh", str(SCRIPT), "schedule"], env=backup, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert schedule.stderr is not None
        lines = [schedule.stderr.readline() for _ in range(4)]
        assert "schedule: a backup every 1s, keeping 2; retry after 1s on failure" in lines[0]
        assert any("scheduled backup FAILED; retrying in 1s" in line for line in lines)
        assert _backups(backup) == []
        fail.unlink()
        deadline = time.monotonic() + 30
        while not _backups(backup) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(_backups(backup)) == 1
    finally:
        os.killpg(schedule.pid, 15)
        schedule.wait(timeout=10)
