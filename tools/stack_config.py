"""A stack's configuration as the Pulumi CLI hands it to the program.

The CLI merges the defaults declared in Pulumi.yaml's `config:` block with the
stack file (Pulumi.<stack>.yaml) and passes every value to the program as a
string under `<project>:<key>`. Tests and the local deployer use this module so
they see exactly the configuration `pulumi up` would, from the same files.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
STACKS = ("dev", "staging", "prod")


def _load_yaml(path: Path) -> dict[str, Any]:
    # A fresh copy each time: callers may change what they get.
    stat = path.stat()
    return copy.deepcopy(_parsed_yaml(path, stat.st_mtime_ns, stat.st_size))


@functools.cache
def _parsed_yaml(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    # Every test under mocks reads Pulumi.yaml several times; parsing it each time was
    # most of the fast suite's run time, and of each mutant's in `make mutation`.
    # The key includes the file's mtime and size, so an edited file is read again.
    del mtime_ns, size
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as handle:
        loaded = yaml.load(handle, Loader=loader) or {}  # noqa: S506 - a safe loader
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} does not hold a mapping")
    return loaded


def project_file() -> dict[str, Any]:
    return _load_yaml(PROJECT_DIR / "Pulumi.yaml")


def project_name() -> str:
    return str(project_file()["name"])


def stack_config(stack: str, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """Short key -> typed value: Pulumi.yaml defaults, then the stack file, then overrides."""
    name = project_name()
    values: dict[str, object] = {
        key: declaration["default"]
        for key, declaration in project_file().get("config", {}).items()
        if "default" in declaration
    }
    stack_path = PROJECT_DIR / f"Pulumi.{stack}.yaml"
    if stack_path.exists():
        for key, value in (_load_yaml(stack_path).get("config") or {}).items():
            namespace, _, short = str(key).partition(":")
            if namespace != name or not short:
                raise ValueError(f"{stack_path}: key {key!r} is not in the {name!r} namespace")
            values[short] = value
    values.update(overrides or {})
    return values


def _as_cli_string(value: object) -> str:
    # The CLI passes strings as-is, booleans as "true"/"false", everything else as JSON.
    if isinstance(value, str):
        return value
    return json.dumps(value)


def runtime_config(config: Mapping[str, object]) -> dict[str, str]:
    """`<project>:<key>` -> string, the shape `pulumi.runtime.set_all_config` takes."""
    name = project_name()
    return {f"{name}:{key}": _as_cli_string(value) for key, value in config.items()}
