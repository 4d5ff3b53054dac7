"""A guard against CPython's AST recursion-depth bug, installed by tests/conftest.py.

CPython 3.11.0-3.11.7 and 3.12.0-3.12.1 keep one recursion counter per interpreter
for turning a parse tree into `ast` objects, and reset it at the start of every
`ast.parse` (https://github.com/python/cpython/issues/106905, fixed in 3.11.8 and
3.12.2). When a garbage collection runs in the middle of a parse and a finalizer or
GC callback parses too (3.11's traceback module parses every source line it prints
to place its carets, and an asyncio future dropped with an exception logs its
traceback from its finalizer), or another thread parses while the first is paused,
the outer parse ends with a counter it did not start from and raises
`SystemError: AST constructor recursion depth mismatch`.

pytest parses source to show every failure, so a run of failing end-to-end tests
(whose deployments leave many such futures for the collector) ended in a pytest
INTERNALERROR instead of a report. On the affected versions, `install()` makes each
`ast.parse` run alone (a process-wide lock) and without automatic garbage
collection, so neither kind of nesting can happen. Fixed interpreters are left alone.
"""

from __future__ import annotations

import ast
import gc
import sys
import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.RLock()


def affected(version: tuple[int, int, int] | None = None) -> bool:
    major, minor, micro = version or sys.version_info[:3]
    return ((major, minor) == (3, 11) and micro < 8) or ((major, minor) == (3, 12) and micro < 2)


def guarded(parse: Callable[..., Any]) -> Callable[..., Any]:
    """`parse`, run under the lock with automatic collection off for its duration."""

    def guarded_parse(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            collecting = gc.isenabled()
            gc.disable()
            try:
                return parse(*args, **kwargs)
            finally:
                if collecting:
                    gc.enable()

    guarded_parse.__wrapped__ = parse  # type: ignore[attr-defined]
    guarded_parse.__doc__ = parse.__doc__
    return guarded_parse


def install() -> None:
    if affected() and not hasattr(ast.parse, "__wrapped__"):
        ast.parse = guarded(ast.parse)
