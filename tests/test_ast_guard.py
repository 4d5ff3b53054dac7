"""The guard against CPython's AST recursion-depth bug (tests/ast_guard.py) does its job."""

from __future__ import annotations

import ast
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import ast_guard

SOURCE = Path(ast.__file__).read_text(encoding="utf-8")


@pytest.fixture
def reentrant_collections() -> Iterator[None]:
    """Frequent collections whose callback parses, as a finalizer printing a traceback does."""

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            ast.parse("x = [1, 2, 3]\n" * 5)

    threshold = gc.get_threshold()
    gc.callbacks.append(callback)
    gc.set_threshold(10)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(callback)


def _parse_repeatedly(parse: Callable[..., Any]) -> None:
    for _ in range(5):
        parse(SOURCE)


def test_the_bug_is_there_without_the_guard(reentrant_collections: None) -> None:
    unguarded = getattr(ast.parse, "__wrapped__", ast.parse)
    if not ast_guard.affected():
        pytest.skip("this interpreter has CPython's fix (3.11.8+, 3.12.2+)")
    with pytest.raises(SystemError, match="AST constructor recursion depth mismatch"):
        _parse_repeatedly(unguarded)


def test_the_guarded_parse_survives_reentrant_collections(reentrant_collections: None) -> None:
    _parse_repeatedly(ast_guard.guarded(getattr(ast.parse, "__wrapped__", ast.parse)))


def test_the_guard_is_installed_where_needed_and_restores_collection() -> None:
    assert hasattr(ast.parse, "__wrapped__") is ast_guard.affected()
    assert gc.isenabled()
    ast.parse("x = 1")
    assert gc.isenabled()


@pytest.mark.parametrize(
    ("version", "expected"),
    [((3, 11, 7), True), ((3, 11, 8), False), ((3, 12, 1), True), ((3, 12, 2), False), ((3, 13, 0), False)],
)
def test_affected_versions(version: tuple[int, int, int], expected: bool) -> None:
    assert ast_guard.affected(version) is expected
