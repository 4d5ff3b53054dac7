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
  # A pre-upgrade request: the pid of the requesting session, if $STUBS/request-pid names one.
  *"FROM pg_stat_activity"*) cat "$STUBS/request-pid" 2>/dev/null || : ;;
  *NOTIFY*) echo "$*" >>"$STUBS/notifies" ;;
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


def _now(env: dict[str, str], reason: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), "now", reason], env=env, capture_output=True, text=True, check=True)


def test_now_prints_the_id_last_and_retention_keeps_the_newest_scheduled(backup: dict[str, str]) -> None:
    ids = []
    for _ in range(3):
        result = _now(backup, "scheduled")
        ids.append(result.stdout.splitlines()[-1])
    assert len(set(ids)) == 3
    assert _backups(backup) == [ids[2], ids[1]]
    assert "retention (keep 2 scheduled): deleted backup " + ids[0] in result.stderr


def test_only_the_schedule_prunes_and_only_its_own_backups(backup: dict[str, str]) -> None:
    """A backup asked for through the database (anyone with the MLflow role can) or by hand deletes nothing."""
    kept = [_now(backup, reason).stdout.splitlines()[-1] for reason in ("manual", "pre-upgrade", "pre-upgrade")]
    scheduled = [_now(backup, "scheduled").stdout.splitlines()[-1] for _ in range(2)]
    # Beyond KEEP (2) backups in all, yet a pre-upgrade and a manual one prune nothing.
    for reason in ("pre-upgrade", "manual"):
        result = _now(backup, reason)
        kept.append(result.stdout.splitlines()[-1])
        assert "retention" not in result.stderr
    assert set(_backups(backup)) == {*kept, *scheduled}
    # A third scheduled backup deletes the oldest scheduled one, and only it.
    third = _now(backup, "scheduled").stdout.splitlines()[-1]
    assert set(_backups(backup)) == {*kept, scheduled[1], third}


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


def test_backups_requested_through_the_database_are_rate_limited(backup: dict[str, str]) -> None:
    stubs = Path(backup["STUBS"])
    notifies = stubs / "notifies"
    env = {**backup, "REQUEST_INTERVAL_SECONDS": "600"}
    schedule = subprocess.Popen(
        ["sh", str(SCRIPT), "schedule"], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )

    def answers(count: int) -> list[str]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = notifies.read_text().splitlines() if notifies.exists() else []
            if len(lines) >= count:
                return lines
            time.sleep(0.2)
        raise AssertionError(f"fewer than {count} answers: {lines}")

    try:
        (stubs / "request-pid").write_text("101\n")
        [first] = answers(1)
        requested = first.split("'")[1]
        assert requested in _backups(backup)
        # Another session asks at once: refused, with the wait named, and nothing is deleted.
        (stubs / "request-pid").write_text("102\n")
        second = answers(2)[1]
        assert "'refused: at most one requested backup every 600s; next in " in second
        assert requested in _backups(backup)
    finally:
        os.killpg(schedule.pid, 15)
        _, stderr = schedule.communicate(timeout=10)
    assert "REFUSED a backup request through the database: at most one every 600s" in stderr
