"""The GitHub workflows: schema, zizmor, pinned actions, and the shape each one promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack_config import PROJECT_DIR, STACKS

WORKFLOWS_DIR = PROJECT_DIR / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS_DIR.glob("*.yml"))
# The checkers come with requirements-dev.txt, next to the interpreter running the tests.
BIN_DIR = Path(sys.executable).parent
# `uses: owner/repo[/path]@<40 hex> # vX.Y.Z`: a tag can be moved, a commit cannot.
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w.-]+(?:/[\w./-]+)?)@(?P<sha>[0-9a-f]{40})$")
VERSION_COMMENT = re.compile(r"^\s+# (?P<version>v\d+\.\d+\.\d+)$")
PULUMI_ACTION = "pulumi/actions"


def _load(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((WORKFLOWS_DIR / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    # YAML 1.1 reads the bare key `on` as the boolean true.
    if True in loaded:
        loaded["on"] = loaded.pop(True)
    return loaded


def _steps(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if str(step.get("uses", "")).startswith(f"{action}@")]


def _pulumi_step(job: dict[str, Any]) -> dict[str, Any]:
    [step] = _steps(job, PULUMI_ACTION)
    return step


def _program_pulumi_version() -> str:
    for line in (PROJECT_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("pulumi=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError("requirements.txt pins no pulumi release")


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    executable = BIN_DIR / tool
    assert executable.exists(), f"{executable} is missing: install requirements-dev.txt"
    return subprocess.run(
        [str(executable), *args], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_three_workflows_exist() -> None:
    assert [path.name for path in WORKFLOW_FILES] == ["deploy.yml", "preview.yml", "test.yml"]


def test_workflows_validate_against_the_github_schema() -> None:
    # The schema is bundled with check-jsonschema: no network.
    result = _run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOW_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing() -> None:
    # --offline: no GitHub API calls (and no token), the audits that need none still run.
    result = _run("zizmor", "--offline", "--no-progress", str(WORKFLOWS_DIR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout + result.stderr


def test_zizmor_would_catch_an_unpinned_action(tmp_path: Path) -> None:
    # The check above can fail: the same run over a workflow with a tag reference reports it.
    text = (WORKFLOWS_DIR / "test.yml").read_text(encoding="utf-8")
    broken = re.sub(r"actions/checkout@[0-9a-f]{40} # v\S+", "actions/checkout@v5", text)
    assert broken != text
    (tmp_path / "test.yml").write_text(broken, encoding="utf-8")
    result = _run("zizmor", "--offline", "--no-progress", str(tmp_path / "test.yml"))
    assert result.returncode != 0
    assert "unpinned-uses" in result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path: Path) -> None:
    found = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = USES.match(line)
        if not match:
            continue
        found += 1
        assert PINNED.match(match["ref"]), f"{path.name}:{number}: {match['ref']} is not owner/repo@<40-hex sha>"
        assert VERSION_COMMENT.match(match["rest"]), f"{path.name}:{number}: no `# vX.Y.Z` after the sha"
    assert found >= 2


def test_one_action_one_commit_across_workflows() -> None:
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOW_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            match = USES.match(line)
            if match and (pinned := PINNED.match(match["ref"])) and (version := VERSION_COMMENT.match(match["rest"])):
                pins.setdefault(pinned["action"], set()).add((pinned["sha"], version["version"]))
    assert {action for action, seen in pins.items() if len(seen) > 1} == set()
    # pulumi/actions at its current major.
    [(_, pulumi_version)] = pins[PULUMI_ACTION]
    assert pulumi_version.startswith("v7.")


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_checkouts_keep_no_credentials(path: Path) -> None:
    workflow = _load(path.name)
    for job in workflow["jobs"].values():
        for step in _steps(job, "actions/checkout"):
            assert step["with"]["persist-credentials"] is False


def test_test_workflow_runs_the_readme_command_with_docker_required() -> None:
    workflow = _load("test.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert workflow["permissions"] == {"contents": "read"}
    [job] = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu-")
    assert job["env"]["REQUIRE_DOCKER"] == "1"
    # The hosted runner pulls the official images: the stand-ins are switched off by config, not by code.
    assert job["env"]["LOCAL_DEPLOY_STANDINS"] == "0"
    runs = [step["run"].strip() for step in job["steps"] if "run" in step]
    assert runs[-1] == "make test"


def test_preview_workflow() -> None:
    workflow = _load("preview.yml")
    assert set(workflow["on"]) == {"pull_request"}
    assert workflow["permissions"] == {}
    # One group per pull request; a new push cancels the preview it supersedes.
    assert "github.event.pull_request.number" in workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] is True
    [job] = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert job["strategy"]["matrix"]["stack"] == list(STACKS)
    assert job["strategy"]["fail-fast"] is False
    assert job["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"

    step = _pulumi_step(job)
    assert step["with"]["command"] == "preview"
    assert step["with"]["stack-name"] == "${{ matrix.stack }}"
    assert step["with"]["comment-on-pr"] is True
    assert step["with"]["policyPacks"] == "policy"
    assert step["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert step["with"]["pulumi-version"] == _program_pulumi_version()

    # Both virtualenvs exist before the action runs the program and the pack.
    steps = job["steps"]
    install = next(index for index, s in enumerate(steps) if "pip install" in s.get("run", ""))
    assert install < steps.index(step)
    assert "-r requirements.txt" in steps[install]["run"]
    assert "-r policy/requirements.txt" in steps[install]["run"]


def test_deploy_workflow_promotes_dev_then_staging_then_prod() -> None:
    workflow = _load("deploy.yml")
    assert workflow["on"] == {"push": {"branches": ["main"]}}
    assert workflow["permissions"] == {"contents": "read"}
    # Never cancel a `pulumi up` halfway.
    assert workflow["concurrency"]["cancel-in-progress"] is False
    jobs = workflow["jobs"]
    assert list(jobs) == list(STACKS)
    assert "needs" not in jobs["dev"]
    assert jobs["staging"]["needs"] == "dev"
    assert jobs["prod"]["needs"] == "staging"
    for stack, job in jobs.items():
        # staging and prod are GitHub environments with required reviewers (repository settings).
        assert job["environment"] == stack
        assert job["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
        assert job["env"]["DOCKER_HOST"] == "${{ vars.DOCKER_HOST }}"
        step = _pulumi_step(job)
        assert step["with"]["command"] == "up"
        assert step["with"]["stack-name"] == stack
        assert step["with"]["policyPacks"] == "policy"
        assert step["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
        assert step["with"]["pulumi-version"] == _program_pulumi_version()
