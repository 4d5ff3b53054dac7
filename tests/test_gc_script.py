"""mlflow/gc.py's schedule and health check, with time and the gc itself replaced."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tools.stack_config import PROJECT_DIR


class _StopLoopError(Exception):
    """Raised by the fake sleep to end the endless loop."""


@pytest.fixture
def gc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlflow_gc_script", PROJECT_DIR / "mlflow" / "gc.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_HEARTBEAT", tmp_path / "last-success")
    monkeypatch.setattr(module, "_STARTED", tmp_path / "loop-started")
    monkeypatch.setattr(module.time, "time", lambda: 1_000_000.0)
    # The loop's SIGTERM handler belongs in the container, not in the test runner.
    monkeypatch.setattr(module.signal, "signal", lambda *_: None)
    return module


def test_the_loop_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    # As the container's PID 1 the loop would ignore a signal it has no handler for,
    # and `docker stop` would wait out its timeout before killing it.
    env = {**os.environ, "GC_INTERVAL_SECONDS": "86400", "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "mlflow" / "gc.py"), "loop"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    assert "first gc in 600s, then every 86400s" in process.stderr.readline()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert process.stderr.read().endswith("mlflow-gc: stopping on SIGTERM\n")


def test_the_first_gc_waits_ten_minutes_then_runs_every_interval(
    gc: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    sleeps = iter([None, None, _StopLoopError()])

    def sleep(seconds: float) -> None:
        events.append(f"sleep {seconds:g}")
        outcome = next(sleeps)
        if outcome is not None:
            raise outcome

    monkeypatch.setenv("GC_INTERVAL_SECONDS", "86400")
    monkeypatch.setattr(gc.time, "sleep", sleep)
    monkeypatch.setattr(gc, "gc_once", lambda: events.append("gc"))
    with pytest.raises(_StopLoopError):
        gc.loop()
    assert events == ["sleep 600", "gc", "sleep 86400", "gc", "sleep 86400"]


def test_a_short_interval_is_also_the_first_delay(gc: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    def sleep(seconds: float) -> None:
        assert seconds == 300
        raise _StopLoopError

    monkeypatch.setenv("GC_INTERVAL_SECONDS", "300")
    monkeypatch.setattr(gc.time, "sleep", sleep)
    with pytest.raises(_StopLoopError):
        gc.loop()


def test_a_failed_gc_is_retried_after_five_minutes(gc: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            raise _StopLoopError

    def fail() -> None:
        raise RuntimeError("database down")

    monkeypatch.setenv("GC_INTERVAL_SECONDS", "86400")
    monkeypatch.setattr(gc.time, "sleep", sleep)
    monkeypatch.setattr(gc, "gc_once", fail)
    with pytest.raises(_StopLoopError):
        gc.loop()
    assert pauses == [600, 300]


@pytest.mark.parametrize(
    ("started_ago", "succeeded_ago", "healthy"),
    [
        (None, None, False),  # the loop never started
        (0, None, True),  # just started, first gc not due yet
        (7200, None, True),  # both bounds: 2 x 3600 s
        (7201, None, False),  # no gc for twice the interval since start
        (90000, 7200, True),
        (90000, 7201, False),
    ],
)
def test_health_counts_from_the_last_success_or_the_start(
    gc: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    started_ago: int | None,
    succeeded_ago: int | None,
    healthy: bool,
) -> None:
    monkeypatch.setenv("GC_INTERVAL_SECONDS", "3600")
    if started_ago is not None:
        gc._STARTED.write_text(str(1_000_000 - started_ago))
    if succeeded_ago is not None:
        gc._HEARTBEAT.write_text(str(1_000_000 - succeeded_ago))
    assert gc.health() == (0 if healthy else 1)
