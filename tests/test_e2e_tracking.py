"""End to end: the dev stack deployed into a real Docker engine, used with the real MLflow client.

One stack for the module; the tests run in file order and build on each other:
seed data, read it back, restart each container, redeploy with the volumes kept.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import docker
import pytest
import requests
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tests import e2e
from tools.local_deploy import deployer

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def dev(docker_client: docker.DockerClient) -> e2e.Deployed:
    # The committed dev stack, shared with tests/test_e2e_ui.py (one deploy for both).
    deployed = e2e.shared("dev")
    e2e.report(f"up to healthy: {deployed.seconds_to_healthy:.1f}s (dev stack)")
    return deployed


@pytest.fixture(scope="module")
def seed(dev: e2e.Deployed, tmp_path_factory: pytest.TempPathFactory) -> e2e.Seed:
    return e2e.write_seed(MlflowClient(dev.tracking_uri), tmp_path_factory.mktemp("artifact"))


def _verify_seed(tracking_uri: str, seed: e2e.Seed, download_to: Path) -> None:
    e2e.verify_seed(MlflowClient(tracking_uri), seed, download_to)


def test_health_answers_on_the_tracking_uri(dev: e2e.Deployed) -> None:
    response = requests.get(f"{dev.tracking_uri}/health", timeout=10)
    assert (response.status_code, response.text.strip()) == (200, "OK")
    assert dev.tracking_uri == "http://localhost:5000"


def test_data_reads_back_exactly(
    dev: e2e.Deployed, seed: e2e.Seed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _verify_seed(dev.tracking_uri, seed, tmp_path / "download")
    # Proxied artifacts: nothing was written beside the client (the chapter's mlruns/ path).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download"]


def test_artifact_is_in_the_artifacts_volume(
    dev: e2e.Deployed, seed: e2e.Seed, docker_client: docker.DockerClient
) -> None:
    volume = str(dev.outputs["artifacts_volume_name"])
    # Read the volume from a throwaway container: the file must be there, byte for byte.
    script = (
        "import hashlib, pathlib; "
        "[print(p.relative_to('/v'), hashlib.sha256(p.read_bytes()).hexdigest()) "
        "for p in pathlib.Path('/v').rglob('weights.bin')]"
    )
    output = docker_client.containers.run(
        str(dev.outputs["mlflow_image_name"]),
        entrypoint=["python", "-c", script],
        command=[],
        volumes={volume: {"bind": "/v", "mode": "ro"}},
        network_mode="none",
        remove=True,
    ).decode()
    [line] = output.strip().splitlines()
    path, digest = line.split()
    assert path == f"{seed.experiment_id}/{seed.run_id}/artifacts/{seed.artifact_name}"
    assert digest == seed.artifact_sha256


def test_restarts_lose_nothing(
    dev: e2e.Deployed, seed: e2e.Seed, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    dev.container(docker_client, "mlflow").restart(timeout=30)
    e2e.report(f"MLflow restart: serving again after {e2e.wait_until_serving(dev.tracking_uri):.1f}s")
    _verify_seed(dev.tracking_uri, seed, tmp_path / "after-mlflow-restart")

    dev.container(docker_client, "postgres").restart(timeout=30)
    e2e.report(f"Postgres restart: MLflow serving again after {e2e.wait_until_serving(dev.tracking_uri):.1f}s")
    client = MlflowClient(dev.tracking_uri)
    client.log_metric(seed.run_id, "after_postgres_restart", 1.0, timestamp=0, step=0)
    assert [m.value for m in client.get_metric_history(seed.run_id, "after_postgres_restart")] == [1.0]
    seed.metrics.append(Metric("after_postgres_restart", 1.0, 0, 0))
    _verify_seed(dev.tracking_uri, seed, tmp_path / "after-postgres-restart")


def test_host_sees_mlflow_on_loopback_only_and_postgres_not_at_all(
    dev: e2e.Deployed, docker_client: docker.DockerClient
) -> None:
    postgres = dev.container(docker_client, "postgres")
    assert not postgres.attrs["HostConfig"]["PortBindings"]
    assert not any(postgres.attrs["NetworkSettings"]["Ports"].values())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 5432), timeout=3).close()

    mlflow_container = dev.container(docker_client, "mlflow")
    bindings = mlflow_container.attrs["HostConfig"]["PortBindings"]
    assert bindings == {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5000"}]}
    # The host's own non-loopback address does not answer on the port.
    outward = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outward.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outward interface
    host_ip = outward.getsockname()[0]
    outward.close()
    assert not host_ip.startswith("127.")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host_ip, 5000), timeout=3).close()


def test_no_secret_in_inspect_or_logs(dev: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    secrets = dev.secrets()
    files = {
        "postgres": ("/run/secrets/postgres-superuser-password", "400 999"),
        "mlflow": ("/run/secrets/postgres-password", "400 10001"),
        "backup": ("/run/secrets/pgpass", "400 10001"),
        "gc": ("/run/secrets/postgres-password", "400 10001"),
    }
    for role, (path, expected_mode) in files.items():
        container = dev.container(docker_client, role)
        config = container.attrs["Config"]
        exposed = {key: config.get(key) for key in ("Env", "Cmd", "Entrypoint", "Labels")}
        whole = json.dumps(container.attrs)
        logs = container.logs().decode(errors="replace")
        for secret in secrets:
            assert secret not in json.dumps(exposed), f"{role}: secret in Env/Cmd/Entrypoint/Labels"
            assert secret not in whole, f"{role}: secret somewhere in docker inspect"
            assert secret not in logs, f"{role}: secret in the container log"
        # The password arrived as a file only its user can read (Postgres gets only its superuser's).
        mode = container.exec_run(["stat", "-c", "%a %u", path]).output.decode().strip()
        assert mode == expected_mode, role


def test_redeploy_with_volumes_kept_finds_everything(
    dev: e2e.Deployed, seed: e2e.Seed, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    image = docker_client.images.get(str(dev.outputs["mlflow_image_name"]))
    e2e.report(f"MLflow image {image.tags[0]}: {image.attrs['Size'] / 1e6:.0f} MB")
    deployer.down(dev.stack, keep_volumes=True)
    assert not docker_client.containers.list(all=True, filters={"label": f"com.pulumi.stack={dev.stack}"})
    started = time.monotonic()
    again = e2e.redeploy(dev)
    e2e.report(f"redeploy with kept volumes: healthy after {time.monotonic() - started:.1f}s")
    # As after `pulumi destroy`: the random resources were dropped, so the passwords are
    # new, and the bootstrap put them in force on the kept data.
    assert again.db_password != dev.db_password
    _verify_seed(again.tracking_uri, seed, tmp_path / "after-redeploy")
