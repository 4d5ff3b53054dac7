"""The load: clients in separate processes, each logging metric batches over REST.

One process per client, not one thread: on a 2-core machine a single Python
process with eight threads saturates on its own GIL before the server does, and
the benchmark would measure the client. Each client owns one run and posts
`runs/log-batch` requests of `batch_size` metrics back to back, as a training job
logging through `MlflowClient.log_batch` does.

Every process shares one monotonic clock (CLOCK_MONOTONIC is system-wide on
Linux), so "the measured window" means the same seconds for all of them.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import requests

API = "/api/2.0/mlflow"
_REQUEST_TIMEOUT = 60
# The spawn start method: a child must not inherit the parent's gRPC and Docker SDK threads.
_CONTEXT = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Target:
    """Where the clients send their requests, and as whom."""

    tracking_uri: str
    auth: tuple[str, str] | None = None
    verify: bool | str = True
    """requests' `verify`: True, or the path of a CA bundle (the stack's own CA)."""


@dataclass(frozen=True)
class LoadResult:
    """What one load phase measured, over its measured window only."""

    seconds: float
    requests: int
    errors: int
    metrics: int
    metrics_per_second: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    first_error: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    latencies: list[float], errors: int, seconds: float, batch_size: int, first_error: str = ""
) -> LoadResult:
    """Throughput counts acknowledged batches only; latency quantiles cover every answered request."""
    ok = len(latencies)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if ok >= 2 else latencies * 99
    return LoadResult(
        seconds=seconds,
        requests=ok,
        errors=errors,
        metrics=ok * batch_size,
        metrics_per_second=ok * batch_size / seconds,
        requests_per_second=ok / seconds,
        p50_ms=quantiles[49] * 1000 if quantiles else 0.0,
        p99_ms=quantiles[98] * 1000 if quantiles else 0.0,
        first_error=first_error,
    )


def _session(target: Target) -> requests.Session:
    session = requests.Session()
    session.auth = target.auth
    session.verify = target.verify
    # Not the environment's settings: requests lets REQUESTS_CA_BUNDLE (set on many
    # machines) override session.verify, and the stack's own CA was then ignored; nor a
    # proxy from the environment between the load and a server on loopback.
    session.trust_env = False
    return session


def create_runs(target: Target, count: int, experiment_name: str) -> list[str]:
    """One experiment, one run per client: created before the clients start, so they only log."""
    session = _session(target)
    created = session.post(
        f"{target.tracking_uri}{API}/experiments/create", json={"name": experiment_name}, timeout=_REQUEST_TIMEOUT
    )
    created.raise_for_status()
    experiment_id = created.json()["experiment_id"]
    runs = []
    for _ in range(count):
        run = session.post(
            f"{target.tracking_uri}{API}/runs/create",
            json={"experiment_id": experiment_id, "start_time": int(time.time() * 1000)},
            timeout=_REQUEST_TIMEOUT,
        )
        run.raise_for_status()
        runs.append(str(run.json()["run"]["info"]["run_id"]))
    return runs


# Set in each client process by the pool's initializer: shared counters for the progress line.
_COUNTERS: tuple[Synchronized[int], Synchronized[int]] | None = None


def _init_client(done: Synchronized[int], failed: Synchronized[int]) -> None:
    global _COUNTERS
    _COUNTERS = (done, failed)


def _client(
    target: Target, run_id: str, index: int, batch_size: int, window: tuple[float, float]
) -> tuple[list[float], int, str]:
    """Logs batches until window[1]; returns the latencies and errors of requests inside [window[0], window[1]]."""
    measure_from, until = window
    assert _COUNTERS is not None
    done, failed = _COUNTERS
    session = _session(target)
    url = f"{target.tracking_uri}{API}/runs/log-batch"
    latencies: list[float] = []
    errors = 0
    first_error = ""
    step = 0
    while (started := time.monotonic()) < until:
        metrics: list[dict[str, Any]] = [
            {"key": f"client{index}", "value": float(step + i), "timestamp": int(time.time() * 1000), "step": step + i}
            for i in range(batch_size)
        ]
        problem = ""
        try:
            response = session.post(url, json={"run_id": run_id, "metrics": metrics}, timeout=_REQUEST_TIMEOUT)
            if response.status_code != 200:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as error:
            problem = f"{type(error).__name__}: {error}"
        finished = time.monotonic()
        step += batch_size
        # A request counts in the window it was sent in and answered in.
        if started >= measure_from and finished <= until:
            if problem:
                errors += 1
                first_error = first_error or problem
            else:
                latencies.append(finished - started)
        counter = failed if problem else done
        with counter.get_lock():
            counter.value += 1
    return latencies, errors, first_error


class LoadGenerator:
    """`clients` processes, started once and reused for every phase.

    Started before any deployment: a spawned process imports its modules first (a
    second or two each on a small machine), which would otherwise land in the
    first seconds after `up` and be counted against the server.
    """

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self._done: Synchronized[int] = _CONTEXT.Value("q", 0)
        self._failed: Synchronized[int] = _CONTEXT.Value("q", 0)
        self._pool = _CONTEXT.Pool(clients, initializer=_init_client, initargs=(self._done, self._failed))
        # Every process up and idle before the first phase: one no-op per process.
        self._pool.map(time.sleep, [0.5] * clients, chunksize=1)

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *_: object) -> None:
        self._pool.terminate()
        self._pool.join()

    def measure(
        self,
        target: Target,
        *,
        label: str,
        batch_size: int,
        duration: float,
        warmup: float,
        window_start: float | None = None,
    ) -> Sample:
        """Loads the target for `warmup` unmeasured seconds, then measures `duration` seconds.

        `window_start` (a time.monotonic() value) anchors the window to an earlier moment,
        such as the moment `up` returned: run creation then counts against it.
        """
        anchor = time.monotonic() if window_start is None else window_start
        run_ids = create_runs(target, self.clients, f"bench-{label.replace(' ', '-')}-{int(time.time() * 1000)}")
        measure_from = anchor + warmup
        until = measure_from + duration
        for counter in (self._done, self._failed):
            with counter.get_lock():
                counter.value = 0
        pending = self._pool.starmap_async(
            _client,
            [(target, run_ids[index], index, batch_size, (measure_from, until)) for index in range(self.clients)],
            chunksize=1,
        )
        try:
            while not pending.ready():
                now = time.monotonic()
                phase = "warm-up" if now < measure_from else "measuring"
                elapsed = max(0.0, now - (anchor if now < measure_from else measure_from))
                print(
                    f"\rbench: {label:<26} {phase:<9} {elapsed:5.1f}s  "
                    f"requests {self._done.value:6d}  errors {self._failed.value:4d}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
                pending.wait(1)
                if not pending.ready() and now > until + _REQUEST_TIMEOUT + 30:
                    raise RuntimeError(f"{label}: clients did not report back")
        finally:
            print(file=sys.stderr, flush=True)
        collected = pending.get()
        return Sample(
            latencies=[latency for client_latencies, _, _ in collected for latency in client_latencies],
            errors=sum(count for _, count, _ in collected),
            first_error=next((error for _, _, error in collected if error), ""),
            seconds=duration,
        )


@dataclass
class Sample:
    """Raw measurements of one window; several windows of one configuration add up."""

    latencies: list[float]
    errors: int
    first_error: str
    seconds: float

    @staticmethod
    def combine(samples: list[Sample]) -> Sample:
        return Sample(
            latencies=[latency for sample in samples for latency in sample.latencies],
            errors=sum(sample.errors for sample in samples),
            first_error=next((sample.first_error for sample in samples if sample.first_error), ""),
            seconds=sum(sample.seconds for sample in samples),
        )

    def summary(self, batch_size: int) -> LoadResult:
        return summarize(self.latencies, self.errors, self.seconds, batch_size, self.first_error)
