"""scripts/move-artifacts.sh against stub `pulumi` and `docker`: what it runs, in which order, and where the key goes.

- `pulumi` reads config keys from files in STUB_CONFIG (a missing file is an unset key), writes
  `config set` there, answers `stack output <name>` with `out-<name>`, records every call;
- `docker` records every call, and for `run` what it got on stdin; STUB_RUN_EXIT is a pass's exit code.
The end-to-end test (tests/test_e2e_move.py) runs the same script against the real engine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_deploy_script import PIN, SYSTEM_TOOLS, _executable
from tools.stack_config import PROJECT_DIR

SCRIPT = PROJECT_DIR / "scripts" / "move-artifacts.sh"
SECRET = "s3cr3t-Key/with+chars"
STUB_PULUMI = f"""#!/bin/sh
printf '%s\\n' "pulumi $*" >> "$STUB_LOG"
case "$1 $2" in
  "version "*) echo "v{PIN}" ;;
  "config get") if [ -f "$STUB_CONFIG/$3" ]; then cat "$STUB_CONFIG/$3"; else exit 255; fi ;;
  "config set") printf '%s' "$4" > "$STUB_CONFIG/$3" ;;
  "stack output") echo "out-$3" ;;
esac
exit 0
"""
STUB_DOCKER = """#!/bin/sh
printf '%s\\n' "docker $*" >> "$STUB_LOG"
if [ "$1" = run ]; then
  cat >> "$STUB_STDIN"
  exit "${STUB_RUN_EXIT:-0}"
fi
exit 0
"""
BUCKET_CONFIG = {
    "artifactBucket": "ml-artifacts",
    "artifactPrefix": "/stacks/prod/",
    "artifactEndpoint": "https://s3.example.internal:9000/",
    "artifactRegion": "eu-central-1",
    "artifactPathStyle": "true",
    "artifactAccessKeyId": "AKIAMOVE",
    "artifactSecretAccessKey": SECRET,
}
# What a pass runs, with BUCKET_CONFIG: everything the stack's hardened containers get, the volume read-only.
PASS = (
    "docker run --rm -i --name out-mlflow_container_name-move-artifacts --network out-network_name "
    "--user 10001:10001 --read-only --cap-drop ALL --security-opt no-new-privileges "
    "--memory 512m --memory-swap 512m --pids-limit 256 --tmpfs /tmp:rw,noexec,nosuid,nodev,size=16m "
    "--volume out-artifacts_volume_name:/mlflow/artifacts:ro "
    "--env MLFLOW_ARTIFACTS_DESTINATION=s3://ml-artifacts/stacks/prod --env HOME=/tmp "
    "--env MLFLOW_S3_ENDPOINT_URL=https://s3.example.internal:9000 --env AWS_DEFAULT_REGION=eu-central-1 "
    "--env MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE=path "
    "--env AWS_SHARED_CREDENTIALS_FILE=/tmp/artifact-store-credentials "
    "--entrypoint /bin/sh out-mlflow_image_name -c "
    "umask 077 && cat >/tmp/artifact-store-credentials && exec python /opt/mlflow-entrypoint/move_artifacts.py"
)
READS = [
    *(
        f"pulumi config get {key} --stack prod"
        for key in ("engine", "artifactStore", "artifactBucket", "artifactPrefix")
    ),
    *(
        f"pulumi config get {key} --stack prod"
        for key in ("artifactEndpoint", "artifactRegion", "artifactPathStyle", "artifactAccessKeyId")
    ),
    "pulumi config get artifactCaCertificate --stack prod",
    *(
        f"pulumi stack output {name} --stack prod"
        for name in ("mlflow_image_name", "artifacts_volume_name", "network_name", "mlflow_container_name")
    ),
    "pulumi stack output gc_container_name --stack prod",
]


@dataclass
class Run:
    returncode: int
    stderr: str
    calls: list[str]
    stdin: str
    config: dict[str, str]


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in (*SYSTEM_TOOLS, "mktemp", "rm"):
        found = shutil.which(tool)
        assert found, tool
        (directory / tool).symlink_to(found)
    _executable(directory / "pulumi", STUB_PULUMI)
    _executable(directory / "docker", STUB_DOCKER)
    return directory


def _move(tmp_path: Path, bin_dir: Path, step: str, config: dict[str, str], run_exit: int = 0) -> Run:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    for key, value in config.items():
        (config_dir / key).write_text(value, encoding="utf-8")
    log, stdin = tmp_path / "calls.log", tmp_path / "stdin"
    log.write_text("", encoding="utf-8")
    stdin.write_text("", encoding="utf-8")
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_STDIN": str(stdin),
        "STUB_CONFIG": str(config_dir),
        "STUB_RUN_EXIT": str(run_exit),
    }
    result = subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT), step, "prod"], env=env, capture_output=True, text=True, timeout=60
    )
    calls = log.read_text(encoding="utf-8").splitlines()
    stored = {path.name: path.read_text(encoding="utf-8") for path in config_dir.iterdir()}
    return Run(result.returncode, result.stderr, calls, stdin.read_text(encoding="utf-8"), stored)


def test_copy_runs_one_pass_with_the_key_pair_on_stdin_only(tmp_path: Path, bin_dir: Path) -> None:
    run = _move(tmp_path, bin_dir, "copy", BUCKET_CONFIG)
    assert run.returncode == 0, run.stderr
    assert run.calls == [*READS, "pulumi config get artifactSecretAccessKey --stack prod", PASS]
    assert run.stdin == f"[default]\naws_access_key_id = AKIAMOVE\naws_secret_access_key = {SECRET}\n"
    assert not any(SECRET in call for call in run.calls)
    # The server keeps serving: nothing stopped, nothing switched.
    assert "artifactStore" not in run.config


def test_finish_stops_the_server_and_gc_runs_the_final_pass_then_switches(tmp_path: Path, bin_dir: Path) -> None:
    run = _move(tmp_path, bin_dir, "finish", {**BUCKET_CONFIG, "artifactStore": "volume"})
    assert run.returncode == 0, run.stderr
    assert run.calls == [
        *READS,
        "docker stop --time 60 out-mlflow_container_name out-gc_container_name",
        "pulumi config get artifactSecretAccessKey --stack prod",
        PASS,
        "pulumi config set artifactStore s3 --stack prod",
        # scripts/deploy.sh up prod: the same CLI, policy pack and refresh as `make deploy`.
        "docker info",
        "pulumi version",
        "pulumi whoami",
        "pulumi stack select --create prod",
        # A swarm stack is checked against the engine first (this one is standalone).
        "pulumi config get engine --stack prod",
        "pulumi up --stack prod --refresh --policy-pack policy",
        "pulumi stack output tracking_uri --stack prod",
    ]
    assert run.config["artifactStore"] == "s3"
    assert "moved: prod serves its artifacts from s3://ml-artifacts/stacks/prod" in run.stderr


def test_a_failed_final_pass_restarts_the_stack_on_its_volume_and_switches_nothing(
    tmp_path: Path, bin_dir: Path
) -> None:
    run = _move(tmp_path, bin_dir, "finish", BUCKET_CONFIG, run_exit=1)
    assert run.returncode == 1
    assert run.calls[-2:] == [PASS, "docker start out-mlflow_container_name out-gc_container_name"]
    assert "artifactStore" not in run.config
    assert "error: the final pass failed; prod stays on its volume" in run.stderr


def test_a_stack_already_on_a_bucket_is_refused_before_anything_runs(tmp_path: Path, bin_dir: Path) -> None:
    run = _move(tmp_path, bin_dir, "finish", {**BUCKET_CONFIG, "artifactStore": "s3"})
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "error: stack prod has config key 'artifactStore' 's3': its artifacts are not in its volume"
    )
    assert not any(call.startswith("docker") for call in run.calls)


def test_a_swarm_stack_is_refused_naming_engine_before_anything_runs(tmp_path: Path, bin_dir: Path) -> None:
    run = _move(tmp_path, bin_dir, "copy", {**BUCKET_CONFIG, "engine": "swarm"})
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "error: stack prod has config key 'engine' 'swarm': moving artifacts stops and runs containers on one "
        "Docker host: accepted: standalone (on swarm, set artifactStore s3 before the first deploy)"
    )
    assert run.calls == ["pulumi config get engine --stack prod"]


def test_without_a_bucket_it_says_to_set_the_settings_first(tmp_path: Path, bin_dir: Path) -> None:
    run = _move(tmp_path, bin_dir, "copy", {})
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "error: stack prod has config key 'artifactBucket' empty: set the bucket's settings first "
        '(README "Moving a stack\'s artifacts to a bucket")'
    )
    assert not any(call.startswith("docker") for call in run.calls)


def test_an_instance_role_gets_no_credentials_file_and_a_private_ca_is_mounted(tmp_path: Path, bin_dir: Path) -> None:
    config = {
        key: value
        for key, value in BUCKET_CONFIG.items()
        if key not in ("artifactAccessKeyId", "artifactSecretAccessKey")
    }
    run = _move(tmp_path, bin_dir, "copy", {**config, "artifactCaCertificate": "-----BEGIN CERTIFICATE-----"})
    assert run.returncode == 0, run.stderr
    passed = run.calls[-1]
    assert "AWS_SHARED_CREDENTIALS_FILE" not in passed
    assert "pulumi config get artifactSecretAccessKey --stack prod" not in run.calls
    assert run.stdin == ""
    assert "/ca.pem:/run/secrets/artifact-store-ca.pem:ro --env AWS_CA_BUNDLE=/run/secrets/artifact-store-ca.pem " in (
        passed
    )


def test_an_unknown_step_prints_the_usage(tmp_path: Path, bin_dir: Path) -> None:
    run = _move(tmp_path, bin_dir, "switch", BUCKET_CONFIG)
    assert run.returncode == 2
    assert run.stderr.strip() == "usage: scripts/move-artifacts.sh copy|finish STACK"
    assert run.calls == []


def test_make_move_artifacts_runs_the_script_with_the_step_and_stack() -> None:
    makefile = (PROJECT_DIR / "Makefile").read_text(encoding="utf-8")
    target = re.search(r"^move-artifacts:(?P<prerequisites>.*)\n(?P<recipe>(?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target
    assert target["recipe"].splitlines()[-1].strip() == "scripts/move-artifacts.sh $(STEP) $(STACK)"
    # `finish` deploys: both hash-locked virtualenvs, as `make deploy` needs.
    assert set(target["prerequisites"].split()) == {"$(BIN)/.installed", "policy/venv/.installed"}
