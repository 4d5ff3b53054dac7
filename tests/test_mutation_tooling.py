"""tests/mutation.py's bookkeeping, on a small mutants/ tree written here (no mutmut run)."""

from __future__ import annotations

import json
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests import mutation
from tests.mutation import Equivalent, MutationKey

# A file as mutmut 3 writes it into mutants/: each mutated function's unmutated copy
# (`__mutmut_orig`) beside its numbered mutants, a method's names prefixed `xǁClassǁ`.
# (The trampolines mutmut also writes are left out: only the copies are read.)
GENERATED = textwrap.dedent(
    '''
    import re


    def x_pin_problem__mutmut_orig(reference: str, limit: int = 1) -> str | None:
        """A docstring."""
        if reference.startswith("sha256:") or "@" in reference:
            return None
        return reference.rsplit("/", limit)[-1]


    def x_pin_problem__mutmut_1(reference: str, limit: int = 1) -> str | None:
        """A docstring."""
        if reference.startswith("sha256:") and "@" in reference:
            return None
        return reference.rsplit("/", limit)[-1]


    def x_pin_problem__mutmut_2(reference: str, limit: int = 2) -> str | None:
        """A docstring."""
        if reference.startswith("sha256:") or "@" in reference:
            return None
        return reference.rsplit("/", limit)[-1]


    def x_notify__mutmut_orig(report, message):
        report(
            message,
            None,
        )


    def x_notify__mutmut_1(report, message):
        report(
            message,
        )


    class _Unknown:
        def __repr__(self) -> str:
            return "<unknown>"

        def xǁ_Unknownǁ__repr____mutmut_orig(self) -> str:
            return "<unknown>"

        def xǁ_Unknownǁ__repr____mutmut_1(self) -> str:
            return "XX<unknown>XX"
    '''
)
NAMES = {
    "pkg.rules.x_pin_problem__mutmut_1": 0,
    "pkg.rules.x_pin_problem__mutmut_2": 1,
    "pkg.rules.x_notify__mutmut_1": 0,
    "pkg.rules.xǁ_Unknownǁ__repr____mutmut_1": 0,
}
OR_TO_AND = MutationKey(
    "pin_problem",
    'if reference.startswith("sha256:") or "@" in reference:',
    'if reference.startswith("sha256:") and "@" in reference:',
)
REPR = MutationKey("_Unknown.__repr__", 'return "<unknown>"', 'return "XX<unknown>XX"')


def _write_mutants(root: Path, module: str = "pkg/rules.py", names: Mapping[str, int | None] = NAMES) -> Path:
    """A mutants/ tree with one mutated file and the .meta mutmut writes beside it."""
    generated = root / "mutants" / module
    generated.parent.mkdir(parents=True, exist_ok=True)
    generated.write_text(GENERATED, encoding="utf-8")
    generated.with_name(generated.name + ".meta").write_text(
        json.dumps({"exit_code_by_key": names, "durations_by_key": {}}), encoding="utf-8"
    )
    return root / "mutants"


def _codes(keys: Mapping[str, MutationKey], *survivors: str) -> dict[str, int | None]:
    """mutmut's result for each mutant: killed (1) but the survivors (0)."""
    return {name: 0 if name in survivors else 1 for name in keys}


def _write_equivalents(path: Path, *entries: tuple[MutationKey, str]) -> list[Equivalent]:
    path.write_text("\n".join(mutation.format_entry(key, reason) for key, reason in entries), encoding="utf-8")
    return mutation.equivalents(path)


def test_each_mutant_is_keyed_by_its_function_and_changed_lines(tmp_path: Path) -> None:
    keys = mutation.mutant_keys(_write_mutants(tmp_path))

    assert keys == {
        "pkg.rules.x_pin_problem__mutmut_1": OR_TO_AND,
        # The `def` line compares under the function's own name, not the generated one.
        "pkg.rules.x_pin_problem__mutmut_2": MutationKey(
            "pin_problem",
            "def pin_problem(reference: str, limit: int = 1) -> str | None:",
            "def pin_problem(reference: str, limit: int = 2) -> str | None:",
        ),
        # A mutation across lines: the lines it removed, none added.
        "pkg.rules.x_notify__mutmut_1": MutationKey("notify", "None,", ""),
        "pkg.rules.xǁ_Unknownǁ__repr____mutmut_1": REPR,
    }


def test_the_key_ignores_the_module_and_the_number(tmp_path: Path) -> None:
    """The same function moved to another module, its mutants numbered otherwise: the same keys."""
    moved = {"pkg.split.readers.x_pin_problem__mutmut_7": None, "pkg.split.readers.x_pin_problem__mutmut_3": None}
    text = GENERATED.replace("mutmut_1(", "mutmut_7(").replace("mutmut_2(", "mutmut_3(")
    mutants = _write_mutants(tmp_path, "pkg/split/readers.py", moved)
    (mutants / "pkg/split/readers.py").write_text(text, encoding="utf-8")

    keys = mutation.mutant_keys(mutants)

    assert keys["pkg.split.readers.x_pin_problem__mutmut_7"] == OR_TO_AND


def test_changed_lines_are_whitespace_normalised() -> None:
    assert mutation.changed_lines(["    x = f(a,  b)", "    return x"], ["        x = f(a, b, )", "return x"]) == (
        "x = f(a, b)",
        "x = f(a, b, )",
    )


def test_entries_read_back_as_written(tmp_path: Path) -> None:
    """Quotes of both kinds, a backslash and several lines survive the file's TOML."""
    awkward = MutationKey("Class.method", "a = 'x' + \"y\"\nb = '\\\\'", "a = 'x'\nb = None")
    listed = _write_equivalents(tmp_path / "eq.toml", (awkward, "a reason"), (OR_TO_AND, "another"))

    assert listed == [Equivalent(awkward, "a reason"), Equivalent(OR_TO_AND, "another")]


def test_an_entry_written_with_other_whitespace_still_matches(tmp_path: Path) -> None:
    path = tmp_path / "eq.toml"
    path.write_text(
        textwrap.dedent(
            """\
            [[equivalent]]
            function = " pin_problem"
            original = '  if reference.startswith("sha256:")  or "@" in reference:'
            mutated = 'if reference.startswith("sha256:") and "@" in reference:'
            reason = "r"
            """
        ),
        encoding="utf-8",
    )

    assert [entry.key for entry in mutation.equivalents(path)] == [OR_TO_AND]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[equivalent]\n"pkg.x_f__mutmut_1" = "the old format"\n', "[[equivalent]] tables"),
        ('[[equivalent]]\nfunction = "f"\noriginal = "a"\nmutated = "b"\n', "needs exactly the fields"),
        ('[[equivalent]]\nfunction = "f"\noriginal = "a"\nmutated = "b"\nreason = " "\n', "one-line reason"),
        ('[[equivalent]]\nfunction = "f"\noriginal = "a"\nmutated = "a"\nreason = "r"\n', "no change"),
        ('[[equivalent]]\nfunction = "f"\noriginal = "a"\nmutated = "b"\nreason = "r"\n' * 2, "repeats"),
    ],
)
def test_malformed_entries_are_refused(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "eq.toml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(SystemExit, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        mutation.equivalents(path)


def test_a_stale_entry_is_reported_and_fails_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = mutation.mutant_keys(_write_mutants(tmp_path))
    gone = MutationKey("pin_problem", 'if reference.startswith("sha256:"):', "if reference.startswith(None):")
    listed = _write_equivalents(tmp_path / "eq.toml", (OR_TO_AND, "or/and"), (REPR, "repr"), (gone, "old code"))
    codes = _codes(keys, "pkg.rules.x_pin_problem__mutmut_1", "pkg.rules.xǁ_Unknownǁ__repr____mutmut_1")

    assert mutation.stale_entries(listed, keys) == ([listed[2]], [])
    assert mutation.score(codes, listed, keys) == 1
    printed = capsys.readouterr().out
    assert f"stale entry in {mutation.EQUIVALENTS_FILE.name}: no mutant {gone.describe()}" in printed
    # Everything else meets the target: the two survivors are the listed equivalents.
    assert "mutation score: 100.0% (2 killed, 0 of them by timeout, of 2; 4 mutants ran, 2 listed equivalent)" in (
        printed
    )
    assert "1 stale entries" in printed


def test_without_stale_entries_the_score_decides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = mutation.mutant_keys(_write_mutants(tmp_path))
    listed = _write_equivalents(tmp_path / "eq.toml", (OR_TO_AND, "or/and"), (REPR, "repr"))
    codes = _codes(keys, "pkg.rules.x_pin_problem__mutmut_1", "pkg.rules.xǁ_Unknownǁ__repr____mutmut_1")

    assert mutation.score(codes, listed, keys) == 0
    assert "stale" not in capsys.readouterr().out


def test_a_restricted_run_fails_only_on_stale_entries_of_its_functions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = mutation.mutant_keys(_write_mutants(tmp_path))
    elsewhere = MutationKey("pin_problem", "return None", "return ''")
    listed = _write_equivalents(tmp_path / "eq.toml", (REPR, "repr"), (elsewhere, "not in this run"))
    not_pin_problem = {"pkg.rules.xǁ_Unknownǁ__repr____mutmut_1": 0, "pkg.rules.x_notify__mutmut_1": 1}

    assert mutation.stale_entries(listed, keys, {"_Unknown.__repr__", "notify"}) == ([], [listed[1]])
    assert mutation.score(not_pin_problem, listed, keys, restricted=True) == 0
    assert f"not checked (outside this run's functions; a full run fails on it): {elsewhere.describe()}" in (
        capsys.readouterr().out
    )
    # A run that reached pin_problem checks the entry.
    assert mutation.score({"pkg.rules.x_pin_problem__mutmut_2": 1}, listed, keys, restricted=True) == 1


def test_the_equivalents_file_reads() -> None:
    """tests/mutation-equivalents.toml is in the current format, each entry with its reason."""
    listed = mutation.equivalents()

    assert listed
    assert len(listed) == len(tomllib.loads(mutation.EQUIVALENTS_FILE.read_text(encoding="utf-8"))["equivalent"])
