"""The program under mocks, for the tests: `declaration`, one shared run per configuration.

The mocks themselves (`EngineMocks`, the recording monitor, `run_program`) live in
tools/mocks.py, which the local deployer builds on; they are importable from here too.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from tools.mocks import (
    SECRET_CONFIG_KEYS,
    EngineMocks,
    RecordingMonitor,
    Registration,
    contains_secret,
    install,
    is_secret,
    resolved,
    run_program,
    secret,
    unwrap,
)

__all__ = [
    "SECRET_CONFIG_KEYS",
    "Declaration",
    "EngineMocks",
    "RecordingMonitor",
    "Registration",
    "contains_secret",
    "declaration",
    "install",
    "is_secret",
    "resolved",
    "run_program",
    "secret",
    "unwrap",
]


@dataclass(frozen=True)
class Declaration:
    """What the program declared for one configuration, once every stack output resolved."""

    mocks: EngineMocks
    values: dict[str, Any]
    secret_outputs: frozenset[str]


def declaration(stack: str = "dev", overrides: Mapping[str, object] | None = None) -> Declaration:
    """The program's declarations for a stack, as plain data, for tests that only read them.

    The program runs once per configuration per test session: most tests read the same few
    stacks, and each run under mocks takes a good part of a second. Each caller gets its own
    copy, free to change. A run that raises is not kept: each caller sees the error.

    Except in mutmut's stats run (`make mutation`): it maps each function to the tests that
    call it, and a shared run would credit only the first test, so a mutant of a component
    would run too few tests. Each mutant's own run shares again: all its tests see that mutant.
    """
    key = json.dumps(dict(overrides or {}), sort_keys=True)
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        return _declaration.__wrapped__(stack, key)
    return copy.deepcopy(_declaration(stack, key))


@functools.cache
def _declaration(stack: str, overrides: str) -> Declaration:
    found: list[Declaration] = []

    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        mocks, outputs = run_program(stack, json.loads(overrides))

        def keep(values: dict[str, Any], secret_names: set[str]) -> None:
            found.append(Declaration(mocks, values, frozenset(secret_names)))

        return resolved(outputs, keep)

    run()
    [result] = found
    return result
