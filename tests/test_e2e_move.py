"""End to end: a volume stack with 6 runs of artifacts moves to a real S3 bucket with scripts/move-artifacts.sh.

The operator command itself runs, against the real engine and the stack's own image; only the
Pulumi CLI, which cannot be installed here, is a stand-in (FAKE_PULUMI): it keeps the stack's
config in a JSON file (`config get|set`), answers `stack output` from the last deployment, and
realises `up` with the local deployer, as every end-to-end test deploys. The store is SeaweedFS
(tests/s3_store.py).

A run is logged between the live pass (`copy`) and `finish`, and a client keeps logging a
metric all through `finish` (server stopped, final pass, redeploy): both must be there after.
Meanwhile the front door (the HTTPS proxy) answers 502, which the MLflow client retries (tests/load.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from mlflow.tracking import MlflowClient

from tests import e2e, load
from tests.s3_store import S3Store
from tests.test_deploy_script import PIN
from tools.stack_config import PROJECT_DIR

pytestmark = pytest.mark.docker

STACK = "move"
PREFIX = "stacks/move"
# A personal stack behind the HTTPS front door (what clients see while the server is stopped is the
# proxy's answer), on ports no other end-to-end stack uses.
OVERRIDES: dict[str, object] = {
    "tlsMode": "internal",
    "httpsPort": 5483,
    "httpPort": 5098,
    "publicHost": "localhost",
    "environmentKind": "dev",
}
RUNS = 6
# A few files per run, as a model's would be: about 0.6 MiB a run.
ARTIFACT_FILES = {
    "model/weights.bin": 512 * 1024,
    "model/MLmodel": 300,
    "eval/predictions.csv": 64 * 1024,
    "metrics.json": 2048,
}

# `pulumi` for scripts/move-artifacts.sh and scripts/deploy.sh: STATE holds config.json and outputs.json.
FAKE_PULUMI = f"""#!{sys.executable}
import json, os, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_PULUMI_STATE"])
args = sys.argv[1:]
stack = args[args.index("--stack") + 1] if "--stack" in args else None
config = json.loads((state / "config.json").read_text())
if args[0] == "version":
    print("v{PIN}")
elif args[:2] == ["config", "get"]:
    if args[2] not in config:
        sys.exit(255)
    value = config[args[2]]
    print(json.dumps(value) if isinstance(value, bool) else value)
elif args[:2] == ["config", "set"]:
    config[args[2]] = args[3]
    (state / "config.json").write_text(json.dumps(config))
elif args[:2] == ["stack", "output"]:
    print(json.loads((state / "outputs.json").read_text())[args[2]])
elif args[0] == "up":
    sets = [f"--set={{key}}={{json.dumps(value)}}" for key, value in config.items()]
    done = subprocess.run(
        [sys.executable, "-m", "tools.local_deploy", "up", "--stack", stack, *sets],
        cwd={str(PROJECT_DIR)!r}, stdout=subprocess.PIPE, check=False,
    )
    if done.returncode:
        sys.exit(done.returncode)
    (state / "outputs.json").write_text(done.stdout.decode().strip().splitlines()[-1])
"""


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture(scope="module")
def volume_stack(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[e2e.Deployed]:
    with e2e.stack(STACK, OVERRIDES) as deployed:
        e2e.report(f"volume stack up to healthy: {deployed.seconds_to_healthy:.1f}s")
        with e2e.trusting(deployed, tmp_path_factory.mktemp("trust")):
            yield deployed


def _log_run(client: MlflowClient, experiment_id: str, directory: Path) -> tuple[str, dict[str, str]]:
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "optimizer", "adam")
    hashes = e2e.log_random_artifacts(client, run_id, directory, ARTIFACT_FILES)
    client.set_terminated(run_id)
    return run_id, hashes


def _pulumi(tmp_path: Path, deployed: e2e.Deployed, store: S3Store) -> dict[str, str]:
    """The fake CLI on PATH, with the stack's config as the operator leaves it before the move: the
    bucket's settings set, artifactStore still volume. Returns the environment the script runs in."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(FAKE_PULUMI, encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    config = {
        **deployed.overrides,
        "artifactBucket": store.bucket,
        "artifactPrefix": PREFIX,
        "artifactEndpoint": store.endpoint,
        "artifactRegion": "us-east-1",
        "artifactPathStyle": True,
        "artifactAccessKeyId": store.access_key_id,
        "artifactSecretAccessKey": store.secret_access_key,
    }
    (state / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (state / "outputs.json").write_text(json.dumps(deployed.outputs, default=str), encoding="utf-8")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_PULUMI_STATE": str(state)}


def _move(step: str, env: dict[str, str]) -> tuple[float, str]:
    """scripts/move-artifacts.sh <step> move: its seconds and its move-artifacts totals line."""
    started = time.monotonic()
    done = subprocess.run(
        [str(PROJECT_DIR / "scripts" / "move-artifacts.sh"), step, STACK],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    totals = [line for line in done.stdout.splitlines() if line.startswith("move-artifacts: ")]
    assert len(totals) == 1, done.stdout
    return time.monotonic() - started, totals[0]


def _counts(totals: str) -> tuple[int, ...]:
    """move_artifacts.py's totals line: files, uploaded, already there, verified."""
    found = re.fullmatch(
        r"move-artifacts: (\d+) files \(.*\) in .*: (\d+) uploaded \(.*\), (\d+) already there; (\d+) verified .*",
        totals,
    )
    assert found, totals
    return tuple(int(count) for count in found.groups())


class _Prober(threading.Thread):
    """What a client without retries sees at the front door: the status of /health every quarter second."""

    def __init__(self, tracking_uri: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{tracking_uri}/health"
        self.stopping = threading.Event()
        self.seen: dict[str, int] = {}

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                answer = str(requests.get(self.url, timeout=5).status_code)
            except requests.RequestException as error:
                answer = type(error).__name__
            self.seen[answer] = self.seen.get(answer, 0) + 1
            time.sleep(0.25)


def test_a_volume_stack_moves_to_the_bucket_and_every_artifact_keeps_resolving(
    volume_stack: e2e.Deployed, s3_store: S3Store, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    client = MlflowClient(volume_stack.tracking_uri)
    experiment_id = client.create_experiment("move-e2e")
    runs = dict(_log_run(client, experiment_id, tmp_path / f"run-{index}") for index in range(RUNS))
    env = _pulumi(tmp_path, volume_stack, s3_store)
    files = len(ARTIFACT_FILES)
    mib = sum(ARTIFACT_FILES.values()) / 2**20

    copy_seconds, copied = _move("copy", env)
    assert _counts(copied) == (RUNS * files, RUNS * files, 0, RUNS * files), copied
    # Logged while the stack still serves from its volume, after the live pass.
    late_id, late_hashes = _log_run(client, experiment_id, tmp_path / "late")
    runs[late_id] = late_hashes
    assert volume_stack.container(docker_client, "mlflow").status == "running"

    # A client logging a metric every half second, as a training job would, through MLflow's default retries.
    training = load.Load(
        volume_stack.tracking_uri,
        clients=1,
        pause=0.5,
        params_every=0,
        retries=load.MLFLOW_DEFAULTS,
        metric_key="during_move",
    )
    prober = _Prober(volume_stack.tracking_uri)
    with training:
        prober.start()
        time.sleep(2)
        finish_seconds, final = _move("finish", env)
        time.sleep(2)
        prober.stopping.set()
    prober.join(timeout=30)
    # While the server was down the proxy answered 502. The local deployer's `up` replaces every
    # container, the proxy's too, which a real `pulumi up` leaves alone (its inputs do not change):
    # a refused connection or two then, or a TLS handshake the stopping proxy cut (SSLError), is
    # the stand-in's, not the move's.
    assert {"200", "502"} <= set(prober.seen) <= {"200", "502", "ConnectionError", "SSLError"}, prober.seen
    # The final pass uploaded only the late run's files and read every object back.
    assert _counts(final) == ((RUNS + 1) * files, files, RUNS * files, (RUNS + 1) * files), final
    logged = training.verify()
    assert (logged.failed, logged.lost) == ([], [])

    # Every artifact of every run, the late one included, downloads through the server with its sha256...
    for run_id, hashes in runs.items():
        target = tmp_path / "downloads" / run_id
        target.mkdir(parents=True)
        local = Path(client.download_artifacts(run_id, "", str(target)))
        found = {
            path.relative_to(local).as_posix(): _sha256(path.read_bytes())
            for path in local.rglob("*")
            if path.is_file()
        }
        assert found == hashes, run_id
        assert client.get_run(run_id).info.artifact_uri == f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"
    # ... from the bucket, under the prefix with the same relative keys: the server no longer mounts the volume.
    in_bucket = {key: _sha256(content) for key, content in s3_store.objects(f"{PREFIX}/{experiment_id}/").items()}
    assert in_bucket == {
        f"{PREFIX}/{experiment_id}/{run_id}/artifacts/{name}": digest
        for run_id, hashes in runs.items()
        for name, digest in hashes.items()
    }
    server = docker_client.containers.get(str(volume_stack.outputs["mlflow_container_name"]))
    assert "/mlflow/artifacts" not in {m["Destination"] for m in server.attrs["Mounts"]}
    assert f"MLFLOW_ARTIFACTS_DESTINATION=s3://{s3_store.bucket}/{PREFIX}" in server.attrs["Config"]["Env"]

    # A new run logs into the bucket; the volume is left exactly as the move found it.
    new_id, new_hashes = _log_run(client, experiment_id, tmp_path / "new")
    root = f"{PREFIX}/{experiment_id}/{new_id}/artifacts/"
    assert {key.removeprefix(root): _sha256(value) for key, value in s3_store.objects(root).items()} == new_hashes
    volume = docker_client.volumes.get(str(volume_stack.outputs["artifacts_volume_name"]))
    kept = Path(volume.attrs["Mountpoint"]) / experiment_id
    assert {path.relative_to(kept).parts[0] for path in kept.rglob("*") if path.is_file()} == set(runs)
    # The README's reclaim: emptied with the stack's image, the volume itself stays declared.
    image, name = str(volume_stack.outputs["mlflow_image_name"]), str(volume_stack.outputs["artifacts_volume_name"])
    reclaim = ["docker", "run", "--rm", "--user", "10001:10001", "--network", "none", "-v", f"{name}:/mlflow/artifacts"]
    subprocess.run(
        [*reclaim, "--entrypoint", "find", image, "/mlflow/artifacts", "-mindepth", "1", "-delete"], check=True
    )
    assert list(Path(volume.attrs["Mountpoint"]).iterdir()) == []

    e2e.report(
        f"move of {RUNS + 1} runs x {files} files ({(RUNS + 1) * mib:.1f} MiB): copy (live) {copy_seconds:.1f}s "
        f"[{copied}]; finish (stop, final pass, switch, healthy) {finish_seconds:.1f}s [{final}]; "
        f"a client logging every 0.5s lost nothing ({logged.acknowledged} steps, {logged.retries} retried "
        f"requests), longest call {logged.longest_call:.1f}s; /health at the front door meanwhile: {prober.seen}"
    )
