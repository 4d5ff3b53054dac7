"""`python -m bench` (`make bench`): every configuration deployed and loaded the same way, in one run.

Each configuration gets a stack of its own (`bench-<name>`, its own host ports). One
after another: `up` (timed: seconds to healthy, with whatever build cache the engine
holds), then the first seconds right after `up` returned are measured with no
warm-up. Before a swarm configuration's `up` the engine is made a swarm manager
(the local deployer's idempotent `swarm-init`); a configuration with its artifacts in
a bucket gets one of the bench's own SeaweedFS, started the first time one needs it.
Once all are up, each is warmed up, then they are measured in turns, a few short
windows each, so background load on a shared machine spreads over all of them.
Memory is sampled throughout. Then the table, the targets (ratios within this run)
and the figures reported without a target are printed and written as JSON, and
every bench stack is removed (swarm services, secrets, configs, overlay networks
and the volumes their tasks made too), then the engine is checked for anything of
a bench stack left behind.

Exit status: 0 when every target passes, 3 when one fails, 1 when a deployment fails or a
bench stack left something behind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker

from bench import transfer
from bench.configs import (
    CONFIG_NAMES,
    CONFIGS,
    TRANSFER_CONFIG,
    TRANSFER_INDEX,
    BenchConfig,
    check_targets,
    check_transfer,
    deploy_overrides,
    reported,
)
from bench.load import LoadGenerator, LoadResult, Sample, Target
from bench.memory import peak_total_memory
from tools.stack_config import PROJECT_DIR, stack_config

if TYPE_CHECKING:
    from tests.s3_store import S3Store

DEFAULT_OUTPUT = PROJECT_DIR / ".build" / "bench" / "results.json"


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


class Store:
    """The bench's SeaweedFS (tests/s3_store.py), started the first time a configuration needs it and
    removed with the bench's other resources: beside the stacks, as an operator's own store would be."""

    def __init__(self, client: docker.DockerClient, resources: ExitStack) -> None:
        self._client = client
        self._resources = resources
        self._store: S3Store | None = None

    def get(self) -> S3Store:
        if self._store is None:
            from tests.s3_store import running_store

            self._store = self._resources.enter_context(running_store(self._client))
        return self._store


def ensure_swarm_manager(settings: dict[str, object]) -> None:
    """`python -m tools.local_deploy swarm-init` (idempotent): this engine a single-node swarm manager,
    its node labelled for the stack's Postgres (postgresNodeLabel)."""
    from tools.local_deploy.__main__ import parse_node_labels
    from tools.local_deploy.swarm import swarm_init

    swarm_init(parse_node_labels([str(settings["postgresNodeLabel"])]))


def workload_containers(client: docker.DockerClient, outputs: dict[str, Any], key: str) -> Callable[[], list[Any]]:
    """What runs a workload: the `*_container_name` outputs name a container on engine standalone and a
    service on engine swarm, whose running tasks' containers are all on this engine (a single node)."""
    name = str(outputs[key])
    if outputs.get("engine") != "swarm":
        container = client.containers.get(name)
        return lambda: [container]
    label = f"com.docker.swarm.service.name={name}"
    return lambda: list(client.containers.list(filters={"label": label, "status": "running"}))


@dataclass
class Deployed:
    """One configuration, up, with what was measured on it so far."""

    config: BenchConfig
    settings: dict[str, object]
    outputs: dict[str, Any]
    target: Target
    seconds_up_to_healthy: float
    first_window: LoadResult
    server_peak: dict[str, float]
    database_peak: dict[str, float]
    samples: list[Sample] = field(default_factory=list)


def deploy(
    config: BenchConfig,
    index: int,
    args: argparse.Namespace,
    client: docker.DockerClient,
    load: LoadGenerator,
    resources: ExitStack,
    workdir: Path,
    store: Store,
) -> Deployed:
    """`up` (timed), then the first seconds after it returned measured with no warm-up."""
    # Imported here: the client processes import this module too, and need none of Pulumi.
    from tools.local_deploy import deployer

    overrides = deploy_overrides(config, index)
    if config.artifacts_in_bucket:
        overrides.update(store.get().stack_settings(config.stack))
    settings = stack_config(config.stack, overrides)
    if settings["engine"] == "swarm":
        ensure_swarm_manager(settings)
    deployer.down(config.stack)
    resources.callback(deployer.down, config.stack)
    started = time.monotonic()
    outputs = deployer.up(config.stack, overrides)
    up_returned = time.monotonic()
    stack_dir = workdir / config.stack
    stack_dir.mkdir()
    target = target_for(outputs, stack_dir)
    # On swarm, the server's figure is the sum over its replicas.
    server_peak = resources.enter_context(
        peak_total_memory(workload_containers(client, outputs, "mlflow_container_name"))
    )
    database_peak = resources.enter_context(
        peak_total_memory(workload_containers(client, outputs, "postgres_container_name"))
    )
    first = load.measure(
        target,
        label=f"{config.name} first {args.first_window:g} s",
        batch_size=args.batch_size,
        duration=args.first_window,
        warmup=0,
        window_start=up_returned,
    )
    return Deployed(
        config,
        settings,
        outputs,
        target,
        up_returned - started,
        first.summary(args.batch_size),
        server_peak,
        database_peak,
    )


def measure_all(stacks: list[Deployed], args: argparse.Namespace, load: LoadGenerator) -> None:
    """Warm every stack up, then measure them in turns, `rounds` short windows each.

    The machine is shared: a burst of someone else's work lands in one window of one
    configuration, not in the whole figure of one, so the ratios stay fair.
    """
    for stack in stacks:
        load.measure(
            stack.target, label=f"{stack.config.name} warm-up", batch_size=args.batch_size, duration=0,
            warmup=args.warmup,
        )  # fmt: skip
    window = args.duration / args.rounds
    for round_number in range(args.rounds):
        # Rotated each round, so no configuration always follows the same one.
        shift = round_number % len(stacks)
        for stack in stacks[shift:] + stacks[:shift]:
            stack.samples.append(
                load.measure(
                    stack.target,
                    label=f"{stack.config.name} {round_number + 1}/{args.rounds}",
                    batch_size=args.batch_size,
                    duration=window,
                    warmup=args.round_warmup,
                )
            )


def measure_transfer(
    args: argparse.Namespace, client: docker.DockerClient, resources: ExitStack, workdir: Path, store: S3Store
) -> dict[str, float]:
    """The production path with its artifacts in a bucket, against a direct transfer to that bucket.

    The store is the bench's SeaweedFS (the end-to-end tests' one, tests/s3_store.py), beside the
    stack as an operator's own store would be.
    """
    from tools.local_deploy import deployer

    config = TRANSFER_CONFIG
    deployer.down(config.stack)
    resources.callback(deployer.down, config.stack)
    outputs = deployer.up(config.stack, {**deploy_overrides(config, TRANSFER_INDEX), **store.stack_settings("bench")})
    stack_dir = workdir / config.stack
    stack_dir.mkdir()
    server = client.containers.get(str(outputs["mlflow_container_name"]))
    result = transfer.measure(
        target_for(outputs, stack_dir), store, server, stack_dir / "transfer", args.transfer_mib, args.transfer_rounds
    )
    return result.as_dict()


def row(stack: Deployed, client: docker.DockerClient, batch_size: int) -> dict[str, Any]:
    warm = Sample.combine(stack.samples).summary(batch_size)
    image = client.images.get(str(stack.outputs["mlflow_image_name"]))
    return {
        "config": stack.config.name,
        "description": stack.config.description,
        "stack": stack.config.stack,
        "engine": stack.settings["engine"],
        "replicas": int(stack.outputs.get("mlflow_replicas", 1)),
        "workers": stack.settings["workers"],
        "auth": bool(stack.settings["authEnabled"]),
        "tracking_uri": stack.target.tracking_uri,
        "seconds_up_to_healthy": round(stack.seconds_up_to_healthy, 1),
        **warm.as_dict(),
        "rounds": [sample.summary(batch_size).metrics_per_second for sample in stack.samples],
        "first_window": stack.first_window.as_dict(),
        "first_window_metrics_per_second": stack.first_window.metrics_per_second,
        "server_memory_peak_mib": round(stack.server_peak["mib"]),
        "postgres_memory_peak_mib": round(stack.database_peak["mib"]),
        "image_size_mb": round(image.attrs["Size"] / 1e6),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "| config | replicas | workers | auth | metrics/s | requests/s | p50 ms | p99 ms | errors | server memory MiB "
        "| first 10 s metrics/s | up to healthy s | image MB |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['replicas']} | {row['workers']} | {'on' if row['auth'] else 'off'} "
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
    parser.add_argument("--duration", type=float, default=30, help="measured seconds per configuration (default 30)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=10,
        help="unmeasured seconds of load on each configuration before any is measured (default 10)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="windows the measured seconds are split into, configurations taking turns (default 6)",
    )
    parser.add_argument(
        "--round-warmup", type=float, default=2, help="unmeasured seconds at the start of each window (default 2)"
    )
    parser.add_argument("--first-window", type=float, default=10,
                        help="seconds measured right after `up` returns, no warm-up (default 10)")  # fmt: skip
    parser.add_argument("--configs", nargs="+", choices=CONFIG_NAMES, default=list(CONFIG_NAMES),
                        help="configurations to run, in this order (default: all)")  # fmt: skip
    parser.add_argument(
        "--transfer-mib",
        type=int,
        default=256,
        help="MiB of the artifact sent through the production path and directly to the store (default 256; 0: none)",
    )
    parser.add_argument("--transfer-rounds", type=int, default=3,
                        help="turns of each transfer, production path and direct alternating (default 3)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.duration <= 0 or args.transfer_rounds < 1:
        parser.error("--clients, --rounds, --duration and --transfer-rounds must be positive")
    if args.transfer_mib < 0:
        parser.error("--transfer-mib must be 0 (no transfer) or more")
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be from 1 to 1000 (MLflow's limit per log-batch request)")
    return args


def stack_resources(client: docker.DockerClient) -> Iterator[tuple[str, str, dict[str, str]]]:
    """Every labelled container, network and volume on the engine (and service, secret, config in
    swarm mode) that carries a stack label: (kind, name, labels)."""
    from tools.local_deploy.common import STACK_LABEL

    only = {"label": STACK_LABEL}
    for container in client.containers.list(all=True, filters=only):
        yield "container", container.name, dict(container.labels or {})
    for kind, collection in (("network", client.networks), ("volume", client.volumes)):
        for item in collection.list(filters=only):
            yield kind, item.name, dict(item.attrs.get("Labels") or {})
    if client.info().get("Swarm", {}).get("ControlAvailable"):
        for kind, collection in (("service", client.services), ("secret", client.secrets), ("config", client.configs)):
            for item in collection.list(filters=only):
                yield kind, item.name, dict(item.attrs["Spec"].get("Labels") or {})


def bench_leftovers(resources: Iterable[tuple[str, str, Mapping[str, str]]]) -> list[str]:
    """What of a bench stack (`bench-<name>`) is among `resources` (kind, name, labels): `kind name`, sorted."""
    from tools.local_deploy.common import STACK_LABEL

    return sorted(
        f"{kind} {name}" for kind, name, labels in resources if labels.get(STACK_LABEL, "").startswith("bench-")
    )


def run(args: argparse.Namespace, client: docker.DockerClient) -> tuple[list[dict[str, Any]], dict[str, float] | None]:
    """Every chosen configuration deployed, measured and removed; the transfer too, unless --transfer-mib 0."""
    chosen = [(index, config) for index, config in enumerate(CONFIGS) if config.name in args.configs]
    from tools.local_deploy import deployer

    with LoadGenerator(args.clients) as load, ExitStack() as resources:
        workdir = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        store = Store(client, resources)
        stacks = []
        for index, config in chosen:
            print(f"bench: {config.name}: {config.description}", file=sys.stderr, flush=True)
            try:
                stacks.append(deploy(config, index, args, client, load, resources, workdir, store))
            except deployer.DeployError as error:
                raise DeploymentError(f"bench: {config.name}: deployment failed: {error}") from error
        measure_all(stacks, args, load)
        rows = [row(stack, client, args.batch_size) for stack in stacks]
        measured = None
        if args.transfer_mib:
            print(f"bench: {TRANSFER_CONFIG.name}: {TRANSFER_CONFIG.description}", file=sys.stderr, flush=True)
            try:
                measured = measure_transfer(args, client, resources, workdir, store.get())
            except deployer.DeployError as error:
                raise DeploymentError(f"bench: {TRANSFER_CONFIG.name}: deployment failed: {error}") from error
    return rows, measured


class DeploymentError(Exception):
    """A configuration's `up` failed: the run stops (what was up is removed) with exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    client = docker.from_env(timeout=300)
    try:
        rows, measured = run(args, client)
    except DeploymentError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        left = bench_leftovers(stack_resources(client))
        if left:
            print(f"bench: left on the engine after the teardown: {', '.join(left)}", file=sys.stderr)
    checks = check_targets({row["config"]: row for row in rows}) + (check_transfer(measured) if measured else [])
    figures = reported({row["config"]: row for row in rows})
    spec = machine()
    given = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "machine": spec,
        "load": {
            "clients": args.clients,
            "batch_size": args.batch_size,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "rounds": args.rounds,
            "round_warmup_seconds": args.round_warmup,
            "first_window_seconds": args.first_window,
        },
        "command": " ".join(["make bench", *([f"ARGS='{' '.join(given)}'"] if given else [])]),
        "configs": rows,
        "transfer": measured,
        "targets": [check.__dict__ for check in checks],
        "reported": [figure.__dict__ for figure in figures],
        "left_behind": left,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nmachine: {spec['nproc']} CPUs ({spec['cpu_model']}), {spec['memory_gib']} GiB")
    print(
        f"load: {args.clients} client processes, log-batch of {args.batch_size} metrics, "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured per configuration "
        f"in {args.rounds} turns of {args.duration / args.rounds:g} s\n"
    )
    print(table(rows))
    if any(row["replicas"] > 1 for row in rows):
        print("(server memory: the peak of the sum over the MLflow service's replicas)")
    if measured:
        print(f"\n{transfer.line(measured)}")
    print()
    for check in checks:
        print(check.line())
    for figure in figures:
        print(figure.line())
    print(f"\nresults: {args.output}")
    if left:
        return 1
    return 0 if all(check.passed for check in checks) else 3


if __name__ == "__main__":
    sys.exit(main())
