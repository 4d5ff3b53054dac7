"""The program as `pulumi up` runs it: what __main__.py exports in each stack and tlsMode, and the harness
that runs it under mocks (one shared run per configuration, stack files read afresh)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import harness
from tests.conftest import TLS_SELF_SIGNED_CERT
from tests.expected import CONFIGURATIONS, DB_PASSWORD, SecretOf, docker_name, mode_overrides, network_name, resolve
from tests.harness import EngineMocks, declaration

PUBLIC_HOSTS = {"staging": "mlflow.staging.example.internal", "prod": "mlflow.example.internal"}


def _exports(stack: str, mode: str, mocks: EngineMocks) -> dict[str, Any]:
    """Every stack output: the dev stack's, and what a shared stack (auth, TLS) adds or changes."""
    password = resolve(DB_PASSWORD, mocks)
    exports: dict[str, Any] = {
        "tracking_uri": "http://localhost:5000",
        "backend_store_uri": f"postgresql+psycopg://mlflow:{password}@postgres:5432/mlflow",
        "network_name": network_name(stack),
        "postgres_volume_name": docker_name(stack, "pgdata"),
        "artifacts_volume_name": docker_name(stack, "artifacts"),
        "postgres_container_name": docker_name(stack, "postgres"),
        "mlflow_container_name": docker_name(stack, "mlflow"),
        "mlflow_image_name": f"mlflow-platform/mlflow:3.17.2-{stack}",
        "backup_container_name": docker_name(stack, "backup"),
        "backups_volume_name": docker_name(stack, "backups"),
        "gc_container_name": docker_name(stack, "gc"),
        "mlflow_version": "3.17.2",
        "auth_enabled": False,
        "engine": "standalone",
    }
    if stack == "dev":
        return exports
    exports |= {
        "tracking_uri": f"https://{PUBLIC_HOSTS[stack]}",
        "auth_enabled": True,
        "tls_mode": mode,
        "proxy_container_name": docker_name(stack, "proxy"),
        "proxy_volume_name": docker_name(stack, "proxy-data"),
        "admin_username": "admin",
        "admin_password": resolve(SecretOf("server-admin-password"), mocks),
    }
    if mode == "internal":
        # Public: clients trust it with MLFLOW_TRACKING_SERVER_CERT_PATH.
        exports["ca_certificate"] = mocks.one(TLS_SELF_SIGNED_CERT, "ca-root").outputs["certPem"]
    return exports


@pytest.mark.parametrize(("stack", "mode"), CONFIGURATIONS)
def test_the_stack_outputs(stack: str, mode: str) -> None:
    found = declaration(stack, mode_overrides(mode))
    assert found.values == _exports(stack, mode, found.mocks)
    # The database URI carries the password, the admin's password is one: both stay secret.
    assert found.secret_outputs == (
        {"backend_store_uri"} if stack == "dev" else {"backend_store_uri", "admin_password"}
    )


def test_declarations_are_shared_except_in_mutmuts_stats_run(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []
    run = harness.run_program

    def counted(stack: str, overrides: Any = None, mocks: Any = None) -> Any:
        runs.append(stack)
        return run(stack, overrides, mocks)

    monkeypatch.setattr(harness, "run_program", counted)
    # As in a plain test run (under a mutant, mutmut's trampolines keep their own copy of the name).
    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    first = declaration("dev", {"hostPort": 5077})
    before = len(runs)
    second = declaration("dev", {"hostPort": 5077})
    assert len(runs) == before
    # Each caller gets its own copy.
    assert first.mocks is not second.mocks
    assert first.values == second.values
    # mutmut maps functions to the tests that call them: in its stats run every test runs the program.
    monkeypatch.setenv("MUTANT_UNDER_TEST", "stats")
    declaration("dev", {"hostPort": 5077})
    declaration("dev", {"hostPort": 5077})
    assert len(runs) == before + 2


def test_a_stack_file_edited_between_reads_is_read_again_and_each_read_is_a_copy(tmp_path: Any) -> None:
    from tools import stack_config

    path = tmp_path / "Pulumi.t.yaml"
    path.write_text("config:\n  a: 1\n", encoding="utf-8")
    first = stack_config._load_yaml(path)
    first["config"]["a"] = 99
    assert stack_config._load_yaml(path) == {"config": {"a": 1}}
    path.write_text("config:\n  a: 2\n  b: 3\n", encoding="utf-8")
    assert stack_config._load_yaml(path) == {"config": {"a": 2, "b": 3}}
