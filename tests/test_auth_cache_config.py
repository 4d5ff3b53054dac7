"""The auth cache setting travels from the container's environment into the config MLflow reads."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path
from types import ModuleType

import pytest

from tools.stack_config import PROJECT_DIR


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prepare_db() -> ModuleType:
    # mlflow/prepare_db.py ships inside the image; it is no package here.
    return _load("prepare_db", PROJECT_DIR / "mlflow" / "prepare_db.py")


def _mlflow_auth_config() -> ModuleType:
    """The installed release's mlflow/server/auth/config.py, alone: importing it through its
    package would load the whole auth app, which needs Flask-WTF (mlflow[auth], the image's extra)."""
    mlflow_spec = importlib.util.find_spec("mlflow")
    assert mlflow_spec is not None
    assert mlflow_spec.submodule_search_locations
    package = Path(next(iter(mlflow_spec.submodule_search_locations)))
    return _load("mlflow_auth_config", package / "server" / "auth" / "config.py")


@pytest.mark.parametrize(("env", "expected"), [("45", 45), (None, 0)])
def test_the_installed_mlflow_reads_the_ttl_prepare_db_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, expected: int
) -> None:
    if env is None:
        monkeypatch.delenv("MLFLOW_AUTH_CACHE_TTL_SECONDS", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_AUTH_CACHE_TTL_SECONDS", env)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    # MLflow would take the password from its environment over the file: the file's must be the one read.
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    path = tmp_path / "basic-auth.ini"
    # A percent-encoded URI, as the entrypoint builds it, and a password read from its 0400 file:
    # a '%' in either must survive ConfigParser's interpolation.
    _prepare_db()._write_auth_config(
        str(path), "postgresql+psycopg://mlflow:p%40ss@postgres:5432/mlflow_auth", "adm%in-Pass1"
    )

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    config = _mlflow_auth_config().read_auth_config()
    assert config.auth_cache_ttl_seconds == expected
    assert config.database_uri == "postgresql+psycopg://mlflow:p%40ss@postgres:5432/mlflow_auth"
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    assert config.admin_password == "adm%in-Pass1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
