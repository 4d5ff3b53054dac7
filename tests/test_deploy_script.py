"""`make deploy` on a fresh machine: scripts/deploy.sh against stub `pulumi`, `docker` and installer.

The real download cannot run here, so PATH holds only stubs and the system's basic tools:
- `docker` answers `info` (or not, to see the missing-engine error);
- `curl` prints a stand-in for Pulumi's install script, which records its arguments and puts a
  stub `pulumi` into `<--install-root>/bin`, reporting the version the test chose;
- `pulumi` (the installed stub, or one placed on PATH) records every call and prints its version.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.stack_config import PROJECT_DIR

SCRIPT = PROJECT_DIR / "scripts" / "deploy.sh"
PINNED = re.search(r"^pulumi==(\S+)$", (PROJECT_DIR / "requirements.in").read_text(encoding="utf-8"), re.MULTILINE)
assert PINNED
PIN = PINNED.group(1)
# The tools the script uses besides the stubs.
SYSTEM_TOOLS = ("bash", "sh", "sed", "dirname", "cat", "mkdir", "chmod", "env", "printf")

STUB_PULUMI = """#!/bin/sh
printf '%s\\n' "$0 $*" >> "$STUB_LOG"
case "$1" in
  version) echo "v{version}" ;;
  whoami) exit 0 ;;
  stack) [ "$2" = output ] && echo "https://mlflow.example.internal" ;;
  config)
    # `config get KEY`: STUB_CONFIG_<KEY> if set, else unset (exit 1, as the CLI does).
    eval "value=\\${{STUB_CONFIG_$3-}}"
    eval "set=\\${{STUB_CONFIG_$3+x}}"
    [ -n "$set" ] || exit 1
    echo "$value" ;;
esac
exit 0
"""

# What `curl -fsSL https://get.pulumi.com` prints: a script for `sh -s -- --version X --install-root DIR ...`.
STUB_CURL = """#!/bin/sh
printf '%s\\n' "curl $*" >> "$STUB_LOG"
cat <<'INSTALLER'
printf '%s\\n' "installer $*" >> "$STUB_LOG"
while [ $# -gt 0 ]; do
  case "$1" in
    --install-root) root=$2; shift ;;
  esac
  shift
done
mkdir -p "$root/bin"
cat "$STUB_PULUMI_SOURCE" > "$root/bin/pulumi"
chmod +x "$root/bin/pulumi"
INSTALLER
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]


def _executable(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH directory with the system tools the script needs, linked, and no pulumi."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in SYSTEM_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (directory / tool).symlink_to(found)
    return directory


def _deploy(
    tmp_path: Path,
    bin_dir: Path,
    *,
    stack: str = "dev",
    docker: bool = True,
    installed_version: str = PIN,
    on_path_version: str | None = None,
    config: dict[str, str] | None = None,
    swarm: str = "false 0",
) -> Run:
    log = tmp_path / "calls.log"
    log.touch()
    (tmp_path / "pulumi-source").write_text(STUB_PULUMI.format(version=installed_version), encoding="utf-8")
    _executable(bin_dir / "curl", STUB_CURL)
    # `docker info --format '{{.Swarm.ControlAvailable}} {{.Swarm.Nodes}}'` prints `swarm`.
    answer = f'[ "$1" = info ] && [ "$#" -gt 1 ] && echo "{swarm}"\nexit 0\n' if docker else "exit 1\n"
    _executable(bin_dir / "docker", "#!/bin/sh\n" + answer)
    if on_path_version is not None:
        _executable(bin_dir / "pulumi", STUB_PULUMI.format(version=on_path_version))
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_PULUMI_SOURCE": str(tmp_path / "pulumi-source"),
        "PULUMI_CLI_ROOT": str(tmp_path / "cli"),
        **{f"STUB_CONFIG_{key}": value for key, value in (config or {}).items()},
    }
    result = subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT), "up", stack],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = [line.replace(str(tmp_path), "<tmp>") for line in log.read_text(encoding="utf-8").splitlines()]
    return Run(result.returncode, result.stdout, result.stderr, calls)


def test_without_a_cli_the_pinned_release_is_installed_locally_and_used(tmp_path: Path, bin_dir: Path) -> None:
    run = _deploy(tmp_path, bin_dir)
    assert run.returncode == 0, run.stderr
    installed = "<tmp>/cli/bin/pulumi"
    assert run.calls == [
        "curl -fsSL https://get.pulumi.com",
        f"installer --version {PIN} --install-root <tmp>/cli --no-edit-path",
        # Checked to run and to be the pinned release before anything else.
        f"{installed} version",
        f"{installed} whoami",
        f"{installed} stack select --create dev",
        # Not a swarm stack (the key is unset): nothing more to check of the engine.
        f"{installed} config get engine --stack dev",
        f"{installed} up --stack dev --refresh --policy-pack policy --policy-pack-config policy/config/dev.json",
        f"{installed} stack output tracking_uri --stack dev",
    ]
    assert "tracking URI: https://mlflow.example.internal" in run.stdout
    assert f"installing Pulumi {PIN} into {tmp_path}/cli" in run.stderr


def test_an_installed_local_cli_is_reused(tmp_path: Path, bin_dir: Path) -> None:
    assert _deploy(tmp_path, bin_dir).returncode == 0
    (tmp_path / "calls.log").write_text("", encoding="utf-8")
    run = _deploy(tmp_path, bin_dir, stack="staging")
    assert run.returncode == 0, run.stderr
    assert not any(call.startswith(("curl", "installer")) for call in run.calls)
    # A shared stack gets no pack config: the pack judges it as shared.
    assert "<tmp>/cli/bin/pulumi up --stack staging --refresh --policy-pack policy" in run.calls


def test_a_cli_on_path_is_used_as_is(tmp_path: Path, bin_dir: Path) -> None:
    run = _deploy(tmp_path, bin_dir, on_path_version=PIN)
    assert run.returncode == 0, run.stderr
    assert not any(call.startswith(("curl", "installer")) for call in run.calls)
    on_path = f"{bin_dir}/pulumi".replace(str(tmp_path), "<tmp>")
    assert f"{on_path} up --stack dev --refresh --policy-pack policy --policy-pack-config policy/config/dev.json" in (
        run.calls
    )
    assert "warning" not in run.stderr


def test_a_cli_on_path_of_another_release_is_used_with_a_warning(tmp_path: Path, bin_dir: Path) -> None:
    run = _deploy(tmp_path, bin_dir, on_path_version="3.100.0")
    assert run.returncode == 0, run.stderr
    assert not any(call.startswith(("curl", "installer")) for call in run.calls)
    assert "warning: using the Pulumi CLI on PATH" in run.stderr
    assert f"version 3.100.0); the SDK pin in requirements.in is {PIN}" in run.stderr


def test_an_install_that_does_not_yield_the_pinned_release_stops(tmp_path: Path, bin_dir: Path) -> None:
    run = _deploy(tmp_path, bin_dir, installed_version="3.1.0")
    assert run.returncode == 1
    assert f"reports version '3.1.0', not {PIN}" in run.stderr
    assert not any(" up " in call or " stack " in call for call in run.calls)


def test_no_docker_engine_is_a_clear_error_before_anything_is_installed(tmp_path: Path, bin_dir: Path) -> None:
    run = _deploy(tmp_path, bin_dir, docker=False)
    assert run.returncode == 1
    assert run.stderr.strip() == "error: no Docker engine answers; start Docker first"
    assert run.calls == []
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize(
    ("config", "swarm", "error"),
    [
        (
            {"engine": "swarm"},
            "false 0",
            "error: config key 'engine' is 'swarm', but the Docker engine at unix:///var/run/docker.sock is not a "
            "swarm manager: accepted: 'standalone', or DOCKER_HOST naming a manager (docker swarm init)",
        ),
        (
            {"engine": "swarm"},
            "true 3",
            "error: config key 'imageRegistry' is empty, but the swarm has 3 nodes, which cannot pull an image built "
            "on the manager: accepted: a registry every node pulls from, as host[:port][/path]",
        ),
    ],
    ids=["not-a-manager", "several-nodes-no-registry"],
)
def test_a_swarm_stack_the_engine_cannot_run_is_refused_before_pulumi_up(
    tmp_path: Path, bin_dir: Path, config: dict[str, str], swarm: str, error: str
) -> None:
    run = _deploy(tmp_path, bin_dir, config=config, swarm=swarm)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == error
    assert not any(" up --stack dev --refresh --policy-pack policy" in call for call in run.calls)


@pytest.mark.parametrize(
    ("config", "swarm"),
    [
        ({}, "false 0"),
        ({"engine": "standalone"}, "false 0"),
        ({"engine": "swarm"}, "true 1"),
        ({"engine": "swarm", "imageRegistry": "registry.example.internal:5000"}, "true 3"),
    ],
    ids=["standalone-default", "standalone", "one-node-swarm", "registry"],
)
def test_what_the_engine_can_run_goes_on_to_pulumi_up(
    tmp_path: Path, bin_dir: Path, config: dict[str, str], swarm: str
) -> None:
    run = _deploy(tmp_path, bin_dir, config=config, swarm=swarm)
    assert run.returncode == 0, run.stderr
    assert any(" up --stack dev --refresh --policy-pack policy" in call for call in run.calls)


def test_the_install_folder_is_ignored_by_git() -> None:
    ignored = (PROJECT_DIR / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".pulumi-cli/" in ignored
    result = subprocess.run(
        ["git", "check-ignore", "-q", ".pulumi-cli/bin/pulumi"], cwd=PROJECT_DIR, check=False, env=os.environ
    )
    assert result.returncode == 0


def test_make_deploy_runs_the_script_with_the_stack() -> None:
    makefile = (PROJECT_DIR / "Makefile").read_text(encoding="utf-8")
    deploy = re.search(r"^deploy:(?P<prerequisites>.*)\n(?P<recipe>(?:\t.*\n)+)", makefile, re.MULTILINE)
    assert deploy
    assert deploy["recipe"].strip() == "scripts/deploy.sh up $(STACK)"
    # Both hash-locked virtualenvs exist before Pulumi runs the program and the pack.
    assert set(deploy["prerequisites"].split()) == {"$(BIN)/.installed", "policy/venv/.installed"}


def _applies_policy_pack(calls: list[str]) -> bool:
    return any(re.search(r" up .*--policy-pack policy( |$)", call) for call in calls)


def test_make_deploy_without_the_pack_would_be_caught(tmp_path: Path, bin_dir: Path) -> None:
    # The former bypass: `pulumi up` without `--policy-pack`. A copy of the script without it fails the check.
    assert _applies_policy_pack(_deploy(tmp_path, bin_dir).calls)
    broken = tmp_path / "scripts" / "deploy.sh"
    broken.parent.mkdir()
    text = SCRIPT.read_text(encoding="utf-8").replace('"${policy[@]}"', "")
    assert text != SCRIPT.read_text(encoding="utf-8")
    broken.write_text(text.replace('cd "$(dirname "$0")/.."', f'cd "{PROJECT_DIR}"'), encoding="utf-8")
    (tmp_path / "calls.log").write_text("", encoding="utf-8")
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "STUB_LOG": str(tmp_path / "calls.log"),
        "PULUMI_CLI_ROOT": str(tmp_path / "cli"),
    }
    subprocess.run([str(bin_dir / "bash"), str(broken), "up", "dev"], env=env, check=True, capture_output=True)
    calls = (tmp_path / "calls.log").read_text(encoding="utf-8").splitlines()
    assert any(" up --stack dev --refresh" in call for call in calls)
    assert not _applies_policy_pack(calls)
