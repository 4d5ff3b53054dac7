"""An upgrade replaces nothing: every resource of tests/golden/ is still declared, the same.

The golden files were written before the redesign moved any code (tests/golden.py).
Each old resource must still exist under the URN the engine knows it by, or carry an
alias to it; and what it declares (inputs, options, dependencies) must be unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.golden import CASES, declared, load

_STACK_TYPE = "pulumi:pulumi:Stack"


def engine_urns(records: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Mock URN -> the URN the engine gives it: the mocks name only the parent's type,
    the engine the whole chain of types from the stack down, so a grandparent whose type
    changes shows only here."""

    def chain(urn: str) -> list[str]:
        record = records.get(urn)
        if record is None:
            return [_STACK_TYPE]
        return [*chain(record["parent"]), record["type"]]

    found = {}
    for urn, record in records.items():
        stack_project = urn.split("::", 3)[:2]
        types = [*chain(record["parent"])[1:], record["type"]]
        found[urn] = "::".join([*stack_project, "$".join([_STACK_TYPE, *types]) if types else _STACK_TYPE]) + (
            f"::{record['name']}"
        )
    return found


def upgrade_problems(
    old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], aliases: dict[str, list[str]]
) -> list[str]:
    """What `pulumi up` from the old declarations to the new would delete, recreate or change."""
    old_engine, new_engine = engine_urns(old), engine_urns(new)
    engine_to_new = {engine: urn for urn, engine in new_engine.items()}
    # An alias names the old mock URN; it also covers the engine URN of that old resource.
    aliased = {alias: urn for urn, names in aliases.items() for alias in names}
    problems: list[str] = []
    matched: dict[str, str] = {}
    for urn in old:
        now = engine_to_new.get(old_engine[urn]) or aliased.get(urn)
        if now is None:
            problems.append(f"{old_engine[urn]}: no longer declared and not aliased (would be deleted)")
            continue
        matched[urn] = now
    # New URN -> old, to read the new declarations' parents and dependencies in the old names.
    as_old = {new_urn: old_urn for old_urn, new_urn in matched.items()}
    for old_urn, new_urn in matched.items():
        before, after = dict(old[old_urn]), dict(new[new_urn])
        if old_urn != new_urn:
            # Identity moved under an alias: compare what it declares, not where it sits.
            for key in ("type", "name", "parent"):
                before.pop(key), after.pop(key)
        else:
            after["parent"] = as_old.get(after["parent"], after["parent"])
        before["dependencies"] = sorted(before["dependencies"])
        after["dependencies"] = sorted(as_old.get(dependency, dependency) for dependency in after["dependencies"])
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                problems.append(f"{old_engine[old_urn]}: {key} changed")
    for urn in sorted(set(new) - set(matched.values())):
        problems.append(f"{new_engine[urn]}: new, not in the golden file")
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


def test_a_renamed_resource_without_an_alias_is_reported_and_with_one_is_not() -> None:
    old = load("prod")
    [urn] = [urn for urn, record in old.items() if record["name"] == "mlflow-postgres-data"]
    new, new_urn = _renamed(old, urn, "mlflow-postgres-volume")
    engine = engine_urns(old)[urn]
    assert upgrade_problems(old, new, {}) == [
        f"{engine}: no longer declared and not aliased (would be deleted)",
        f"{engine.rsplit('::', 1)[0]}::mlflow-postgres-volume: new, not in the golden file",
    ]
    assert upgrade_problems(old, new, {new_urn: [urn]}) == []


def test_a_changed_input_or_option_is_reported() -> None:
    old = load("prod")
    [urn] = [urn for urn, record in old.items() if record["name"] == "mlflow-postgres-container"]
    new = {key: dict(value) for key, value in old.items()}
    new[urn]["inputs"] = {**new[urn]["inputs"], "user": "0:0"}
    new[urn]["delete_before_replace"] = False
    engine = engine_urns(old)[urn]
    assert upgrade_problems(old, new, {}) == [f"{engine}: delete_before_replace changed", f"{engine}: inputs changed"]


def test_a_grandparent_whose_type_changed_is_reported_though_the_mock_urn_is_the_same() -> None:
    old = load("prod")
    new = {key: dict(value) for key, value in old.items()}
    [platform] = [urn for urn, record in old.items() if record["type"] == "mlflow-platform:stack:MlflowPlatform"]
    new[platform]["type"] = "mlflow-platform:stack:Renamed"
    problems = upgrade_problems(old, new, {})
    # The platform and every resource below it get a new engine URN: each is reported.
    assert len([p for p in problems if "would be deleted" in p]) == len(old)
    assert engine_urns(old)[platform].endswith("MlflowPlatform::mlflow")
