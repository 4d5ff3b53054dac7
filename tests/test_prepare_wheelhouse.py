"""tools/local_deploy/prepare.py: a wheelhouse counts as ready only when every locked wheel is in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.local_deploy import prepare

LOCK = """\
prometheus-client==0.26.0 \\
    --hash=sha256:00
pywin32==312 ; sys_platform == 'win32' \\
    --hash=sha256:11
Typing_Extensions==4.15.0 \\
    --hash=sha256:22
"""
PROBE = {"version": "3.11", "full_version": "3.11.2"}


@pytest.fixture
def wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "9.9.9.txt").write_text(LOCK)
    (tmp_path / "wheels").mkdir()
    monkeypatch.setattr(prepare, "LOCKS_DIR", tmp_path / "locks")
    monkeypatch.setattr(prepare, "WHEELHOUSE_DIR", tmp_path / "wheels")
    return tmp_path / "wheels"


def test_a_missing_locked_wheel_is_named(wheelhouse: Path) -> None:
    (wheelhouse / "typing_extensions-4.15.0-py3-none-any.whl").touch()
    # pywin32 is for Windows only: its marker leaves it out.
    assert prepare._missing_wheels("9.9.9", PROBE) == ["prometheus-client==0.26.0"]


def test_every_locked_wheel_present_is_complete(wheelhouse: Path) -> None:
    (wheelhouse / "typing_extensions-4.15.0-py3-none-any.whl").touch()
    (wheelhouse / "prometheus_client-0.26.0-py3-none-any.whl").touch()
    assert prepare._missing_wheels("9.9.9", PROBE) == []


def test_another_version_of_the_wheel_does_not_count(wheelhouse: Path) -> None:
    (wheelhouse / "typing_extensions-4.15.0-py3-none-any.whl").touch()
    (wheelhouse / "prometheus_client-0.25.0-py3-none-any.whl").touch()
    assert prepare._missing_wheels("9.9.9", PROBE) == ["prometheus-client==0.26.0"]
