"""mlflow/platform_auth.py: the image's basic-auth app reads its Flask key from a file, in the worker."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from tools.stack_config import PROJECT_DIR


def _load() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("mlflow_platform_auth", PROJECT_DIR / "mlflow" / "platform_auth.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_importing_reads_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # `mlflow server` imports the module (to see whether it is a factory) without a key file.
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY_FILE", raising=False)
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    _load()


def test_the_factory_keys_mlflows_app_from_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "flask-secret-key"
    key_file.write_text("k" * 64 + "\n", encoding="utf-8")
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY_FILE", str(key_file))
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    seen: list[str | None] = []
    fake_auth = types.ModuleType("mlflow.server.auth")

    def create_app() -> str:
        import os

        seen.append(os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"))
        return "the basic-auth app"

    fake_auth.create_app = create_app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow.server.auth", fake_auth)
    assert _load().create_app() == "the basic-auth app"
    assert seen == ["k" * 64]


def test_an_empty_key_file_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "empty"
    key_file.write_text("\n", encoding="utf-8")
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY_FILE", str(key_file))
    with pytest.raises(RuntimeError, match=f"MLFLOW_FLASK_SERVER_SECRET_KEY_FILE \\({key_file}\\) is empty"):
        _load().create_app()


def test_the_real_factory_is_mlflows_basic_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Against the installed MLflow: the app it returns is basic auth's, keyed from the file."""
    key_file = tmp_path / "flask-secret-key"
    key_file.write_text("real-key-" + "x" * 40, encoding="utf-8")
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY_FILE", str(key_file))
    from mlflow.server import auth

    called: list[str] = []

    def create_app() -> str:
        called.append(auth.get_flask_server_secret_key())
        return "app"

    monkeypatch.setattr(auth, "create_app", create_app)
    assert _load().create_app() == "app"
    assert called == ["real-key-" + "x" * 40]
