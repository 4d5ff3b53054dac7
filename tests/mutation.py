"""`make mutation`: mutmut over components/, mlflow/prepare_db.py and policy/, scored.

mutmut (configured in pyproject.toml's [tool.mutmut]) mutates every function of the
code under test and runs, for each mutant, the fast tests that reach it
(`pytest -m "not docker"`, the PostgreSQL tests of prepare_db.py included). This
script starts the one PostgreSQL those tests share for the whole run, runs mutmut,
then scores the result:

    score = killed / (mutants - listed equivalents)

where killed counts mutants a test failed on (a mutant stopped by mutmut's CPU-time limit
is re-run with `pytest -x` to tell a failure from a pass or a hang), and the equivalents
are listed in tests/mutation-equivalents.toml, each with a one-line reason. A
surviving mutant that is not listed is printed; the run fails below the target.

An equivalent is keyed by what the mutation does to the text, not by mutmut's name
for it (which holds the module and a number that shifts when the function changes):
the function's name (`name`, or `Class.name` for a method) and the changed line(s)
before and after, whitespace-normalised. They are read from the mutants/ tree mutmut
generates, where each mutant is a copy of its function (`x_<name>__mutmut_<N>`, a
method's `xǁ<Class>ǁ<name>__mutmut_<N>`) beside the unmutated copy
(`..__mutmut_orig`): the key is the diff of the two. An entry that matches no
mutant is stale and fails the run. A run restricted to some mutants (names, globs,
--sample) checks only the entries of the functions it ran and mentions the others.
`--check-equivalents` generates the mutants of the current code in a temporary
directory (no test runs, about 20 s) and reports stale entries.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.postgres_server import SHARED_ENV, describe, running_postgres
from tools.stack_config import PROJECT_DIR

EQUIVALENTS_FILE = PROJECT_DIR / "tests" / "mutation-equivalents.toml"
MUTANTS_DIR = PROJECT_DIR / "mutants"
TARGET = 0.90
# mutmut's exit codes per mutant: the tests failed (killed), passed (survived), none ran.
_KILLED, _SURVIVED, _NO_TESTS = 1, 0, 33
# Killed by the CPU-time limit (SIGXCPU) or pytest-timeout's alarm: the mutant hung the tests.
_TIMEOUTS = {-24, 24, -14, 14}
# mutmut 3's names for the copies of a function in a generated file.
_MUTANT_MARK, _ORIGINAL_SUFFIX, _CLASS_MARK = "__mutmut_", "__mutmut_orig", "ǁ"
_ENTRY_FIELDS = ("function", "original", "mutated", "reason")


@dataclass(frozen=True, order=True)
class MutationKey:
    """What a mutant does to the text: the function it is in and its changed line(s), whitespace-normalised.

    `original` and `mutated` are the lines the mutation replaced and the lines it put in
    their place (several joined by newlines when the mutation spans lines; empty when it
    only removed or only added lines). Two mutants with the same key are the same mutation.
    """

    function: str
    original: str
    mutated: str

    def describe(self) -> str:
        return f"in {self.function}: `{self.original}` -> `{self.mutated}`"


@dataclass(frozen=True)
class Equivalent:
    key: MutationKey
    reason: str


def equivalents(path: Path = EQUIVALENTS_FILE) -> list[Equivalent]:
    """The listed equivalents (tests/mutation-equivalents.toml): `[[equivalent]]` tables of
    function, original, mutated and a one-line reason."""
    if not path.exists():
        return []
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    tables = document.get("equivalent", [])
    if set(document) - {"equivalent"} or not isinstance(tables, list):
        raise SystemExit(f"{path.name}: equivalents are [[equivalent]] tables (function, original, mutated, reason)")
    found: list[Equivalent] = []
    seen: set[MutationKey] = set()
    for number, table in enumerate(tables, start=1):
        where = f"{path.name}: equivalent #{number}"
        if not isinstance(table, dict):
            raise SystemExit(f"{where} is not a table")
        if set(table) != set(_ENTRY_FIELDS):
            raise SystemExit(f"{where} needs exactly the fields {', '.join(_ENTRY_FIELDS)} (has {', '.join(table)})")
        if not all(isinstance(table[field], str) for field in _ENTRY_FIELDS):
            raise SystemExit(f"{where}: every field is a string")
        key = MutationKey(*(_normalised(table[field]) for field in ("function", "original", "mutated")))
        if not key.function or key.original == key.mutated:
            raise SystemExit(f"{where} names no function or no change")
        if not table["reason"].strip() or "\n" in table["reason"].strip():
            raise SystemExit(f"{where} ({key.function}) needs a one-line reason")
        if key in seen:
            raise SystemExit(f"{where} repeats an earlier entry ({key.describe()})")
        seen.add(key)
        found.append(Equivalent(key, table["reason"]))
    return found


def mutant_keys(mutants_dir: Path = MUTANTS_DIR) -> dict[str, MutationKey]:
    """Mutant name -> its key, for every mutant in a generated mutants/ tree.

    mutmut lists the mutants of each mutated file in the `.meta` file beside it; each one
    is compared with the unmutated copy of its function in that file.
    """
    keys: dict[str, MutationKey] = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        names = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        if not names:
            continue
        generated = meta.with_name(meta.name.removesuffix(".meta"))
        functions = generated_functions(generated.read_text(encoding="utf-8"))
        for name in names:
            mutant = name.rpartition(".")[2]
            mangled = mutant.partition(_MUTANT_MARK)[0]
            try:
                original, mutated = functions[mangled + _ORIGINAL_SUFFIX], functions[mutant]
            except KeyError as missing:
                raise SystemExit(f"{generated}: no function {missing} for {name}: re-generate mutants/") from None
            keys[name] = MutationKey(function_name(mangled), *changed_lines(original, mutated))
    return keys


def function_name(mangled: str) -> str:
    """`x_name` -> `name`; a method's `xǁClassǁname` -> `Class.name`."""
    if mangled.startswith("x" + _CLASS_MARK):
        class_name, _, method = mangled[2:].partition(_CLASS_MARK)
        return f"{class_name}.{method}"
    return mangled.removeprefix("x_")


def generated_functions(source: str) -> dict[str, list[str]]:
    """Each generated copy of a function (`..__mutmut_N`, `..__mutmut_orig`) in a mutated file -> its lines,
    the generated name in its `def` line put back to the function's own, so that only the mutation differs."""
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # as the parser counts lines
    found: dict[str, list[str]] = {}

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _MUTANT_MARK in node.name:
                own_name = function_name(node.name.partition(_MUTANT_MARK)[0]).rpartition(".")[2]
                text = lines[node.lineno - 1 : node.end_lineno]
                text[0] = text[0].replace(node.name, own_name, 1)
                found[node.name] = text

    visit(ast.parse(source).body)
    return found


def changed_lines(original: list[str], mutated: list[str]) -> tuple[str, str]:
    """The lines of `original` that `mutated` replaced, and what replaced them, whitespace-normalised."""
    before, after = [_normalised(line) for line in original], [_normalised(line) for line in mutated]
    removed: list[str] = []
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += before[i1:i2]
            added += after[j1:j2]
    return "\n".join(removed), "\n".join(added)


def _normalised(text: str) -> str:
    """Each line's runs of whitespace made one space, and no space at either end."""
    return "\n".join(" ".join(line.split()) for line in text.split("\n"))


def format_entry(key: MutationKey, reason: str = "") -> str:
    """One [[equivalent]] table of tests/mutation-equivalents.toml."""
    values = {"function": key.function, "original": key.original, "mutated": key.mutated, "reason": reason}
    return "[[equivalent]]\n" + "".join(f"{field} = {_toml_string(values[field])}\n" for field in _ENTRY_FIELDS)


def _toml_string(text: str) -> str:
    """A TOML string as plain as the text allows: "..." without escapes, else '...' (a literal string), else escaped."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    if text.isprintable() and "'" not in text:
        return f"'{text}'"
    return json.dumps(text, ensure_ascii=False)  # JSON's escapes are TOML's


def stale_entries(
    listed: Iterable[Equivalent], keys: dict[str, MutationKey], scope: set[str] | None = None
) -> tuple[list[Equivalent], list[Equivalent]]:
    """The entries that match no mutant of `keys`: (those that fail the run, those only mentioned).

    With a scope (the functions a restricted run ran), only the entries of those
    functions fail it; with none (a full run) every one does.
    """
    present = set(keys.values())
    unmatched = [entry for entry in listed if entry.key not in present]
    if scope is None:
        return unmatched, []
    return (
        [entry for entry in unmatched if entry.key.function in scope],
        [entry for entry in unmatched if entry.key.function not in scope],
    )


def _report_stale(failing: list[Equivalent], mentioned: list[Equivalent]) -> None:
    for entry in failing:
        print(f"stale entry in {EQUIVALENTS_FILE.name}: no mutant {entry.key.describe()}")
    for entry in mentioned:
        print(f"not checked (outside this run's functions; a full run fails on it): {entry.key.describe()}")


def results() -> dict[str, int | None]:
    """Mutant name -> mutmut's exit code, from the .meta files mutmut writes beside each mutated file."""
    found: dict[str, int | None] = {}
    for meta in MUTANTS_DIR.rglob("*.meta"):
        found.update(json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {}))
    return found


def score(
    codes: Mapping[str, int | None],
    listed: list[Equivalent],
    keys: dict[str, MutationKey],
    restricted: bool = False,
) -> int:
    """Prints the survivors, the stale entries and the score of the mutants that ran; 0 when it meets the target.

    `codes` are the results of the run's mutants; `keys` those of every generated mutant
    (an entry is stale when it matches none of them). In a restricted run only the
    entries of the functions it ran can fail it.
    """
    listed_keys = {entry.key for entry in listed}
    ran = {name: code for name, code in codes.items() if code is not None}
    counts: Counter[str] = Counter()
    survivors = []
    killed_but_listed = []
    for name, code in sorted(ran.items()):
        if keys.get(name) in listed_keys:
            counts["equivalent"] += 1
            if code == _KILLED:
                killed_but_listed.append(name)
        elif code == _KILLED or code in _TIMEOUTS:
            counts["killed"] += 1
            counts["by timeout"] += code in _TIMEOUTS
        elif code == _SURVIVED:
            counts["survived"] += 1
            survivors.append(name)
        elif code == _NO_TESTS:
            counts["no tests"] += 1
            survivors.append(name)
        else:
            counts[f"other ({code})"] += 1
            survivors.append(name)
    scope = {keys[name].function for name in codes if name in keys} if restricted else None
    stale, mentioned = stale_entries(listed, keys, scope)
    considered = len(ran) - counts["equivalent"]
    ratio = counts["killed"] / considered if considered else 0.0
    for name in survivors:
        known = f" {keys[name].describe()}" if name in keys else ""
        print(f"survived: {name}{known} (`venv/bin/mutmut show '{name}'`)")
    for name in killed_but_listed:
        print(f"listed as equivalent, yet a test killed it: {name} {keys[name].describe()}")
    _report_stale(stale, mentioned)
    others = ", ".join(
        f"{counts[key]} {key}" for key in sorted(counts) if key not in ("killed", "equivalent", "by timeout")
    )
    not_run = len(codes) - len(ran)
    print(
        f"mutation score: {ratio:.1%} ({counts['killed']} killed, {counts['by timeout']} of them by timeout, "
        f"of {considered}; {len(ran)} mutants ran"
        + (f" of {len(codes)}" if not_run else "")
        + f", {counts['equivalent']} listed equivalent"
        + (f", {others}" if others else "")
        + f"); target {TARGET:.0%}"
    )
    if not_run:
        print(f"{not_run} mutants did not run: the score covers only those that did")
    if stale:
        print(f"{len(stale)} stale entries in {EQUIVALENTS_FILE.name}: fix or remove them")
    return 0 if ratio >= TARGET and not not_run and not stale else 1


def verify_timeouts(codes: dict[str, int | None], wall_seconds: float = 300) -> dict[str, int | None]:
    """Re-runs each mutant mutmut stopped on its CPU-time limit, with `pytest -x` on the tests
    that reach it: a test failure is a kill, passing tests a survivor, a hang a timeout.

    mutmut runs every test of a mutant to the end; under a loaded machine a mutant whose
    tests all fail slowly can hit the limit, which says nothing about whether it was caught.
    """
    checked = dict(codes)
    cache_path = MUTANTS_DIR / "timeouts-rechecked.json"
    cache: dict[str, int] = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.exists() else {}
    for name, code in sorted(codes.items()):
        if code not in _TIMEOUTS:
            continue
        if name in cache:
            checked[name] = cache[name]
            continue
        listing = subprocess.run(
            [_mutmut(), "tests-for-mutant", name], cwd=PROJECT_DIR, capture_output=True, text=True, check=False
        )
        tests = [line for line in listing.stdout.splitlines() if "::" in line]
        env = {**os.environ, "MUTANT_UNDER_TEST": name}
        try:
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                cwd=MUTANTS_DIR,
                env=env,
                capture_output=True,
                timeout=wall_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            continue
        if result.returncode not in (0, 1):
            continue  # pytest itself failed to run: keep mutmut's verdict
        verdict = _KILLED if result.returncode == 1 else _SURVIVED
        checked[name] = cache[name] = verdict
        cache_path.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        print(f"timeout re-checked: {name}: {'killed' if verdict == _KILLED else 'survived'}", flush=True)
    return checked


def sample(size: int, seed: int) -> list[str]:
    """A reproducible random sample of the mutants (generated first, without running any)."""
    if not results():
        raise SystemExit("no mutants generated yet: run `make mutation` once (or `venv/bin/mutmut run` briefly)")
    names = sorted(results())
    return sorted(random.Random(seed).sample(names, min(size, len(names))))


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


# mutmut's own first step of `mutmut run` (copy the sources into mutants/, write each
# mutated file, its .meta and .spans), without the stats run or any mutant's tests.
_GENERATE = """
from mutmut.__main__ import create_mutants
from mutmut.mutation.trampoline import set_mutant_under_test
from mutmut.utils.file_utils import copy_src_dir
set_mutant_under_test("mutant_generation")
copy_src_dir()
create_mutants({max_children})
"""


def generate_mutants(workdir: Path, max_children: int = 2, project: Path = PROJECT_DIR) -> Path:
    """Generates mutmut's mutants/ tree of the project's code into an empty `workdir`, without
    running any test: a copy of pyproject.toml and of [tool.mutmut]'s source paths, mutated there."""
    pyproject = project / "pyproject.toml"
    shutil.copy2(pyproject, workdir / "pyproject.toml")
    source_paths = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["mutmut"]["source_paths"]
    skip = shutil.ignore_patterns("venv", "__pycache__", "*.pyc")
    for source in source_paths:
        origin, target = project / source, workdir / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=skip)
        else:
            shutil.copy2(origin, target)
    subprocess.run(
        [sys.executable, "-c", _GENERATE.format(max_children=int(max_children))],
        cwd=workdir,
        capture_output=True,
        check=True,
    )
    return workdir / "mutants"


def check_equivalents(listed: list[Equivalent], max_children: int) -> int:
    """Generates the current code's mutants in a temporary directory and reports the stale entries."""
    with tempfile.TemporaryDirectory(prefix="mutants-") as workdir:
        keys = mutant_keys(generate_mutants(Path(workdir), max_children))
    stale, _ = stale_entries(listed, keys)
    _report_stale(stale, [])
    print(f"{len(listed) - len(stale)} of {len(listed)} entries match one of the {len(keys)} mutants")
    return 1 if stale else 0


def print_entries(patterns: list[str]) -> int:
    """Prints the [[equivalent]] table of each mutant of the last run named by `patterns`, reason left empty."""
    keys = mutant_keys()
    chosen = _matching(keys, patterns)
    for key in sorted({keys[name] for name in chosen}):
        print(format_entry(key))
    return 0 if chosen else 1


def _matching(names: Iterable[str], patterns: list[str]) -> list[str]:
    """The names a mutmut name or glob of `patterns` matches, as `mutmut run NAME...` selects them."""
    return [name for name in names if any(name == p or fnmatch.fnmatch(name, p) for p in patterns)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--score-only", action="store_true", help="score the last run without running mutmut")
    parser.add_argument("--sample", type=int, default=0, help="run only this many mutants, drawn at random")
    parser.add_argument("--seed", type=int, default=13, help="the sample's random seed")
    parser.add_argument(
        "--keep-timeouts", action="store_true", help="count CPU-limit stops as kills without re-running them"
    )
    parser.add_argument(
        "--check-equivalents",
        action="store_true",
        help="generate the current code's mutants in a temporary directory (no tests) and report stale entries",
    )
    parser.add_argument(
        "--entry", action="store_true", help="print the equivalents-file entry of the named mutants of the last run"
    )
    parser.add_argument("mutants", nargs="*", help="only these mutants (mutmut names or globs)")
    args = parser.parse_args(argv)
    listed = equivalents()
    if args.check_equivalents:
        return check_equivalents(listed, args.max_children)
    if args.entry:
        return print_entries(args.mutants)
    chosen = list(args.mutants) or (sample(args.sample, args.seed) if args.sample else [])
    if not args.score_only:
        started = time.monotonic()
        with running_postgres() as server:
            env = {**os.environ, SHARED_ENV: describe(server)}
            env["TEST_POSTGRES_TEMPLATE"] = _make_template(server, env)
            command = [_mutmut(), "run", "--max-children", str(args.max_children), *chosen]
            result = subprocess.run(command, cwd=PROJECT_DIR, env=env, check=False)
        print(f"mutmut ran for {time.monotonic() - started:.0f}s (exit {result.returncode})")
    every = results()
    codes = {name: every[name] for name in _matching(every, chosen)} if chosen else every
    if not args.keep_timeouts:
        codes = verify_timeouts(codes)
    return score(codes, listed, mutant_keys(), restricted=bool(chosen))


def _make_template(server: object, env: dict[str, str]) -> str:
    """A database of the current schema, made once by the unmutated prepare_db.py."""
    code = (
        "import uuid, sqlalchemy\n"
        "from tests.postgres_server import shared_server\n"
        "from tests.test_prepare_db import prepare_db\n"
        "server = shared_server()\n"
        "name = 'template_' + uuid.uuid4().hex[:8]\n"
        "admin = sqlalchemy.create_engine(server.uri('postgres'), isolation_level='AUTOCOMMIT')\n"
        "with admin.connect() as c: c.execute(sqlalchemy.text(f'CREATE DATABASE {name}'))\n"
        "prepare_db._prepare_tracking_schema(server.uri(name))\n"
        "print(name)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=True
    )
    return output.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    sys.exit(main())
