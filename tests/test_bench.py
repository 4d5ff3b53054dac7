"""The benchmark's arithmetic and configurations (the benchmark itself runs with `make bench`, never in tests)."""

from __future__ import annotations

import re
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

import bench.__main__ as bench_main
from bench.configs import (
    CONFIGS,
    TRANSFER_CONFIG,
    TRANSFER_INDEX,
    BenchConfig,
    check_targets,
    check_transfer,
    deploy_overrides,
    reported,
)
from bench.load import Target, _session, summarize
from bench.memory import peak_total_memory
from bench.transfer import TransferResult, _client_environment, line
from components.settings import SettingsError, load_settings
from tests.harness import EngineMocks, install
from tests.s3_store import S3Store
from tools.local_deploy import deployer
from tools.local_deploy.common import STACK_LABEL
from tools.stack_config import project_file, stack_config

_SWARM = ("prod-swarm-1", "prod-swarm-3")
# What the bench's SeaweedFS hands a stack whose artifacts are in its bucket (tests/s3_store.py).
_STORE = S3Store("http://172.17.0.1:8333", "mlflow-artifacts", "STACKKEY", "stack-secret", ("a", "b"), ("c", "d"))


def _config(name: str) -> tuple[int, BenchConfig]:
    return next((index, config) for index, config in enumerate(CONFIGS) if config.name == name)


def _overrides(name: str) -> dict[str, object]:
    index, config = _config(name)
    return deploy_overrides(config, index)


def test_summary_counts_acknowledged_batches_and_quantiles() -> None:
    latencies = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    result = summarize(latencies, errors=3, seconds=10, batch_size=50, first_error="HTTP 500: boom")
    assert (result.requests, result.errors, result.metrics) == (100, 3, 5000)
    assert (result.metrics_per_second, result.requests_per_second) == (500.0, 10.0)
    assert result.p50_ms == pytest.approx(50.5)
    assert result.p99_ms == pytest.approx(99.01)
    assert result.first_error == "HTTP 500: boom"


def test_summary_of_no_answer_is_zero() -> None:
    result = summarize([], errors=8, seconds=10, batch_size=100)
    assert (result.requests, result.metrics_per_second, result.p50_ms, result.p99_ms) == (0, 0.0, 0.0, 0.0)


def test_bench_stacks_have_their_own_names_and_ports() -> None:
    overrides = [deploy_overrides(config, index) for index, config in enumerate(CONFIGS)]
    overrides.append(deploy_overrides(TRANSFER_CONFIG, TRANSFER_INDEX))
    assert [config.stack for config in (*CONFIGS, TRANSFER_CONFIG)] == [
        "bench-chapter",
        "bench-dev",
        "bench-prod-noauth",
        "bench-prod",
        "bench-prod-swarm-1",
        "bench-prod-swarm-3",
        "bench-prod-s3",
    ]
    ports = [value for item in overrides for key, value in item.items() if key.endswith("Port")]
    assert len(ports) == 3 * len(overrides)
    assert len(ports) == len(set(ports))
    assert 5000 not in ports
    assert all(item["publicHost"] == "localhost" for item in overrides)
    # Loopback, except where swarm publishes on every interface (its rules refuse anything else).
    stacks = [config.stack for config in (*CONFIGS, TRANSFER_CONFIG)]
    binds = {stack: item["bindAddress"] for stack, item in zip(stacks, overrides, strict=True)}
    assert binds == {
        "bench-chapter": "127.0.0.1",
        "bench-dev": "127.0.0.1",
        "bench-prod-noauth": "127.0.0.1",
        "bench-prod": "127.0.0.1",
        "bench-prod-swarm-1": "0.0.0.0",
        "bench-prod-swarm-3": "0.0.0.0",
        "bench-prod-s3": "127.0.0.1",
    }
    # Only keys the program declares: nothing a future Pulumi.yaml would not read.
    assert all(set(item) <= set(project_file()["config"]) for item in overrides)


def test_bench_configs_take_the_committed_stack_values() -> None:
    chapter, dev, reference, prod = (_overrides(name) for name in ("chapter", "dev", "prod-noauth", "prod"))
    assert (chapter["workers"], chapter["authEnabled"]) == (4, False)
    assert (reference["workers"], reference["authEnabled"]) == (prod["workers"], False)
    assert (prod["workers"], prod["authEnabled"], prod["mlflowMemoryMb"], prod["postgresMemoryMb"]) == (
        4,
        True,
        4096,
        4096,
    )
    assert dev == {
        "workers": 4,
        "mlflowMemoryMb": 1536,
        "tlsMode": "off",
        "environmentKind": "dev",
        "publicHost": "localhost",
        "bindAddress": "127.0.0.1",
        "protectData": False,
        "hostPort": 5720,
        "httpPort": 5721,
        "httpsPort": 5722,
    }
    # The production path goes through the HTTPS front door, as a real client's does.
    assert (stack_config("bench-prod", prod)["tlsMode"], prod["httpsPort"]) == ("internal", 5742)


def _row(metrics: float, p99: float, errors: int = 0, first: float | None = None) -> dict[str, float]:
    return {
        "metrics_per_second": metrics,
        "p99_ms": p99,
        "errors": errors,
        "first_window_metrics_per_second": metrics if first is None else first,
    }


def test_targets_pass_and_fail_on_the_ratios() -> None:
    results = {
        "chapter": _row(6000, 400),
        "dev": _row(5900, 380),
        "prod-noauth": _row(6000, 400),
        "prod": _row(4900, 790, first=3800),
        "prod-swarm-1": _row(4400, 900),
        "prod-swarm-3": _row(4000, 950, first=3000),
    }
    verdicts = {check.name: check.passed for check in check_targets(results)}
    assert verdicts == {
        "production path / same stack without auth, metrics/s": True,
        "production path p99 / same stack without auth p99 (at most)": True,
        "production path errors (at most)": True,
        "production path on swarm, 1 replica / same stack on containers, metrics/s": False,
        "dev defaults / chapter's configuration, metrics/s": False,
        "chapter: first 10 s after up / warm, metrics/s": True,
        "dev: first 10 s after up / warm, metrics/s": True,
        "prod-noauth: first 10 s after up / warm, metrics/s": True,
        "prod: first 10 s after up / warm, metrics/s": False,
        "prod-swarm-1: first 10 s after up / warm, metrics/s": True,
        "prod-swarm-3: first 10 s after up / warm, metrics/s": False,
    }


def test_targets_fail_on_errors_and_slow_tails() -> None:
    checks = check_targets({"prod-noauth": _row(6000, 400), "prod": _row(5000, 801, errors=1)})
    failed = {check.name for check in checks if not check.passed}
    assert failed == {
        "production path p99 / same stack without auth p99 (at most)",
        "production path errors (at most)",
    }


def test_the_stacks_own_ca_is_used_even_when_the_environment_names_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    session = _session(Target("https://localhost:5732", None, "/tmp/bench/ca.pem"))
    settings = session.merge_environment_settings("https://localhost:5732/health", {}, None, None, None)
    assert settings["verify"] == "/tmp/bench/ca.pem"
    assert settings["proxies"] == {}


def test_with_stand_ins_the_bench_runs_them_not_the_stack_files_pinned_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_DEPLOY_STANDINS", "1")
    for name in ("prod", *_SWARM):
        monkeypatch.setenv("LOCAL_DEPLOY_STANDINS", "1")
        assert "@sha256:" in str(stack_config("prod")["postgresImage"])
        assert not {"postgresImage", "proxyImage", "baseImage"} & set(_overrides(name))
        monkeypatch.setenv("LOCAL_DEPLOY_STANDINS", "0")
        assert _overrides(name)["postgresImage"] == stack_config("prod")["postgresImage"]


def test_the_transfer_stack_is_the_production_path() -> None:
    transfer = deploy_overrides(TRANSFER_CONFIG, TRANSFER_INDEX)
    assert transfer == deploy_overrides(_config("prod")[1], TRANSFER_INDEX)
    settings = stack_config("bench-prod-s3", transfer)
    assert (settings["tlsMode"], settings["authEnabled"], settings["workers"], transfer["httpsPort"]) == (
        "internal",
        True,
        4,
        5772,
    )


def _transfer(
    up: float, down: float, direct_up: float = 100.0, direct_down: float = 200.0, parts: float = 90.0
) -> dict[str, float]:
    return {
        "production_multipart_up_mb_per_second": parts,
        "production_up_mb_per_second": up,
        "production_down_mb_per_second": down,
        "direct_up_mb_per_second": direct_up,
        "direct_down_mb_per_second": direct_down,
    }


def test_transfer_targets_are_half_of_direct_each_way() -> None:
    checks = check_transfer(_transfer(up=50.0, down=99.0))
    assert [(check.name, round(check.measured, 3), check.limit, check.passed) for check in checks] == [
        ("production path / direct boto3 to the same store, up MB/s", 0.5, 0.5, True),
        ("production path / direct boto3 to the same store, down MB/s", 0.495, 0.5, False),
        ("production path in parts (multipart) / direct boto3 to the same store, up MB/s", 0.9, 0.5, True),
    ]
    assert [check.passed for check in check_transfer(_transfer(up=49.0, down=100.0))] == [False, True, True]
    assert [check.passed for check in check_transfer(_transfer(50.0, 100.0, parts=49.9))] == [True, True, False]
    # A direct transfer that measured nothing fails the target rather than dividing by zero.
    assert [check.passed for check in check_transfer(_transfer(50.0, 100.0, direct_up=0.0))] == [False, True, False]


def test_transfer_rates_are_megabytes_per_second_over_every_round() -> None:
    result = TransferResult(256, 3, 8.0, 4.0, 2.0, 1.0, 700.4, 3.0)
    assert result.as_dict() == {
        "mib": 256,
        "rounds": 3,
        "production_up_mb_per_second": 100.7,
        "production_down_mb_per_second": 201.3,
        "production_multipart_up_mb_per_second": 268.4,
        "direct_up_mb_per_second": 402.7,
        "direct_down_mb_per_second": 805.3,
        "server_memory_peak_mib": 700,
    }
    assert line(result.as_dict()) == (
        "artifact transfer, 256 MiB x 3: production path up 100.7 MB/s, down 201.3 MB/s, up in parts 268.4 MB/s; "
        "direct boto3 up 402.7 MB/s, down 805.3 MB/s; server memory peak 700 MiB"
    )


def test_the_transfer_client_logs_in_and_trusts_the_stacks_ca() -> None:
    assert _client_environment(Target("https://localhost:5752", ("admin", "pw"), "/tmp/bench/ca.pem")) == {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "MLFLOW_TRACKING_SERVER_CERT_PATH": "/tmp/bench/ca.pem",
    }
    assert _client_environment(Target("http://127.0.0.1:5720", None, True)) == {}


def test_the_swarm_configs_are_the_production_path_as_swarm_services() -> None:
    prod = _overrides("prod")
    for name, replicas in zip(_SWARM, (1, 3), strict=True):
        swarm = _overrides(name)
        differs = {key for key in {*prod, *swarm} if prod.get(key) != swarm.get(key)}
        # Auth, workers, memory, the TLS front door: the prod stack's; only the engine, its replicas, the bind
        # address swarm requires and the stack's own ports differ.
        assert differs == {"engine", "mlflowReplicas", "bindAddress", "hostPort", "httpPort", "httpsPort"}, name
        assert (swarm["engine"], swarm["mlflowReplicas"], swarm["bindAddress"]) == ("swarm", replicas, "0.0.0.0")
        settings = stack_config(f"bench-{name}", swarm)
        assert (settings["authEnabled"], settings["tlsMode"], settings["workers"]) == (True, "internal", 4)
    # Volume artifacts for one replica; three need the bucket, whose keys come from the store when it runs.
    assert [_config(name)[1].artifacts_in_bucket for name in _SWARM] == [False, True]
    assert "artifactStore" not in _overrides("prod-swarm-3")


@pytest.mark.parametrize("name", _SWARM)
def test_the_swarm_configs_pass_the_settings_rules_with_the_store_they_get(name: str) -> None:
    _, config = _config(name)
    overrides = _overrides(name) | (_STORE.stack_settings(config.stack) if config.artifacts_in_bucket else {})
    install(EngineMocks(), config.stack, overrides)
    settings = load_settings()
    assert (settings.cluster.swarm, settings.cluster.replicas) == (True, 1 if name == "prod-swarm-1" else 3)
    assert settings.server.auth_enabled
    assert settings.artifacts.in_bucket is config.artifacts_in_bucket
    # The bench's loopback bind address would be refused on swarm: the config's own override is what lets it deploy.
    install(EngineMocks(), config.stack, overrides | {"bindAddress": "127.0.0.1"})
    with pytest.raises(SettingsError, match=re.escape("'bindAddress' has the value '127.0.0.1'")):
        load_settings()


def test_three_replicas_without_the_bucket_are_refused() -> None:
    install(EngineMocks(), "bench-prod-swarm-3", _overrides("prod-swarm-3"))
    with pytest.raises(SettingsError, match="'artifactStore'"):
        load_settings()


def test_one_swarm_replica_must_keep_nine_tenths_of_the_production_paths_metrics() -> None:
    def swarm_check(swarm: float, prod: float = 5000) -> tuple[float, float, bool]:
        results = {"prod": _row(prod, 500), "prod-swarm-1": _row(swarm, 600)}
        (check,) = [check for check in check_targets(results) if "swarm" in check.name and "first" not in check.name]
        assert check.name == "production path on swarm, 1 replica / same stack on containers, metrics/s"
        return round(check.measured, 3), check.limit, check.passed

    assert swarm_check(4500) == (0.9, 0.9, True)
    assert swarm_check(4495) == (0.899, 0.9, False)
    assert swarm_check(6000) == (1.2, 0.9, True)
    # Nothing measured on the containers: a failure, not a division by zero.
    assert swarm_check(4500, prod=0) == (0.0, 0.9, False)
    # Without the production path there is nothing to compare with; without swarm-1, nothing to compare.
    names = {check.name for check in check_targets({"prod-swarm-1": _row(4500, 600)})}
    assert names == {"prod-swarm-1: first 10 s after up / warm, metrics/s"}
    assert not any(
        "swarm" in check.name for check in check_targets({"prod": _row(5000, 500)}) if "first" not in check.name
    )


def test_three_replicas_against_one_is_reported_never_targeted() -> None:
    results = {"prod-swarm-1": _row(4000, 600), "prod-swarm-3": _row(3000, 700)}
    (figure,) = reported(results)
    assert (figure.name, figure.measured) == ("production path on swarm, 3 replicas / 1 replica, metrics/s", 0.75)
    assert (
        figure.line() == "----  production path on swarm, 3 replicas / 1 replica, metrics/s: 0.75 (reported, no target)"
    )
    assert not any("3 replicas" in check.name for check in check_targets(results))
    assert reported({"prod-swarm-1": _row(0, 0), "prod-swarm-3": _row(3000, 700)})[0].measured == 0.0
    assert reported({"prod-swarm-3": _row(3000, 700)}) == []
    assert reported({"prod-swarm-1": _row(3000, 700), "prod": _row(3000, 700)}) == []


class _UpReachedError(Exception):
    """Stops `deploy` at `up`, after what came before was recorded."""


def _deploy_until_up(
    name: str, monkeypatch: pytest.MonkeyPatch, started_store: list[str]
) -> tuple[list[str], dict[str, object]]:
    calls: list[str] = []
    given: dict[str, object] = {}

    def swarm_init(labels: dict[str, str]) -> None:
        calls.append(f"swarm-init {labels}")

    def up(stack: str, overrides: dict[str, object]) -> dict[str, object]:
        calls.append(f"up {stack}")
        given.update(overrides)
        raise _UpReachedError

    class Store:
        def get(self) -> S3Store:
            started_store.append(name)
            return _STORE

    monkeypatch.setattr("tools.local_deploy.swarm.swarm_init", swarm_init)
    monkeypatch.setattr(deployer, "down", lambda stack: calls.append(f"down {stack}"))
    monkeypatch.setattr(deployer, "up", up)
    index, config = _config(name)
    nothing: Any = None
    with ExitStack() as resources, pytest.raises(_UpReachedError):
        bench_main.deploy(config, index, nothing, nothing, nothing, resources, Path("/nonexistent"), Store())  # type: ignore[arg-type]
    return calls, given


def test_a_swarm_config_makes_the_engine_a_swarm_manager_before_anything_of_its_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []
    calls, given = _deploy_until_up("prod-swarm-1", monkeypatch, started)
    label = str(stack_config("prod")["postgresNodeLabel"])
    assert label == "mlflow-platform.postgres=true"
    # The Postgres node label the stack pins its database to; the leftovers' `down` (and its teardown) after.
    assert calls == [
        "swarm-init {'mlflow-platform.postgres': 'true'}",
        "down bench-prod-swarm-1",
        "up bench-prod-swarm-1",
        "down bench-prod-swarm-1",
    ]
    assert (given["engine"], given["mlflowReplicas"], "artifactStore" in given) == ("swarm", 1, False)
    calls, given = _deploy_until_up("prod-swarm-3", monkeypatch, started)
    assert calls[0] == "swarm-init {'mlflow-platform.postgres': 'true'}"
    assert {key: given[key] for key in ("artifactStore", "artifactPrefix", "artifactEndpoint")} == {
        "artifactStore": "s3",
        "artifactPrefix": "bench-prod-swarm-3",
        "artifactEndpoint": "http://172.17.0.1:8333",
    }
    assert given["mlflowReplicas"] == 3
    # A standalone config neither touches the swarm nor starts the store.
    calls, given = _deploy_until_up("prod", monkeypatch, started)
    assert calls == ["down bench-prod", "up bench-prod", "down bench-prod"]
    assert started == ["prod-swarm-3"]


class _FakeContainer:
    def __init__(self, mib: float, fail: bool = False) -> None:
        self.mib, self.fail = mib, fail

    def stats(self, stream: bool, one_shot: bool) -> dict[str, Any]:
        if self.fail:
            raise docker.errors.NotFound("gone")
        return {"memory_stats": {"usage": int((self.mib + 10) * 1024 * 1024), "stats": {"inactive_file": 10 << 20}}}


def test_a_services_memory_is_the_peak_of_its_replicas_sum() -> None:
    sampled = threading.Event()
    rounds = iter(
        [
            [_FakeContainer(100), _FakeContainer(200)],
            [_FakeContainer(100), _FakeContainer(200), _FakeContainer(50, fail=True)],  # a task replaced: skipped
            [_FakeContainer(150), _FakeContainer(120), _FakeContainer(90)],
            [_FakeContainer(400)],
        ]
    )

    def containers() -> list[_FakeContainer]:
        found = next(rounds, None)
        if found is None:
            sampled.set()
            return []
        return found

    with peak_total_memory(containers, interval=0.01) as peak:
        assert sampled.wait(10)
        time.sleep(0.05)
    assert peak["mib"] == pytest.approx(400)
    with peak_total_memory(lambda: [_FakeContainer(100), _FakeContainer(200)], interval=0.01) as both:
        deadline = time.monotonic() + 10
        while both["mib"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert both["mib"] == pytest.approx(300)


def test_a_workloads_containers_are_a_container_or_a_services_running_tasks() -> None:
    listed: list[dict[str, Any]] = []

    def tasks(filters: dict[str, Any]) -> list[str]:
        listed.append(filters)
        return ["task 1", "task 2"]

    client = SimpleNamespace(containers=SimpleNamespace(get=lambda name: f"container {name}", list=tasks))
    nothing: Any = client
    standalone = bench_main.workload_containers(nothing, {"mlflow_container_name": "m"}, "mlflow_container_name")
    assert standalone() == ["container m"]
    assert listed == []
    swarm = bench_main.workload_containers(
        nothing, {"engine": "swarm", "mlflow_container_name": "svc"}, "mlflow_container_name"
    )
    assert swarm() == ["task 1", "task 2"]
    assert listed == [{"label": "com.docker.swarm.service.name=svc", "status": "running"}]


def test_anything_of_a_bench_stack_left_on_the_engine_is_named() -> None:
    found = [
        ("service", "mlflow-platform-bench-prod-swarm-3-mlflow", {STACK_LABEL: "bench-prod-swarm-3"}),
        ("secret", "admin-password-1a2b3c4", {STACK_LABEL: "bench-prod-swarm-1"}),
        ("volume", "mlflow-platform-prod-postgres", {STACK_LABEL: "prod"}),
        ("network", "mlflow-platform-swarm", {STACK_LABEL: "swarm"}),
        ("config", "caddyfile-9f8e7d6", {"other": "bench-x"}),
    ]
    assert bench_main.bench_leftovers(found) == [
        "secret admin-password-1a2b3c4",
        "service mlflow-platform-bench-prod-swarm-3-mlflow",
    ]
    assert bench_main.bench_leftovers(found[2:]) == []


def test_the_table_shows_each_configurations_replicas() -> None:
    row = {
        "config": "prod-swarm-3",
        "replicas": 3,
        "workers": 4,
        "auth": True,
        "metrics_per_second": 4321.4,
        "requests_per_second": 43.2,
        "p50_ms": 150.2,
        "p99_ms": 480.7,
        "errors": 0,
        "server_memory_peak_mib": 2100,
        "first_window_metrics_per_second": 3999.6,
        "seconds_up_to_healthy": 61.26,
        "image_size_mb": 640,
    }
    header, rule, line_ = bench_main.table([row]).splitlines()
    assert header.startswith("| config | replicas | workers | auth | metrics/s |")
    assert rule.count("---") == header.count("|") - 1 == line_.count("|") - 1
    assert line_ == "| prod-swarm-3 | 3 | 4 | on | 4,321 | 43.2 | 150 | 481 | 0 | 2100 | 4,000 | 61.3 | 640 |"
