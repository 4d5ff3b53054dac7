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
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

from tests.postgres_server import SHARED_ENV, describe, running_postgres
from tests.stack_config import PROJECT_DIR

EQUIVALENTS_FILE = PROJECT_DIR / "tests" / "mutation-equivalents.toml"
MUTANTS_DIR = PROJECT_DIR / "mutants"
TARGET = 0.90
# mutmut's exit codes per mutant: the tests failed (killed), passed (survived), none ran.
_KILLED, _SURVIVED, _NO_TESTS = 1, 0, 33
# Killed by the CPU-time limit (SIGXCPU) or pytest-timeout's alarm: the mutant hung the tests.
_TIMEOUTS = {-24, 24, -14, 14}


def equivalents() -> dict[str, str]:
    """Mutant name -> why it cannot change behaviour (tests/mutation-equivalents.toml)."""
    if not EQUIVALENTS_FILE.exists():
        return {}
    listed = tomllib.loads(EQUIVALENTS_FILE.read_text(encoding="utf-8")).get("equivalent", {})
    for name, reason in listed.items():
        if not isinstance(reason, str) or not reason.strip():
            raise SystemExit(f"{EQUIVALENTS_FILE.name}: {name} needs a one-line reason")
    return dict(listed)


def results() -> dict[str, int | None]:
    """Mutant name -> mutmut's exit code, from the .meta files mutmut writes beside each mutated file."""
    found: dict[str, int | None] = {}
    for meta in MUTANTS_DIR.rglob("*.meta"):
        found.update(json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {}))
    return found


def score(codes: dict[str, int | None], listed: dict[str, str], every_mutant: set[str]) -> int:
    """Prints the survivors and the score of the mutants that ran; 0 when it meets the target."""
    ran = {name: code for name, code in codes.items() if code is not None}
    counts: Counter[str] = Counter()
    survivors = []
    for name, code in sorted(ran.items()):
        if name in listed:
            counts["equivalent"] += 1
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
    stale = sorted(set(listed) - every_mutant)
    considered = len(ran) - counts["equivalent"]
    ratio = counts["killed"] / considered if considered else 0.0
    for name in survivors:
        print(f"survived: {name} (`venv/bin/mutmut show '{name}'`)")
    for name in stale:
        print(f"stale entry in {EQUIVALENTS_FILE.name}: {name} is no longer a mutant")
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
    return 0 if ratio >= TARGET and not not_run else 1


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--score-only", action="store_true", help="score the last run without running mutmut")
    parser.add_argument("--sample", type=int, default=0, help="run only this many mutants, drawn at random")
    parser.add_argument("--seed", type=int, default=13, help="the sample's random seed")
    parser.add_argument(
        "--keep-timeouts", action="store_true", help="count CPU-limit stops as kills without re-running them"
    )
    parser.add_argument("mutants", nargs="*", help="only these mutants (mutmut names or globs)")
    args = parser.parse_args(argv)
    listed = equivalents()
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
    codes = {name: code for name, code in every.items() if name in chosen} if chosen else every
    if not args.keep_timeouts:
        codes = verify_timeouts(codes)
    return score(codes, listed, set(every))


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
