"""terraform-provider-random's RandomPassword and RandomString, from the `secrets` module."""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from typing import Any

import pulumi

from tools.local_deploy.inputs import whole
from tools.local_deploy.session import Session
from tools.mocks import secret

# terraform-provider-random's character classes (random_password / random_string).
_NUMERIC = string.digits
_LOWER = string.ascii_lowercase
_UPPER = string.ascii_uppercase
_DEFAULT_SPECIAL = "!@#$%&*()-_=+[]{}<>:?"


def _flag(inputs: Mapping[str, Any], key: str) -> bool:
    value = inputs.get(key)
    return True if value is None else bool(value)


def generate_random(inputs: Mapping[str, Any]) -> str:
    """A value as terraform-provider-random generates it, from the `secrets` module.

    As in the provider, the min_* characters are drawn first from their own class
    (whether or not that class is otherwise enabled), the rest from every enabled
    class, then the whole is shuffled.
    """
    if inputs.get("length") is None:
        raise ValueError("'length' is required")
    length = whole(inputs, "length", 0)
    special = inputs.get("overrideSpecial") or _DEFAULT_SPECIAL
    minimums = {
        _NUMERIC: whole(inputs, "minNumeric", 0),
        _LOWER: whole(inputs, "minLower", 0),
        _UPPER: whole(inputs, "minUpper", 0),
        special: whole(inputs, "minSpecial", 0),
    }
    if length < 1 or any(count < 0 for count in minimums.values()):
        raise ValueError(f"'length' must be at least 1 and every min_* at least 0, got {dict(inputs)!r}")
    if sum(minimums.values()) > length:
        raise ValueError(f"'length' ({length}) is less than the sum of the min_* values ({sum(minimums.values())})")
    alphabet = "".join(
        chars
        for chars, enabled in (
            (_UPPER, _flag(inputs, "upper")),
            (_LOWER, _flag(inputs, "lower")),
            (_NUMERIC, _flag(inputs, "numeric")),
            (special, _flag(inputs, "special")),
        )
        if enabled
    )
    chosen = [secrets.choice(chars) for chars, count in minimums.items() for _ in range(count)]
    remaining = length - len(chosen)
    if remaining and not alphabet:
        raise ValueError("every character class is disabled, so nothing can fill the remaining length")
    chosen += [secrets.choice(alphabet) for _ in range(remaining)]
    secrets.SystemRandom().shuffle(chosen)
    return "".join(chosen)


def realise_random(
    session: Session, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A RandomPassword or RandomString: its value is kept in the state file while its inputs stay."""
    key = session.options(args).get("urn") or f"{args.typ}::{args.name}"
    recorded = session.state["random"].get(key)
    # As in Pulumi state: the same inputs keep the value; changed inputs replace it.
    if recorded is not None and recorded.get("inputs") == inputs:
        value = recorded["result"]
    else:
        value = generate_random(inputs)
        session.update_state(lambda state: state["random"].__setitem__(key, {"inputs": inputs, "result": value}))
        session.event("generated", args.name)
    return "none", {"result": secret(value)}
