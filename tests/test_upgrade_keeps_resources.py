"""An upgrade replaces nothing: every resource of tests/golden/ is still declared, the same.

The golden files were written before the redesign moved any code (tests/golden.py).
Each old resource must still exist under the URN the engine knows it by, or carry an
alias to it; and what it declares (inputs, options, dependencies) must be unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.golden import CASES, declared, load


def inherited_aliases(records: dict[str, dict[str, Any]], aliases: dict[str, list[str]]) -> dict[str, list[str]]:
    """URN -> every URN it may have had: its own aliases, and its own type and name under
    each URN its parent may have had (so a moved component takes its children along)."""
    resolved: dict[str, list[str]] = {}

    def of(urn: str) -> list[str]:
        if urn not in resolved:
            record = records[urn]
            parent_aliases = of(record["parent"]) if record["parent"] in records else []
            derived = [f"{alias.rsplit('::', 1)[0]}${record['type']}::{record['name']}" for alias in parent_aliases]
            resolved[urn] = [*aliases.get(urn, []), *derived]
        return resolved[urn]

    for urn in records:
        of(urn)
    return resolved


def upgrade_problems(
    old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], aliases: dict[str, list[str]]
) -> list[str]:
    """What `pulumi up` from the old declarations to the new would delete, recreate or change.

    URNs are the engine's (tools/mocks.py builds them with every ancestor's type), and so
    are the aliases the SDK resolves. A child inherits its parent's aliases: the engine
    derives them (pulumi/pulumi#10819, #12848), so they are derived here the same way.
    """
    aliased = {alias: urn for urn, names in inherited_aliases(new, aliases).items() for alias in names}
    matched: dict[str, str] = {}
    problems: list[str] = []
    for urn in old:
        now = urn if urn in new else aliased.get(urn)
        if now is None:
            problems.append(f"{urn}: no longer declared and not aliased (would be deleted)")
        else:
            matched[urn] = now
    # New URN -> old, to read the new declarations' parents and dependencies in the old names.
    as_old = {new_urn: old_urn for old_urn, new_urn in matched.items()}
    for old_urn, new_urn in matched.items():
        before, after = dict(old[old_urn]), dict(new[new_urn])
        after["parent"] = as_old.get(after["parent"], after["parent"])
        after["dependencies"] = sorted(as_old.get(dependency, dependency) for dependency in after["dependencies"])
        if old_urn != new_urn:
            # Moved under an alias: its place changed on purpose; what it declares must not.
            for key in ("type", "name", "parent"):
                before.pop(key)
                after.pop(key)
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                problems.append(f"{old_urn}: {key} changed")
    for urn in sorted(set(new) - set(matched.values())):
        problems.append(f"{urn}: new, not in the golden file")
    return problems


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_resource_of_the_golden_file_is_kept_unchanged(case: str) -> None:
    new, aliases = declared(case)
    assert upgrade_problems(load(case), new, aliases) == []


def _renamed(records: dict[str, dict[str, Any]], urn: str, name: str) -> tuple[dict[str, dict[str, Any]], str]:
    moved = dict(records)
    record = dict(moved.pop(urn))
    new_urn = urn.rsplit("::", 1)[0] + f"::{name}"
    record["name"] = name
    moved[new_urn] = record
    return moved, new_urn


def _urn_of(records: dict[str, dict[str, Any]], name: str) -> str:
    [urn] = [urn for urn, record in records.items() if record["name"] == name]
    return urn


def test_a_renamed_resource_without_an_alias_is_reported_and_with_one_is_not() -> None:
    old = load("prod")
    urn = _urn_of(old, "mlflow-postgres-data")
    new, new_urn = _renamed(old, urn, "mlflow-postgres-volume")
    assert upgrade_problems(old, new, {}) == [
        f"{urn}: no longer declared and not aliased (would be deleted)",
        f"{new_urn}: new, not in the golden file",
    ]
    assert upgrade_problems(old, new, {new_urn: [urn]}) == []


def test_a_changed_input_or_option_is_reported() -> None:
    old = load("prod")
    urn = _urn_of(old, "mlflow-postgres-container")
    new = {key: dict(value) for key, value in old.items()}
    new[urn]["inputs"] = {**new[urn]["inputs"], "user": "0:0"}
    new[urn]["delete_before_replace"] = False
    assert upgrade_problems(old, new, {}) == [f"{urn}: delete_before_replace changed", f"{urn}: inputs changed"]


def test_urns_name_every_ancestor_type_as_the_engine_does() -> None:
    # The SDK's own mock monitor names only the parent's type: a grandparent whose type
    # changed would then keep its grandchildren's URNs under mocks, but not in the engine.
    urn = _urn_of(load("prod"), "mlflow-ca-key")
    assert urn == (
        "urn:pulumi:prod::mlflow-platform::mlflow-platform:stack:MlflowPlatform$mlflow-platform:proxy:TlsProxy"
        "$mlflow-platform:tls:InternalCa$tls:index/privateKey:PrivateKey::mlflow-ca-key"
    )


def test_the_internal_ca_moved_under_the_proxy_keeps_its_urns_through_aliases() -> None:
    # The root that clients trust must never be replaced: its key and certificate follow
    # the CA's own alias to where the platform declared them.
    new, aliases = declared("prod")
    # prod as the redesign found it, kept for this test: the golden files move on with later changes.
    old = load("prod-before-redesign")
    for name in ("mlflow-ca", "mlflow-ca-key", "mlflow-ca-root"):
        now = _urn_of(new, name)
        assert "mlflow-platform:proxy:TlsProxy$mlflow-platform:tls:InternalCa" in now
        assert _urn_of(old, name) in inherited_aliases(new, aliases)[now]
        # What clients trust is declared as it was: not replaced, not changed.
        before, after = old[_urn_of(old, name)], new[now]
        assert (before["inputs"], before["protect"]) == (after["inputs"], after["protect"])
