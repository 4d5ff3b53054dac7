"""The image's build files keep the promises the program and the tests rely on."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_requirements_locks import lock_problems
from tools.stack_config import PROJECT_DIR, stack_config

DOCKERFILE = (PROJECT_DIR / "mlflow" / "Dockerfile").read_text(encoding="utf-8")
ENTRYPOINT = (PROJECT_DIR / "mlflow" / "entrypoint.sh").read_text(encoding="utf-8")


def _pin(path: Path, package: str) -> str:
    # A plain pin, or a hash-locked one (`name==1.2.3 \\` followed by its --hash lines).
    pattern = rf"^{re.escape(package)}==([^\s;\\]+)(?:\s*\\)?$"
    match = re.search(pattern, path.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{package} is not pinned exactly in {path.name}"
    return match.group(1)


def test_one_mlflow_version_everywhere() -> None:
    configured = stack_config("dev")["mlflowVersion"]
    dockerfile_default = re.search(r"^ARG MLFLOW_VERSION=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert dockerfile_default
    assert dockerfile_default.group(1) == configured
    # The end-to-end client talks to the server it was pinned beside.
    assert _pin(PROJECT_DIR / "requirements-dev.txt", "mlflow") == configured


def test_requirements_pin_mlflow_and_the_driver_the_uri_names() -> None:
    requirements = (PROJECT_DIR / "mlflow" / "requirements.txt").read_text(encoding="utf-8")
    assert "mlflow[auth]==${MLFLOW_VERSION}" in requirements.splitlines()
    assert re.search(r"^psycopg\[binary\]==3\.\d+\.\d+$", requirements, re.MULTILINE)
    assert "postgresql+psycopg://" in ENTRYPOINT


def test_none_of_the_chapters_defects() -> None:
    assert "777" not in DOCKERFILE
    assert "--default-artifact-root" not in DOCKERFILE + ENTRYPOINT
    # Exec-form CMD/ENTRYPOINT never expand variables.
    for line in DOCKERFILE.splitlines():
        if line.startswith(("CMD [", "ENTRYPOINT [")):
            assert "$" not in line, line
    assert not re.search(r"^ENV .*(PASSWORD|SECRET)", DOCKERFILE, re.MULTILINE | re.IGNORECASE)
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.MULTILINE)
    healthcheck = DOCKERFILE[DOCKERFILE.index("HEALTHCHECK") :].split("\n", 2)[1]
    assert healthcheck.strip().startswith('CMD ["python", "-c"'), "the probe needs no curl"


def test_entrypoint_is_strict_and_execs_the_server() -> None:
    lines = ENTRYPOINT.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -eu" in lines
    assert lines[-1] == 'exec mlflow server "$@"'


def test_the_default_release_is_locked() -> None:
    configured = str(stack_config("dev")["mlflowVersion"])
    lock = PROJECT_DIR / "mlflow" / "locks" / f"{configured}.txt"
    assert lock.is_file(), f"no lock for the default MLflow release {configured}"
    assert _pin(lock, "mlflow") == configured
    requirements = PROJECT_DIR / "mlflow" / "requirements.txt"
    assert _pin(lock, "psycopg") == re.sub(r"^psycopg\[binary\]==", "", _driver_line(requirements))
    # Every line an exact pin with its hashes.
    _, problems = lock_problems(lock.read_text(encoding="utf-8"))
    assert problems == []


def _driver_line(requirements: Path) -> str:
    [line] = [line for line in requirements.read_text(encoding="utf-8").splitlines() if line.startswith("psycopg")]
    return line


def test_the_backup_script_reads_the_schema_comment_prepare_db_writes() -> None:
    # The backup manifest names the release of the data from this comment; a prefix that
    # drifted apart would silently fall back to the configured release.
    prepare_db = (PROJECT_DIR / "mlflow" / "prepare_db.py").read_text(encoding="utf-8")
    script = (PROJECT_DIR / "mlflow" / "backup" / "mlflow-backup").read_text(encoding="utf-8")
    prefix = "mlflow-platform: schema written by MLflow "
    assert f'_WRITTEN_BY = "{prefix}"' in prepare_db
    assert f'SCHEMA_WRITER_PREFIX="{prefix}"' in script
