"""The benchmark's arithmetic and configurations (the benchmark itself runs with `make bench`, never in tests)."""

from __future__ import annotations

import pytest

from bench.configs import CONFIGS, TRANSFER_CONFIG, TRANSFER_INDEX, check_targets, check_transfer, deploy_overrides
from bench.load import Target, _session, summarize
from bench.transfer import TransferResult, _client_environment, line
from tools.stack_config import project_file, stack_config


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
        "bench-prod-s3",
    ]
    ports = [value for item in overrides for key, value in item.items() if key.endswith("Port")]
    assert len(ports) == len(set(ports))
    assert 5000 not in ports
    assert all(item["publicHost"] == "localhost" and item["bindAddress"] == "127.0.0.1" for item in overrides)
    # Only keys the program declares: nothing a future Pulumi.yaml would not read.
    assert all(set(item) <= set(project_file()["config"]) for item in overrides)


def test_bench_configs_take_the_committed_stack_values() -> None:
    chapter, dev, reference, prod = (deploy_overrides(config, index) for index, config in enumerate(CONFIGS))
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
    }
    verdicts = {check.name: check.passed for check in check_targets(results)}
    assert verdicts == {
        "production path / same stack without auth, metrics/s": True,
        "production path p99 / same stack without auth p99 (at most)": True,
        "production path errors (at most)": True,
        "dev defaults / chapter's configuration, metrics/s": False,
        "chapter: first 10 s after up / warm, metrics/s": True,
        "dev: first 10 s after up / warm, metrics/s": True,
        "prod-noauth: first 10 s after up / warm, metrics/s": True,
        "prod: first 10 s after up / warm, metrics/s": False,
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
    prod = deploy_overrides(CONFIGS[-1], len(CONFIGS) - 1)
    assert "@sha256:" in str(stack_config("prod")["postgresImage"])
    assert not {"postgresImage", "proxyImage", "baseImage"} & set(prod)
    monkeypatch.setenv("LOCAL_DEPLOY_STANDINS", "0")
    assert deploy_overrides(CONFIGS[-1], len(CONFIGS) - 1)["postgresImage"] == stack_config("prod")["postgresImage"]


def test_the_transfer_stack_is_the_production_path() -> None:
    transfer = deploy_overrides(TRANSFER_CONFIG, TRANSFER_INDEX)
    assert transfer == deploy_overrides(CONFIGS[-1], TRANSFER_INDEX)
    settings = stack_config("bench-prod-s3", transfer)
    assert (settings["tlsMode"], settings["authEnabled"], settings["workers"], transfer["httpsPort"]) == (
        "internal",
        True,
        4,
        5752,
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
