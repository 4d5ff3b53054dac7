"""The GitHub workflows: schema, zizmor, pinned actions, and the shape each one promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.stack_config import PROJECT_DIR, STACKS

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


def test_every_pulumi_cli_is_the_sdk_release() -> None:
    versions = [step["with"]["pulumi-version"] for _, _, job in _jobs() for step in _steps(job, PULUMI_ACTION)]
    # Per job: one step installs the CLI before any secret, one runs the command.
    assert len(versions) == 8
    assert set(versions) == {_program_pulumi_version()}


def _pulumi_step(job: dict[str, Any]) -> dict[str, Any]:
    """The step that runs a Pulumi command (the other pulumi/actions step only installs the CLI)."""
    [step] = [step for step in _steps(job, PULUMI_ACTION) if "command" in step.get("with", {})]
    return step


def _program_pulumi_version() -> str:
    # The SDK pin of the program (requirements.in, the input of the hash-locked requirements.txt).
    for line in (PROJECT_DIR / "requirements.in").read_text(encoding="utf-8").splitlines():
        if line.startswith("pulumi=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError("requirements.in pins no pulumi release")


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
    # --persona auditor: every audit, including the pedantic ones and secrets-outside-env.
    result = _run("zizmor", "--persona", "auditor", "--offline", "--no-progress", str(WORKFLOWS_DIR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout + result.stderr
    # No finding is hidden by an inline suppression either.
    for path in WORKFLOW_FILES:
        assert "zizmor: ignore" not in path.read_text(encoding="utf-8"), path.name


def test_zizmor_would_catch_secrets_outside_an_environment(tmp_path: Path) -> None:
    # The finding the review reported: the preview reading secrets with no environment around them.
    text = (WORKFLOWS_DIR / "preview.yml").read_text(encoding="utf-8")
    broken = text.replace("    environment: ${{ matrix.stack }}-preview\n", "")
    assert broken != text
    (tmp_path / "preview.yml").write_text(broken, encoding="utf-8")
    result = _run("zizmor", "--persona", "auditor", "--offline", "--no-progress", str(tmp_path / "preview.yml"))
    assert result.returncode != 0
    assert "secrets-outside-env" in result.stdout + result.stderr


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
    # Each stack's preview runs in its own `<stack>-preview` environment, which alone holds its secrets.
    assert job["environment"] == "${{ matrix.stack }}-preview"
    assert "env" not in job

    step = _pulumi_step(job)
    assert step["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    assert step["with"]["command"] == "preview"
    assert step["with"]["diff"] is True
    # Only the dev stack is judged as a personal stack by the policy pack.
    assert step["with"]["policyPackConfigs"] == "${{ matrix.stack == 'dev' && 'policy/config/dev.json' || '' }}"
    assert step["with"]["stack-name"] == "${{ matrix.stack }}"
    assert step["with"]["comment-on-pr"] is True
    assert step["with"]["policyPacks"] == "policy"
    assert step["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert step["with"]["pulumi-version"] == _program_pulumi_version()

    # Both virtualenvs exist before the action runs the program and the pack.
    steps = job["steps"]
    install = next(index for index, s in enumerate(steps) if "pip install" in s.get("run", ""))
    assert install < steps.index(step)
    assert "--require-hashes" in steps[install]["run"]
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
        assert job["env"] == {"AWS_REGION": "${{ vars.AWS_REGION }}", "DOCKER_HOST": "${{ vars.DOCKER_HOST }}"}
        step = _pulumi_step(job)
        assert step["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
        assert step["with"]["command"] == "up"
        # Drift: a container removed by hand is recreated rather than failing the update.
        assert step["with"]["refresh"] is True
        # Only the dev stack is a personal stack for the pack; staging and prod are judged as shared.
        assert step["with"].get("policyPackConfigs") == ("policy/config/dev.json" if stack == "dev" else None)
        assert step["with"]["stack-name"] == stack
        assert step["with"]["policyPacks"] == "policy"
        assert step["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
        assert step["with"]["pulumi-version"] == _program_pulumi_version()


# --- Environments and secrets ----------------------------------------------------------------

SECRET = re.compile(r"\$\{\{\s*secrets\.")
MATRIX = re.compile(r"\$\{\{\s*matrix\.(\w+)\s*\}\}")


def _jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path.name, name, job) for path in WORKFLOW_FILES for name, job in _load(path.name)["jobs"].items()]


def _reads_secrets(value: Any) -> bool:
    return bool(SECRET.search(yaml.safe_dump(value)))


def _stacks_of(job_name: str, job: dict[str, Any]) -> list[str]:
    """The stacks a job acts on: its matrix's `stack` values, or the stack its name says."""
    matrix = job.get("strategy", {}).get("matrix", {})
    return list(matrix.get("stack", [job_name] if job_name in STACKS else []))


def _environment_for(job: dict[str, Any], stack: str) -> str | None:
    """The job's environment name for one stack, with `${{ matrix.stack }}` filled in."""
    environment = job.get("environment")
    if isinstance(environment, dict):
        environment = environment.get("name")
    if environment is None:
        return None
    return MATRIX.sub(lambda match: stack if match.group(1) == "stack" else match.group(0), str(environment))


def test_every_job_that_reads_a_secret_runs_in_its_stacks_own_environment() -> None:
    environments: dict[str, str] = {}
    readers = 0
    for workflow, name, job in _jobs():
        if not _reads_secrets(job):
            continue
        readers += 1
        stacks = _stacks_of(name, job)
        assert stacks, f"{workflow}:{name} reads secrets but acts on no stack"
        for stack in stacks:
            environment = _environment_for(job, stack)
            # Without `environment:` the job could only read repository secrets, which must not exist.
            assert environment is not None, f"{workflow}:{name} reads secrets for {stack} outside any environment"
            assert "${{" not in environment, f"{workflow}:{name}: {environment} is not fixed per stack"
            assert environment in (stack, f"{stack}-preview"), f"{workflow}:{name}: {environment} for {stack}"
            # One environment never serves two stacks: a stack's secrets reach only its own jobs.
            assert environments.setdefault(environment, stack) == stack, environment
    assert readers == 4  # the preview matrix and the three deploy jobs
    assert set(environments) == {"dev", "staging", "prod", "dev-preview", "staging-preview", "prod-preview"}


def test_no_secret_in_a_workflow_or_job_level_env() -> None:
    for path in WORKFLOW_FILES:
        workflow = _load(path.name)
        assert not _reads_secrets(workflow.get("env", {})), path.name
        for name, job in workflow["jobs"].items():
            assert not _reads_secrets(job.get("env", {})), f"{path.name}:{name}: secrets in the job's env"


def test_secrets_only_reach_the_steps_that_use_them() -> None:
    for workflow, name, job in _jobs():
        for step in job["steps"]:
            if not _reads_secrets(step):
                continue
            where = f"{workflow}:{name}:{step.get('name', step.get('uses'))}"
            # Only through the step's env, never interpolated into a script or an action input.
            assert not _reads_secrets({k: v for k, v in step.items() if k != "env"}), where
            secret_vars = [var for var, value in step["env"].items() if SECRET.search(str(value))]
            if "run" in step:
                # A script gets only the secrets it reads.
                unused = [var for var in secret_vars if f"${var}" not in step["run"]]
                assert unused == [], f"{where}: {unused} given but not used"
            else:
                # The action that runs Pulumi (not the one that only installs the CLI).
                assert step["uses"].startswith(f"{PULUMI_ACTION}@"), where
                assert "command" in step["with"], where


def test_everything_is_installed_before_any_secret_is_in_an_environment() -> None:
    for workflow, name, job in _jobs():
        steps = job["steps"]
        with_secrets = [index for index, step in enumerate(steps) if _reads_secrets(step)]
        if not with_secrets:
            continue
        installs = [
            index
            for index, step in enumerate(steps)
            if "pip install" in step.get("run", "")
            or step.get("uses", "").startswith(("actions/setup-python@", "actions/checkout@"))
            or (step.get("uses", "").startswith(f"{PULUMI_ACTION}@") and "command" not in step.get("with", {}))
        ]
        # Checkout, Python, both virtualenvs and the Pulumi CLI.
        assert len(installs) == 4, f"{workflow}:{name}"
        assert max(installs) < min(with_secrets), f"{workflow}:{name}: an install runs after a secret is given"


def test_the_secret_placement_checks_can_fail() -> None:
    # The review's findings, as the checks above see them.
    job_env = {"env": {"PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"}}
    assert _reads_secrets(job_env["env"])
    matrix_job = {"strategy": {"matrix": {"stack": ["dev", "staging", "prod"]}}, **job_env}
    assert _stacks_of("preview", matrix_job) == ["dev", "staging", "prod"]
    assert _environment_for(matrix_job, "prod") is None
    assert _environment_for({"environment": "${{ matrix.stack }}-preview"}, "prod") == "prod-preview"
    assert _environment_for({"environment": {"name": "staging"}}, "staging") == "staging"
