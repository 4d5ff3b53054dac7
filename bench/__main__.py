"""`python -m bench` (`make bench`): every configuration deployed and loaded the same way, in one run.

For each configuration, one after another on the same engine: remove leftovers,
`up` with the local deployer (timed: up to healthy, with whatever build cache the
engine holds; run it twice for a warm-cache figure), measure the first seconds
right after `up` returns (no warm-up), then warm up and measure, sample the
server's memory throughout, and `down`. Then print the table and the targets
(ratios within this run), and write both as JSON.

Exit status: 0 when every target passes, 3 when one fails, 1 when a deployment fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench.configs import CONFIG_NAMES, CONFIGS, BenchConfig, check_targets, deploy_overrides
from bench.load import LoadGenerator, Target
from tests.stack_config import PROJECT_DIR, stack_config

DEFAULT_OUTPUT = PROJECT_DIR / ".build" / "bench" / "results.json"
_MIB = 1024 * 1024


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _memory_mib(container: Any) -> float:
    """What `docker stats` shows: usage minus the inactive page cache."""
    stats = container.stats(stream=False, one_shot=True)["memory_stats"]
    inactive = stats.get("stats", {}).get("inactive_file", 0)
    return float(stats.get("usage", 0) - inactive) / _MIB


@contextmanager
def peak_memory(container: Any) -> Iterator[dict[str, float]]:
    """Samples the container's memory every second while the block runs; yields the peak so far."""
    peak = {"mib": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with suppress(docker.errors.DockerException, KeyError):
                peak["mib"] = max(peak["mib"], _memory_mib(container))
            stop.wait(1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(timeout=10)


def target_for(outputs: dict[str, Any], workdir: Path) -> Target:
    """The stack's own `tracking_uri`; its admin credentials when auth is on; its CA when it has one."""
    auth = None
    if outputs.get("admin_password"):
        auth = (str(outputs["admin_username"]), str(outputs["admin_password"]))
    verify: bool | str = True
    if outputs.get("ca_certificate"):
        # The front door's certificate is issued by the stack's own CA: trust that one, not the world.
        bundle = workdir / "ca.pem"
        bundle.write_text(str(outputs["ca_certificate"]), encoding="utf-8")
        verify = str(bundle)
    return Target(str(outputs["tracking_uri"]), auth, verify)


def bench_one(
    config: BenchConfig, index: int, args: argparse.Namespace, client: docker.DockerClient, load: LoadGenerator
) -> dict[str, Any]:
    # Imported here: the client processes import this module too, and need none of Pulumi.
    from tests.local_deploy import deployer

    overrides = deploy_overrides(config, index)
    settings = stack_config(config.stack, overrides)
    deployer.down(config.stack)
    try:
        started = time.monotonic()
        outputs = deployer.up(config.stack, overrides)
        up_returned = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
            target = target_for(outputs, Path(workdir))
            server = client.containers.get(str(outputs["mlflow_container_name"]))
            database = client.containers.get(str(outputs["postgres_container_name"]))
            with peak_memory(server) as server_peak, peak_memory(database) as database_peak:
                first = load.run(
                    target,
                    label=f"{config.name}/first 10 s",
                    batch_size=args.batch_size,
                    duration=args.first_window,
                    warmup=0,
                    window_start=up_returned,
                )
                warm = load.run(
                    target,
                    label=config.name,
                    batch_size=args.batch_size,
                    duration=args.duration,
                    warmup=args.warmup,
                )
            image = client.images.get(str(outputs["mlflow_image_name"]))
        return {
            "config": config.name,
            "description": config.description,
            "stack": config.stack,
            "workers": settings["workers"],
            "auth": bool(settings["authEnabled"]),
            "tracking_uri": target.tracking_uri,
            "seconds_up_to_healthy": round(up_returned - started, 1),
            **warm.as_dict(),
            "first_window": first.as_dict(),
            "first_window_metrics_per_second": first.metrics_per_second,
            "server_memory_peak_mib": round(server_peak["mib"]),
            "postgres_memory_peak_mib": round(database_peak["mib"]),
            "image_size_mb": round(image.attrs["Size"] / 1e6),
        }
    finally:
        deployer.down(config.stack)


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "| config | workers | auth | metrics/s | requests/s | p50 ms | p99 ms | errors | server memory MiB "
        "| first 10 s metrics/s | up to healthy s | image MB |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['workers']} | {'on' if row['auth'] else 'off'} "
            f"| {row['metrics_per_second']:,.0f} | {row['requests_per_second']:.1f} "
            f"| {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['errors']} | {row['server_memory_peak_mib']} "
            f"| {row['first_window_metrics_per_second']:,.0f} | {row['seconds_up_to_healthy']:.1f} "
            f"| {row['image_size_mb']} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--batch-size", type=int, default=100, help="metrics per log-batch request (default 100)")
    parser.add_argument("--duration", type=float, default=20, help="measured seconds per configuration (default 20)")
    parser.add_argument("--warmup", type=float, default=10, help="unmeasured seconds before that (default 10)")
    parser.add_argument("--first-window", type=float, default=10,
                        help="seconds measured right after `up` returns, no warm-up (default 10)")  # fmt: skip
    parser.add_argument("--configs", nargs="+", choices=CONFIG_NAMES, default=list(CONFIG_NAMES),
                        help="configurations to run, in this order (default: all)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.batch_size < 1 or args.batch_size > 1000 or args.duration <= 0:
        parser.error("--clients and --duration must be positive; --batch-size from 1 to 1000 (MLflow's limit)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    client = docker.from_env(timeout=300)
    chosen = [(index, config) for index, config in enumerate(CONFIGS) if config.name in args.configs]
    from tests.local_deploy import deployer

    rows = []
    with LoadGenerator(args.clients) as load:
        for index, config in chosen:
            print(f"bench: {config.name}: {config.description}", file=sys.stderr, flush=True)
            try:
                rows.append(bench_one(config, index, args, client, load))
            except deployer.DeployError as error:
                print(f"bench: {config.name}: deployment failed: {error}", file=sys.stderr)
                return 1
    checks = check_targets({row["config"]: row for row in rows})
    spec = machine()
    results: dict[str, Any] = {
        "machine": spec,
        "load": {
            "clients": args.clients,
            "batch_size": args.batch_size,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "first_window_seconds": args.first_window,
        },
        "command": "make bench ARGS='" + " ".join(sys.argv[1:] if argv is None else argv) + "'",
        "configs": rows,
        "targets": [check.__dict__ for check in checks],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nmachine: {spec['nproc']} CPUs ({spec['cpu_model']}), {spec['memory_gib']} GiB")
    print(
        f"load: {args.clients} client processes, log-batch of {args.batch_size} metrics, "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured\n"
    )
    print(table(rows))
    print()
    for check in checks:
        print(check.line())
    print(f"\nresults: {args.output}")
    return 0 if all(check.passed for check in checks) else 3


if __name__ == "__main__":
    sys.exit(main())
