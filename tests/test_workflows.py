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
# Where the preview checks out the base branch's policy pack.
BASE_CHECKOUT = ".base"


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


def test_the_four_workflows_exist() -> None:
    assert [path.name for path in WORKFLOW_FILES] == ["audit.yml", "deploy.yml", "preview.yml", "test.yml"]


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
    # The base branch's pack and config judge the pull request (issue 19, finding 6); only the
    # dev stack is judged as a personal stack.
    assert step["with"]["policyPacks"] == f"{BASE_CHECKOUT}/policy"
    assert step["with"]["policyPackConfigs"] == (
        f"${{{{ matrix.stack == 'dev' && '{BASE_CHECKOUT}/policy/config/dev.json' || '' }}}}"
    )
    assert step["with"]["stack-name"] == "${{ matrix.stack }}"
    assert step["with"]["comment-on-pr"] is True
    assert step["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert step["with"]["pulumi-version"] == _program_pulumi_version()

    # The program's virtualenv and the base pack's exist before the action runs them.
    steps = job["steps"]
    program, pack = _preview_installs(steps)
    assert program < steps.index(step)
    assert pack < steps.index(step)


def _preview_installs(steps: list[dict[str, Any]]) -> tuple[int, int]:
    """The indexes of the steps that install the program's and the base branch's pack's requirements."""
    installs = [index for index, step in enumerate(steps) if "pip install" in step.get("run", "")]
    [program] = [index for index in installs if "working-directory" not in steps[index]]
    [pack] = [index for index in installs if steps[index].get("working-directory") == BASE_CHECKOUT]
    assert "--require-hashes -r requirements.txt" in steps[program]["run"]
    # The pull request's own policy/ is not installed, so nothing of it can run.
    assert "policy/" not in steps[program]["run"]
    # In the base checkout: its policy/venv (what its PulumiPolicy.yaml names) from its own lock.
    assert "python -m venv policy/venv" in steps[pack]["run"]
    assert "policy/venv/bin/pip install --quiet --require-hashes -r policy/requirements.txt" in steps[pack]["run"]
    return program, pack


def test_preview_checks_out_the_base_branchs_policy_pack_apart() -> None:
    [job] = _load("preview.yml")["jobs"].values()
    checkouts = _steps(job, "actions/checkout")
    assert len(checkouts) == 2
    # The program: the pull request's merge commit, the default of a pull_request checkout.
    assert checkouts[0]["with"] == {"persist-credentials": False}
    # The pack: the commit the pull request targets, into its own directory, policy/ alone.
    base = checkouts[1]["with"]
    assert base["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert base["path"] == BASE_CHECKOUT
    assert base["sparse-checkout"].split() == ["/policy/"]
    assert base["sparse-checkout-cone-mode"] is False
    assert base["persist-credentials"] is False
    # Never pull_request_target: the pull request's code runs without the base repository's token.
    assert set(_load("preview.yml")["on"]) == {"pull_request"}
    # Nothing but the pack is read from the base checkout (comments aside).
    lines = (WORKFLOWS_DIR / "preview.yml").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    uses = set(re.findall(rf"{re.escape(BASE_CHECKOUT)}/[\w./-]+", text))
    assert uses == {f"{BASE_CHECKOUT}/policy", f"{BASE_CHECKOUT}/policy/config/dev.json"}


def test_the_pull_requests_policy_pack_cannot_judge_itself() -> None:
    # A pull request that weakens policy/ changes only the working tree's policy/, which the
    # preview neither installs nor passes to the CLI.
    [job] = _load("preview.yml")["jobs"].values()
    step = _pulumi_step(job)
    for value in (step["with"]["policyPacks"], step["with"]["policyPackConfigs"]):
        assert re.search(r"(^|[\s'])policy(/|'|$)", str(value)) is None, value
    for weakened in (
        "policy",
        "policy/config/dev.json",
        "${{ matrix.stack == 'dev' && 'policy/config/dev.json' || '' }}",
    ):
        assert re.search(r"(^|[\s'])policy(/|'|$)", weakened), weakened


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
        installs = {index: kind for index, step in enumerate(steps) if (kind := _install_kind(step))}
        # Checkout (the preview's second one is the base branch's pack), Python, both virtualenvs
        # (one step or two) and the Pulumi CLI.
        assert set(installs.values()) == {"checkout", "python", "virtualenvs", "cli"}, f"{workflow}:{name}"
        pip_runs = "\n".join(steps[index]["run"] for index, kind in installs.items() if kind == "virtualenvs")
        assert "-r requirements.txt" in pip_runs, f"{workflow}:{name}"
        assert "-r policy/requirements.txt" in pip_runs, f"{workflow}:{name}"
        assert max(installs) < min(with_secrets), f"{workflow}:{name}: an install runs after a secret is given"


def _install_kind(step: dict[str, Any]) -> str | None:
    uses = str(step.get("uses", ""))
    if "pip install" in step.get("run", ""):
        return "virtualenvs"
    if uses.startswith("actions/checkout@"):
        return "checkout"
    if uses.startswith("actions/setup-python@"):
        return "python"
    if uses.startswith(f"{PULUMI_ACTION}@") and "command" not in step.get("with", {}):
        return "cli"
    return None


def test_the_secret_placement_checks_can_fail() -> None:
    # The review's findings, as the checks above see them.
    job_env = {"env": {"PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"}}
    assert _reads_secrets(job_env["env"])
    matrix_job = {"strategy": {"matrix": {"stack": ["dev", "staging", "prod"]}}, **job_env}
    assert _stacks_of("preview", matrix_job) == ["dev", "staging", "prod"]
    assert _environment_for(matrix_job, "prod") is None
    assert _environment_for({"environment": "${{ matrix.stack }}-preview"}, "prod") == "prod-preview"
    assert _environment_for({"environment": {"name": "staging"}}, "staging") == "staging"


# --- The vulnerability audit -----------------------------------------------------------------

LOCKS = ("requirements.txt", "requirements-dev.txt", "policy/requirements.txt", "mlflow/locks/*.txt")
TRIVY_ACTION = "aquasecurity/trivy-action"


def test_audit_runs_weekly_and_on_demand_with_read_only_jobs() -> None:
    workflow = _load("audit.yml")
    assert set(workflow["on"]) == {"schedule", "workflow_dispatch"}
    [schedule] = workflow["on"]["schedule"]
    # Once a week: minute, hour, any day of the month, any month, one day of the week.
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert (day, month) == ("*", "*")
    assert all(field.isdigit() for field in (minute, hour, weekday))
    assert workflow["permissions"] == {}
    assert set(workflow["jobs"]) == {"locks", "images"}
    for job in workflow["jobs"].values():
        assert job["permissions"] == {"contents": "read"}
        assert "environment" not in job
        assert not _reads_secrets(job)


def test_audit_runs_pip_audit_over_every_lock_as_locked() -> None:
    job = _load("audit.yml")["jobs"]["locks"]
    # pip-audit itself comes from the dev tools' lock, hash-checked.
    [install] = [step for step in job["steps"] if "pip install" in step.get("run", "")]
    assert "--require-hashes -r requirements-dev.txt" in install["run"]
    [audit] = [step for step in job["steps"] if "pip-audit --requirement" in step.get("run", "")]
    loop = re.search(r"for lock in (.+); do", audit["run"])
    assert loop
    assert tuple(loop.group(1).split()) == LOCKS
    # As locked: every pin with its hashes, no resolution, and a pin that cannot be audited fails.
    for flag in ("--require-hashes", "--disable-pip", "--strict"):
        assert flag in audit["run"], flag
    assert 'exit "$failed"' in audit["run"]
    # Every lock the loop names exists (an image lock at least).
    for pattern in LOCKS:
        assert list(PROJECT_DIR.glob(pattern)), pattern


def test_audit_scans_the_images_prod_deploys() -> None:
    job = _load("audit.yml")["jobs"]["images"]
    steps = job["steps"]
    [read] = [step for step in steps if step.get("id") == "images"]
    assert 'stack_config("prod")' in read["run"]
    [build] = [step for step in steps if "docker build" in step.get("run", "")]
    assert build["run"].count("docker build --pull") == 2
    assert "mlflow/proxy/" in build["run"]
    assert "docker pull" in build["run"]
    scans = _steps(job, TRIVY_ACTION)
    assert [scan["with"]["image-ref"] for scan in scans] == [
        "mlflow-platform-audit/mlflow:prod",
        "mlflow-platform-audit/proxy:prod",
        "${{ steps.images.outputs.postgresImage }}",
    ]
    for scan in scans:
        # A fixable HIGH or CRITICAL vulnerability fails the run.
        assert scan["with"] == {**scan["with"], "severity": "HIGH,CRITICAL", "ignore-unfixed": True, "exit-code": "1"}
    # Each scan runs even when the one before it found something.
    assert [scan.get("if") for scan in scans[1:]] == ["${{ !cancelled() }}"] * 2


# --- Code owners -----------------------------------------------------------------------------

CODEOWNERS = PROJECT_DIR / ".github" / "CODEOWNERS"
# The placeholder team, to be replaced by the organisation's own (README).
OWNERS = "@mlflow-platform/platform-owners"


def _codeowners() -> dict[str, list[str]]:
    rules: dict[str, list[str]] = {}
    for line in CODEOWNERS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            pattern, *owners = line.split()
            rules[pattern] = owners
    return rules


def test_code_owners_guard_the_policy_the_workflows_the_stacks_and_the_components() -> None:
    rules = _codeowners()
    assert rules == {
        "/policy/": [OWNERS],
        "/.github/": [OWNERS],
        "/renovate.json": [OWNERS],
        "/Pulumi*.yaml": [OWNERS],
        "/components/": [OWNERS],
    }
    # Each pattern names something that exists (a typo would guard nothing); mutmut's copy of the
    # project (mutants/) holds only what pyproject.toml's also_copy lists.
    for pattern in rules:
        copied = PROJECT_DIR.name != "mutants" or pattern != "/renovate.json"
        assert list(PROJECT_DIR.glob(pattern.strip("/"))) or not copied, pattern
    stacks = {path.name for path in PROJECT_DIR.glob("Pulumi*.yaml")}
    assert stacks == {"Pulumi.yaml", *(f"Pulumi.{stack}.yaml" for stack in STACKS)}
