"""Readers of what the engine hands a policy: resource inputs, list items, URNs and the pack config.

Every rule reads the engine's values through these, so an unknown value is handled in one place and the
same way everywhere. Names with a leading underscore are the pack's own: its modules share them, nothing
outside policy/ but its tests should use them.

What the engine hands a policy, as read from pulumi-policy 1.21.0's source:

- Properties come with the provider's camelCase names (`ports[].internal`,
  `healthcheck.tests`, `networksAdvanced`, ...), numbers as floats, wrapped in
  proxies that raise `UnknownValueError` on a value `pulumi preview` cannot know
  yet (one computed from a resource still to be created). The rules read such
  values through `_field`/`_entries`, so an unknown value is skipped or judged
  explicitly, never a crash that the SDK would downgrade to an advisory note.
- Secrets arrive unwrapped: a policy cannot tell that a value was secret. The rule
  on generated secrets (rules_secrets.py) therefore compares values against the outputs
  of the resources that generate secrets, and follows the property dependencies the
  engine records (which name those resources even while their values are unknown).
- Resource options carry `protect` but not `retainOnDelete` (`PolicyResourceOptions`
  has no such field), so volume protection is checked through `protect` alone.
- The stack name is not an argument; it is the third field of every URN
  (`urn:pulumi:<stack>::<project>::<type>::<name>`). It decides nothing: every stack
  is shared (authentication and protected volumes required) unless the pack's config
  says `environmentKind: dev`, which `make deploy` and the workflows pass from
  policy/config/<stack>.json, the counterpart of the stack's own `environmentKind`
  (components/settings/). A stack named `production`, `prod-eu` or `Prod` is shared.
- The stack config is not visible either; the pack config is (`args.get_config()`,
  set with `--policy-pack-config`), per policy: each policy that depends on the
  environment kind declares `environmentKind` in its config schema.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from pulumi_policy import PolicyConfigSchema
from pulumi_policy.proxy import UnknownValueError


class _Unknown:
    """A value `pulumi preview` cannot know yet."""

    def __repr__(self) -> str:
        return "<unknown during preview>"


UNKNOWN: Final = _Unknown()


# --- Reading engine properties -------------------------------------------------------------


def _field(props: Any, key: str) -> Any:
    """`props[key]`; None when absent or when `props` is not a mapping; UNKNOWN when not known yet."""
    if not isinstance(props, Mapping):
        return None
    try:
        return props.get(key)
    except UnknownValueError:
        return UNKNOWN


def _entries(value: Any) -> Iterator[tuple[int, Any]]:
    """(index, item) of a list property, an unknown item as UNKNOWN; nothing for absent or non-list values."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return
    for index in range(len(value)):
        try:
            yield index, value[index]
        except UnknownValueError:
            yield index, UNKNOWN


def _strings(props: Any, key: str) -> list[str]:
    """The known string items of a list property."""
    return [item for _, item in _entries(_field(props, key)) if isinstance(item, str)]


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def labels(props: Any) -> dict[str, str]:
    """A container's, volume's or network's `labels` list as a dict (unknown entries left out)."""
    found: dict[str, str] = {}
    for _, item in _entries(_field(props, "labels")):
        label, value = _field(item, "label"), _field(item, "value")
        if isinstance(label, str) and isinstance(value, str):
            found[label] = value
    return found


def envs(props: Any) -> list[tuple[int, str, str]]:
    """(index, name, value) of every known `NAME=value` entry of a container's `envs`."""
    parsed = []
    for index, entry in _entries(_field(props, "envs")):
        if isinstance(entry, str):
            name, _, value = entry.partition("=")
            parsed.append((index, name, value))
    return parsed


def _strings_within(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, string) of every known string anywhere in a property value: lists, maps, nested.

    `path` starts as the input's name, so it is never empty.
    """
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key in value:
            yield from _strings_within(_field(value, key), f"{path}.{key}")
    else:
        for index, item in _entries(value):
            yield from _strings_within(item, f"{path}[{index}]")


# --- A container's command line ------------------------------------------------------------

# Shells whose `-c` script is a command line of its own: `sh -c "exec mlflow server ..."` runs the server.
SHELLS: Final = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh"})


def _arguments(props: Any) -> list[str]:
    return _strings(props, "entrypoints") + _strings(props, "command")


def _script_words(script: str) -> list[str]:
    try:
        return shlex.split(script)
    except ValueError:  # unbalanced quotes: the shell would refuse it too, but the words still tell
        return script.split()


def _words(props: Any) -> list[str]:
    """The container's arguments, with every argument after a shell's `-c` read as the words of its script."""
    words: list[str] = []
    shell = False
    script_follows = False
    for argument in _arguments(props):
        if script_follows:
            words += _script_words(argument)
            continue
        words.append(argument)
        if posixpath.basename(argument) in SHELLS:
            shell = True
        # -c alone or in a cluster of short options (`-ec`, `-euc`); what follows is the script and its $0, $1...
        elif shell and re.fullmatch(r"-[a-z]*c[a-z]*", argument):
            script_follows = True
    return words


# --- Where a container is reachable --------------------------------------------------------


def _is_loopback(address: Any) -> bool:
    """Only a known loopback address is; an absent address is Docker's default, every interface."""
    if not isinstance(address, str) or not address:
        return False
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def public_bindings(props: Any) -> list[str]:
    """Where a container is reachable from beyond the Docker host: published ports and host networking."""
    found = []
    for index, port in _entries(_field(props, "ports")):
        if port is UNKNOWN:
            found.append(f"ports[{index}] (not known during preview)")
            continue
        address = _field(port, "ip")
        if not _is_loopback(address):
            shown = address if isinstance(address, str) and address else "0.0.0.0 (Docker's default)"
            found.append(f"{shown}:{_number(_field(port, 'external'))} -> {_number(_field(port, 'internal'))}")
    if _field(props, "networkMode") == "host":
        found.append("the host network (every port it listens on)")
    if _field(props, "publishAllPorts") is True:
        found.append("publishAllPorts (every port the image exposes, on every interface)")
    return found


def _published_ports(props: Any) -> list[str]:
    """Everything a container publishes on the Docker host, loopback included."""
    found = [f"ports[{index}]" for index, _ in _entries(_field(props, "ports"))]
    if _field(props, "networkMode") == "host":
        found.append("the host network")
    if _field(props, "publishAllPorts") is True:
        found.append("publishAllPorts")
    return found


# --- The stack and the pack config ---------------------------------------------------------

# The pack config key that marks one person's dev stack (components/settings/: `environmentKind`;
# the pack runs in its own virtualenv and cannot import the program). Absent means shared.
ENVIRONMENT_KIND: Final = "environmentKind"
ENVIRONMENT_KIND_SCHEMA: Final = PolicyConfigSchema(
    properties={ENVIRONMENT_KIND: {"type": "string", "enum": ["dev", "shared"], "default": "shared"}}
)


def stack_of(urn: str) -> str:
    """The stack of a URN: `urn:pulumi:<stack>::<project>::<type>::<name>`."""
    prefix = "urn:pulumi:"
    return urn[len(prefix) :].split("::", 1)[0] if urn.startswith(prefix) else ""


def is_shared(config: Mapping[str, Any]) -> bool:
    """Every stack holds shared data unless the pack config explicitly marks a personal dev stack."""
    return bool(config.get(ENVIRONMENT_KIND, "shared") != "dev")


# Why a stack counts as shared, as the messages of the rules on shared stacks say it.
_SHARED_BECAUSE = (
    "every stack is shared unless the policy pack config sets environmentKind: dev (policy/config/<stack>.json)"
)
