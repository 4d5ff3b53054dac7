"""mlflow/entrypoint.sh, run for real with stub `python` and `mlflow` executables on PATH.

The stub `python` hands `python -c ...` (the percent-encoding) to the real
interpreter and records the `prepare_db.py` call instead of running it; the stub
`mlflow` records its arguments, environment, umask and process id, so a test sees
exactly what the server would have been started with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.stack_config import PROJECT_DIR

ENTRYPOINT = PROJECT_DIR / "mlflow" / "entrypoint.sh"

# Records argv, environment, umask and pid as JSON lines: `$1` names the record file.
_RECORDER = """\
import json, os, sys
umask = os.umask(0)
os.umask(umask)
with open(sys.argv[1], "a", encoding="utf-8") as handle:
    record = {"argv": sys.argv[2:], "env": dict(os.environ), "umask": umask, "pid": os.getpid()}
    handle.write(json.dumps(record) + "\\n")
"""

_PYTHON_STUB = """\
#!/bin/sh
# `python -c CODE`: the entrypoint's own encoding helpers run on the real interpreter.
if [ "$1" = "-c" ]; then exec "{python}" "$@"; fi
"{python}" "{recorder}" "{records}/python" "$@"
exit "${{PREPARE_DB_EXIT:-0}}"
"""

# exec: the recorded pid is then the pid of this stub's own process.
_MLFLOW_STUB = """\
#!/bin/sh
exec "{python}" "{recorder}" "{records}/mlflow" "$@"
"""


@dataclass
class Run:
    returncode: int
    stderr: str
    pid: int
    records: Path

    def calls(self, program: str) -> list[dict[str, Any]]:
        path = self.records / program
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    recorder = tmp_path / "recorder.py"
    recorder.write_text(_RECORDER, encoding="utf-8")
    values = {"python": sys.executable, "recorder": recorder, "records": records}
    for name, template in (("python", _PYTHON_STUB), ("mlflow", _MLFLOW_STUB)):
        stub = bin_dir / name
        stub.write_text(template.format(**values), encoding="utf-8")
        stub.chmod(0o755)
    return tmp_path


def _secret_file(directory: Path, name: str, content: str) -> str:
    path = directory / name
    path.write_text(content, encoding="utf-8")
    return str(path)


def _base_env(stubs: Path) -> dict[str, str]:
    return {
        "PATH": f"{stubs / 'bin'}:/usr/bin:/bin",
        "TMPDIR": str(stubs),
        "POSTGRES_HOST": "postgres",
        "POSTGRES_DB": "mlflow",
        "POSTGRES_USER": "mlflow",
        "POSTGRES_PASSWORD_FILE": _secret_file(stubs, "postgres-password", "Secret123\n"),
    }


def _run(stubs: Path, env: dict[str, str], *args: str) -> Run:
    process = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, stderr = process.communicate(timeout=60)
    return Run(process.returncode, stderr, process.pid, stubs / "records")


def test_the_server_is_execd_with_the_given_arguments(stubs: Path) -> None:
    run = _run(stubs, _base_env(stubs), "--host", "0.0.0.0", "--port", "5000", "--workers", "2")
    assert run.returncode == 0, run.stderr
    [server] = run.calls("mlflow")
    assert server["argv"] == ["server", "--host", "0.0.0.0", "--port", "5000", "--workers", "2"]
    # exec: the server replaces the shell (same pid), so it gets the container's signals.
    assert server["pid"] == run.pid


def test_the_store_uri_is_exported_to_prepare_db_and_the_server_without_the_password(stubs: Path) -> None:
    run = _run(stubs, _base_env(stubs))
    assert run.returncode == 0, run.stderr
    [prepare] = run.calls("python")
    assert prepare["argv"] == ["/opt/mlflow-entrypoint/prepare_db.py"]
    expected = "postgresql+psycopg://mlflow@postgres:5432/mlflow"
    assert prepare["env"]["MLFLOW_BACKEND_STORE_URI"] == expected
    [server] = run.calls("mlflow")
    assert server["env"]["MLFLOW_BACKEND_STORE_URI"] == expected
    # libpq's password file, on the private tmpfs: prepare_db.py writes it from POSTGRES_PASSWORD_FILE.
    for call in (prepare, server):
        assert call["env"]["PGPASSFILE"] == f"{stubs}/pgpass"
        assert call["env"]["POSTGRES_PASSWORD_FILE"] == f"{stubs}/postgres-password"
    # No process gets the password in its environment; no auth settings without auth.
    assert [key for call in (prepare, server) for key, value in call["env"].items() if "Secret123" in value] == []
    assert not {key for key in server["env"] if key.startswith("MLFLOW_AUTH") or key.startswith("MLFLOW_FLASK")}


def test_with_a_spool_the_server_alone_spools_there_and_the_secret_files_stay_on_the_tmpfs(stubs: Path) -> None:
    spool = stubs / "spool"
    run = _run(stubs, {**_base_env(stubs), "MLFLOW_SPOOL_DIR": str(spool)})
    assert run.returncode == 0, run.stderr
    [prepare] = run.calls("python")
    [server] = run.calls("mlflow")
    assert (prepare["env"]["TMPDIR"], server["env"]["TMPDIR"]) == (str(stubs), str(spool))
    assert server["env"]["PGPASSFILE"] == f"{stubs}/pgpass"


def test_the_user_is_percent_encoded(stubs: Path) -> None:
    env = {
        **_base_env(stubs),
        "POSTGRES_USER": "ml flow@team",
        "POSTGRES_PASSWORD_FILE": _secret_file(stubs, "pw", "p@ss:w/rd%?#&+ =\n"),
        "POSTGRES_HOST": "db.internal",
        "POSTGRES_PORT": "6543",
        "POSTGRES_DB": "tracking",
    }
    run = _run(stubs, env)
    assert run.returncode == 0, run.stderr
    [server] = run.calls("mlflow")
    assert (
        server["env"]["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://ml%20flow%40team@db.internal:6543/tracking"
    )


def test_files_the_processes_create_are_private(stubs: Path) -> None:
    run = _run(stubs, _base_env(stubs))
    assert run.returncode == 0, run.stderr
    assert [call["umask"] for call in run.calls("python")] == [0o077]
    assert [call["umask"] for call in run.calls("mlflow")] == [0o077]


def test_basic_auth_secrets_stay_in_their_files(stubs: Path) -> None:
    env = {
        **_base_env(stubs),
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": _secret_file(stubs, "admin", "Admin456"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": _secret_file(stubs, "flask", "Flask789"),
    }
    run = _run(stubs, env, "--app-name", "platform-basic-auth")
    assert run.returncode == 0, run.stderr
    for call in (*run.calls("python"), *run.calls("mlflow")):
        # prepare_db.py reads the admin password from its file; each worker reads the Flask key from its own.
        assert call["env"]["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"] == f"{stubs}/admin"
        assert call["env"]["MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"] == f"{stubs}/flask"
        assert call["env"]["MLFLOW_AUTH_CONFIG_PATH"] == f"{stubs}/mlflow-basic-auth.ini"
        assert [key for key, value in call["env"].items() if "Admin456" in value or "Flask789" in value] == []
        assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in call["env"]
        assert "MLFLOW_FLASK_SERVER_SECRET_KEY" not in call["env"]
    assert run.calls("mlflow")[0]["argv"] == ["server", "--app-name", "platform-basic-auth"]


def test_a_failed_database_preparation_stops_before_the_server(stubs: Path) -> None:
    run = _run(stubs, {**_base_env(stubs), "PREPARE_DB_EXIT": "3"})
    assert run.returncode == 3
    assert len(run.calls("python")) == 1
    assert run.calls("mlflow") == []


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("POSTGRES_HOST", "POSTGRES_HOST must name the Postgres host"),
        ("POSTGRES_DB", "POSTGRES_DB must name the tracking database"),
        ("POSTGRES_USER", "POSTGRES_USER must name the database user"),
        ("POSTGRES_PASSWORD_FILE", "POSTGRES_PASSWORD_FILE must point at the password file"),
    ],
)
def test_each_missing_variable_is_named(stubs: Path, variable: str, message: str) -> None:
    env = _base_env(stubs)
    del env[variable]
    run = _run(stubs, env)
    assert run.returncode != 0
    assert message in run.stderr
    assert run.calls("python") == []
    assert run.calls("mlflow") == []


def test_auth_without_the_flask_secret_is_refused(stubs: Path) -> None:
    env = {**_base_env(stubs), "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": _secret_file(stubs, "admin", "Admin456")}
    run = _run(stubs, env)
    assert run.returncode != 0
    assert "basic auth needs MLFLOW_FLASK_SERVER_SECRET_KEY_FILE" in run.stderr
    assert run.calls("python") == []
    assert run.calls("mlflow") == []


def test_an_unreadable_password_file_stops_the_start(stubs: Path) -> None:
    env = {**_base_env(stubs), "POSTGRES_PASSWORD_FILE": str(stubs / "missing")}
    run = _run(stubs, env)
    assert run.returncode != 0
    assert f"POSTGRES_PASSWORD_FILE ({stubs}/missing) is not a readable file" in run.stderr
    assert run.calls("python") == []
    assert run.calls("mlflow") == []
