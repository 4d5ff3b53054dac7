"""Generated secrets: one place decides how they are made and when they rotate."""

from __future__ import annotations

import pulumi
import pulumi_random as random


def rotation_keepers(rotation: str) -> dict[str, str] | None:
    """`keepers` of every generated secret: a new `secretsRotation` value replaces them all.

    Empty (the default) declares no keepers, so stacks made before the key existed keep
    their secrets; any other value, and any later change of it, generates new ones.
    """
    return {"secretsRotation": rotation} if rotation else None


def generated_password(
    name: str, length: int, rotation: str, opts: pulumi.ResourceOptions, *, mixed: bool = True
) -> random.RandomPassword:
    """Letters and digits only: the value goes into URIs and config files, and 32
    alphanumerics are already ~190 bits. `mixed` requires one of each class."""
    minimum = 1 if mixed else None
    return random.RandomPassword(
        name,
        length=length,
        special=False,
        min_lower=minimum,
        min_upper=minimum,
        min_numeric=minimum,
        keepers=rotation_keepers(rotation),
        opts=opts,
    )
