"""The configurations the benchmark compares, and the targets it checks.

Each configuration is one of the project's stacks as committed (the stack file's
values, passed as overrides) deployed under a stack name of its own
(`bench-<name>`), so its containers, network, volumes and image tag never meet a
developer's `dev` stack, and with host ports of its own. The few other overrides
make a stack reachable and removable on this machine without changing how the
server runs: `localhost` as the public host, loopback as the bind address, no
volume protection (a Pulumi option only; the benchmark removes what it made, and
marks its stacks `environmentKind: dev` so that is allowed).

The swarm configurations are the prod stack as swarm services (`engine: swarm`) on this
engine, a single-node swarm: a swarm service publishes on every interface of its node,
so they take `bindAddress: 0.0.0.0` (the settings rules require it; only the TLS front
door publishes). One with several MLflow replicas keeps its artifacts in a bucket of the
bench's own SeaweedFS, as the rules require too (its keys are added when it runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tools.local_deploy.lifecycle import standin_config, standins_enabled
from tools.stack_config import project_file, stack_config

# Far from 5000 (dev), 5001 (the staging end-to-end test) and 80/443.
BENCH_PORT_BASE = 5710
# Host-port keys the program may declare (the HTTPS front door adds the last two);
# each bench stack gets its own value for every one that Pulumi.yaml declares.
_PORT_KEYS = ("hostPort", "httpPort", "httpsPort")


@dataclass(frozen=True)
class BenchConfig:
    name: str
    description: str
    base_stack: str
    """The committed stack file whose values the configuration takes."""
    overrides: Mapping[str, object] = field(default_factory=dict)
    artifacts_in_bucket: bool = False
    """Its artifacts in a bucket of the bench's SeaweedFS: the store's settings are added when it runs."""

    @property
    def stack(self) -> str:
        return f"bench-{self.name}"


CONFIGS = (
    BenchConfig(
        "chapter",
        "the chapter's `mlflow server`: no auth, MLflow's default 4 workers",
        "dev",
        # No memory limit to speak of, as with a bare `mlflow server`.
        {"workers": 4, "authEnabled": False, "mlflowMemoryMb": 4096},
    ),
    BenchConfig("dev", "the project's dev stack as committed", "dev"),
    BenchConfig(
        "prod-noauth", "the prod stack without auth (same workers): the reference", "prod", {"authEnabled": False}
    ),
    BenchConfig("prod", "the production path: the prod stack, basic auth on", "prod"),
    BenchConfig(
        "prod-swarm-1",
        "the production path as swarm services: one MLflow replica behind the overlay network and the load balancer",
        "prod",
        {"engine": "swarm", "mlflowReplicas": 1, "bindAddress": "0.0.0.0"},
    ),
    BenchConfig(
        "prod-swarm-3",
        "the production path as swarm services: three MLflow replicas, artifacts in a bucket",
        "prod",
        {"engine": "swarm", "mlflowReplicas": 3, "bindAddress": "0.0.0.0"},
        artifacts_in_bucket=True,
    ),
)
CONFIG_NAMES = tuple(config.name for config in CONFIGS)
# Transfers only (no metrics load): the production path with its artifacts in a bucket of the bench's
# own SeaweedFS (the store's keys are added when it runs); its ports follow the configurations'.
TRANSFER_CONFIG = BenchConfig(
    "prod-s3",
    "the production path, artifacts in a bucket: one large artifact up and down",
    "prod",
    artifacts_in_bucket=True,
)
TRANSFER_INDEX = len(CONFIGS)
# The production path's MB/s against a direct boto3 transfer of the same bytes to the same store.
TRANSFER_RATIO_TARGET = 0.5
# One swarm replica against the same stack on plain containers: the overlay network and swarm's
# load balancer (the routing mesh in front of the proxy, the service's virtual IP behind it) may cost this much.
SWARM_RATIO_TARGET = 0.9


def deploy_overrides(config: BenchConfig, index: int) -> dict[str, object]:
    """Config overrides for `deployer.up(config.stack, ...)`: the stack file's values, then the bench's."""
    declared = project_file().get("config", {})
    defaults = {key: declaration.get("default") for key, declaration in declared.items()}
    # Only what the stack file changes: Pulumi.yaml's defaults stay defaults, so the
    # local deployer's stand-in images (its own overrides) still apply underneath.
    # The images a shared stack pins by digest are the registry's, which this engine may not
    # reach: with stand-ins, theirs replace them, as the end-to-end tests' do.
    replaced = set(standin_config()) if standins_enabled() else set()
    values = {
        key: value
        for key, value in stack_config(config.base_stack).items()
        if value != defaults.get(key) and key not in replaced
    }
    values.update(
        {
            "publicHost": "localhost",
            "bindAddress": "127.0.0.1",
            # A throwaway stack of this machine's: volume protection may go, the rest
            # (auth, the TLS front door) stays as the stack file says.
            "environmentKind": "dev",
            "protectData": False,
        }
    )
    for offset, key in enumerate(_PORT_KEYS):
        if key in declared:
            values[key] = BENCH_PORT_BASE + 10 * index + offset
    values.update(config.overrides)
    return values


@dataclass(frozen=True)
class TargetCheck:
    name: str
    measured: float
    limit: float
    passed: bool

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.measured:.2f} (target {self.limit})"


def _ratio(name: str, numerator: float, denominator: float, minimum: float) -> TargetCheck:
    value = numerator / denominator if denominator else 0.0
    return TargetCheck(name, value, minimum, value >= minimum)


@dataclass(frozen=True)
class Reported:
    """A figure the run reports beside the targets, with no target: it never fails the run."""

    name: str
    measured: float

    def line(self) -> str:
        return f"----  {self.name}: {self.measured:.2f} (reported, no target)"


def check_targets(results: Mapping[str, Mapping[str, float]]) -> list[TargetCheck]:
    """The issue's targets, as ratios within one run; a configuration not measured is skipped.

    `results[name]` holds `metrics_per_second`, `p99_ms`, `errors` and
    `first_window_metrics_per_second` of that configuration.
    """
    checks: list[TargetCheck] = []

    def ratio(name: str, numerator: float, denominator: float, minimum: float) -> None:
        checks.append(_ratio(name, numerator, denominator, minimum))

    prod, reference = results.get("prod"), results.get("prod-noauth")
    if prod is not None and reference is not None:
        ratio("production path / same stack without auth, metrics/s", prod["metrics_per_second"],
              reference["metrics_per_second"], 0.8)  # fmt: skip
        p99 = prod["p99_ms"] / reference["p99_ms"] if reference["p99_ms"] else float("inf")
        checks.append(TargetCheck("production path p99 / same stack without auth p99 (at most)", p99, 2.0, p99 <= 2.0))
    if prod is not None:
        checks.append(TargetCheck("production path errors (at most)", prod["errors"], 0, prod["errors"] == 0))
    swarm = results.get("prod-swarm-1")
    if swarm is not None and prod is not None:
        ratio("production path on swarm, 1 replica / same stack on containers, metrics/s", swarm["metrics_per_second"],
              prod["metrics_per_second"], SWARM_RATIO_TARGET)  # fmt: skip
    dev, chapter = results.get("dev"), results.get("chapter")
    if dev is not None and chapter is not None:
        ratio("dev defaults / chapter's configuration, metrics/s", dev["metrics_per_second"],
              chapter["metrics_per_second"], 1.0)  # fmt: skip
    for name, measured in results.items():
        ratio(f"{name}: first 10 s after up / warm, metrics/s", measured["first_window_metrics_per_second"],
              measured["metrics_per_second"], 0.8)  # fmt: skip
    return checks


def reported(results: Mapping[str, Mapping[str, float]]) -> list[Reported]:
    """Ratios measured and shown without a target (a configuration not measured is skipped).

    Three swarm replicas against one: on a single node they share its CPUs, so this says what
    replicas cost or gain here, not what they gain across nodes.
    """
    figures: list[Reported] = []
    one, three = results.get("prod-swarm-1"), results.get("prod-swarm-3")
    if one is not None and three is not None:
        value = three["metrics_per_second"] / one["metrics_per_second"] if one["metrics_per_second"] else 0.0
        figures.append(Reported("production path on swarm, 3 replicas / 1 replica, metrics/s", value))
    return figures


def check_transfer(transfer: Mapping[str, float]) -> list[TargetCheck]:
    """The production path's upload and download MB/s against the direct boto3 transfer's, in one run.

    `transfer` holds `production_up_mb_per_second`, `production_down_mb_per_second`,
    `production_multipart_up_mb_per_second`, `direct_up_mb_per_second` and `direct_down_mb_per_second`.
    """
    checks = [
        _ratio(
            f"production path / direct boto3 to the same store, {direction} MB/s",
            transfer[f"production_{direction}_mb_per_second"],
            transfer[f"direct_{direction}_mb_per_second"],
            TRANSFER_RATIO_TARGET,
        )
        for direction in ("up", "down")
    ]
    checks.append(
        _ratio(
            "production path in parts (multipart) / direct boto3 to the same store, up MB/s",
            transfer["production_multipart_up_mb_per_second"],
            transfer["direct_up_mb_per_second"],
            TRANSFER_RATIO_TARGET,
        )
    )
    return checks
