"""The part of Pulumi's state that must survive between runs: generated values and what `down` removes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tools.stack_config import PROJECT_DIR

# Gitignored (.build/): generated passwords and what `down` must remove.
STATE_DIR = PROJECT_DIR / ".build" / "local-deploy"


def state_path(stack: str) -> Path:
    return STATE_DIR / f"{stack}.json"


def load_state(stack: str) -> dict[str, Any]:
    path = state_path(stack)
    if not path.exists():
        return {"random": {}}
    state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    state.setdefault("random", {})
    return state


def save_state(stack: str, state: Mapping[str, Any]) -> None:
    """Written 0600 in a 0700 directory: it holds the stack's passwords."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_DIR.chmod(0o700)
    path = state_path(stack)
    partial = path.with_suffix(".json.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
    partial.replace(path)
