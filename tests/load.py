"""Load for the end-to-end tests: clients logging through MLflow's own client, and what was lost.

Each client is a thread with its own `MlflowClient` and its own run, writing a stream as a
training job does: a metric at a new step every call, now and then a param and a tag. A write
is *acknowledged* when the call returned without an exception (after the client's own retries)
and *failed* when it raised; afterwards every acknowledged write is read back from the server,
and one that is not stored is *lost*. A failed write may or may not be stored (the server may
have committed it and then died before answering): it is never counted as lost, and what is
stored of it is not checked.

The retries are the MLflow client's (urllib3 under `requests`: connection errors and 408, 429,
5xx answers, on every method, with exponential backoff), configured through its environment
variables for the run: a figure such as "0 failed after the client's retries" means nothing
without the retry budget it was measured with, and MLflow's defaults (7 retries, backoff factor
2, up to about four minutes per call) are a library default that may change between releases.
`Retries.budget()` says how long a call keeps retrying.

Retrying a write is safe here: logging the same metric (key, step, timestamp, value) twice
stores it once, and a param or tag is set to the same value again.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from mlflow.tracking import MlflowClient

# Metric timestamps: fixed, so a retried call sends the identical metric (a new timestamp would store a second one).
_TIMESTAMP = 1_700_000_000_000
# urllib3 logs every retry on this logger: connection errors at WARNING, a retried status at DEBUG.
_RETRY_LOGGER = "urllib3.connectionpool"


@dataclass(frozen=True)
class Retries:
    """The MLflow client's retry settings for a load run (MLFLOW_HTTP_REQUEST_* environment variables)."""

    max_retries: int = 6
    backoff_factor: int = 1
    jitter: float = 0.5
    timeout: int = 30

    def environment(self) -> dict[str, str]:
        return {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(self.backoff_factor),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(self.jitter),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.timeout),
        }

    def budget(self) -> float:
        """Seconds a call keeps retrying at most, request timeouts aside: urllib3 2.x sleeps
        nothing before the first retry, then backoff_factor * 2**(n-1), capped at 120 s, plus jitter."""
        sleeps = [0.0] + [min(120.0, self.backoff_factor * 2.0**n) for n in range(1, self.max_retries)]
        return sum(sleeps) + self.jitter * self.max_retries


# The default budget (6 retries: 0 + 2 + 4 + 8 + 16 + 32 s, about a minute) outlasts a task's replacement
# (a new container's start and first health checks) while a server that stays down still fails a call
# within minutes, not the four of MLflow's defaults.
DEFAULT_RETRIES = Retries()
# What a user's client does when nobody set anything (mlflow/environment_variables.py).
MLFLOW_DEFAULTS = Retries(max_retries=7, backoff_factor=2, jitter=1.0, timeout=120)


@dataclass(frozen=True)
class Write:
    """One call: a metric at `step`, or a param or tag `key` set to `value`."""

    kind: str  # metric | param | tag
    key: str
    value: str
    step: int = 0


@dataclass
class LoadResult:
    """What the clients sent, what the server acknowledged, and what of it was not stored."""

    clients: int
    sent: int
    acknowledged: int
    failed: list[tuple[int, Write, str]]  # client, write and the exception, after the client's retries
    lost: list[tuple[int, Write]]  # client and acknowledged write that did not read back
    retries: int  # retries the clients' HTTP layer made (urllib3's log)
    longest_call: float
    latencies: list[float]
    seconds: float
    retry_settings: Retries

    def summary(self) -> str:
        quantiles = statistics.quantiles(self.latencies, n=100) if len(self.latencies) > 1 else [0.0] * 99
        return (
            f"{self.clients} clients x {self.seconds:.1f}s: {self.sent} writes sent, {self.acknowledged} acknowledged, "
            f"{len(self.failed)} failed after the client's retries (budget {self.retry_settings.budget():.0f}s), "
            f"{len(self.lost)} acknowledged but not stored; {self.retries} retried requests; "
            f"p50 {quantiles[49] * 1000:.0f} ms, p99 {quantiles[98] * 1000:.0f} ms, "
            f"longest call {self.longest_call:.1f}s"
        )


class _RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        # Called under the handler's own lock (logging.Handler.handle): the clients' threads count safely.
        if record.getMessage().startswith(("Retrying (", "Retry: ")):
            self.count += 1


class _Client(threading.Thread):
    def __init__(self, load: Load, index: int, run_id: str) -> None:
        super().__init__(name=f"load-client-{index}", daemon=True)
        self.load, self.index, self.run_id = load, index, run_id
        self.client = MlflowClient(load.tracking_uri)
        self.sent = 0
        self.acknowledged: list[Write] = []
        self.failed: list[tuple[int, Write, str]] = []
        self.latencies: list[float] = []

    def _writes(self) -> Iterator[Write]:
        step = 0
        while True:
            yield Write("metric", self.load.metric_key, repr(float(step)), step)
            if self.load.params_every and step % self.load.params_every == 0:
                yield Write("param", f"param_{step}", f"value-{step}")
                yield Write("tag", f"tag_{step}", f"value-{step}")
            step += 1

    def _send(self, write: Write) -> None:
        if write.kind == "metric":
            self.client.log_metric(self.run_id, write.key, float(write.value), timestamp=_TIMESTAMP, step=write.step)
        elif write.kind == "param":
            self.client.log_param(self.run_id, write.key, write.value)
        else:
            self.client.set_tag(self.run_id, write.key, write.value)

    def run(self) -> None:
        for write in self._writes():
            if self.load.stopping.is_set():
                return
            self.sent += 1
            started = time.monotonic()
            try:
                self._send(write)
                self.acknowledged.append(write)
            except Exception as error:  # any exception after the retries is a failed write, counted
                self.failed.append((self.index, write, f"{type(error).__name__}: {str(error)[:300]}"))
            self.latencies.append(time.monotonic() - started)
            self.load.stopping.wait(self.load.pause)


class Load:
    """`clients` threads writing through the MLflow client from `__enter__` to `__exit__`; then `verify()`.

    The tracking URI's CA and credentials come from the environment (tests/e2e.py `trusting`).
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        clients: int = 8,
        pause: float = 0.05,
        params_every: int = 10,
        retries: Retries = DEFAULT_RETRIES,
        experiment: str | None = None,
        metric_key: str = "load",
    ) -> None:
        self.tracking_uri, self.clients, self.pause = tracking_uri, clients, pause
        self.params_every, self.retries, self.metric_key = params_every, retries, metric_key
        self.experiment = experiment or f"load-{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self._threads: list[_Client] = []
        self._saved_env: dict[str, str | None] = {}
        self._counter = _RetryCounter()
        self._saved_logger: tuple[int, bool] = (logging.NOTSET, True)
        self._started = self._stopped = 0.0

    @property
    def run_ids(self) -> list[str]:
        return [thread.run_id for thread in self._threads]

    def acknowledged(self) -> int:
        """Writes acknowledged so far (while running: a figure to compare before and after a fault)."""
        return sum(len(thread.acknowledged) for thread in self._threads)

    def __enter__(self) -> Load:
        environment = self.retries.environment()
        self._saved_env = {key: os.environ.get(key) for key in environment}
        os.environ.update(environment)
        logger = logging.getLogger(_RETRY_LOGGER)
        self._saved_logger = (logger.level, logger.propagate)
        # DEBUG to see status retries; not propagated, so the run's log capture is not flooded by them.
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(self._counter)
        try:
            # Set up before the clock starts, with the same retries: runs are part of the stream's target, not the load.
            setup = MlflowClient(self.tracking_uri)
            experiment_id = setup.create_experiment(self.experiment)
            runs = [
                setup.create_run(experiment_id, run_name=f"client-{index}").info.run_id for index in range(self.clients)
            ]
            self._threads = [_Client(self, index, run_id) for index, run_id in enumerate(runs)]
            self._started = time.monotonic()
            for thread in self._threads:
                thread.start()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stopping.set()
        try:
            # A call in flight finishes its retries: at most the budget plus a request timeout per try.
            deadline = time.monotonic() + self.retries.budget() + self.retries.timeout * (self.retries.max_retries + 1)
            for thread in self._threads:
                thread.join(timeout=max(1.0, deadline - time.monotonic()))
            self._stopped = time.monotonic()
            alive = [thread.name for thread in self._threads if thread.is_alive()]
            if alive and kind is None:
                raise AssertionError(f"load clients still in a call after their retry budget: {alive}")
        finally:
            self._restore()

    def _restore(self) -> None:
        logger = logging.getLogger(_RETRY_LOGGER)
        logger.removeHandler(self._counter)
        logger.setLevel(self._saved_logger[0])
        logger.propagate = self._saved_logger[1]
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    def verify(self) -> LoadResult:
        """Reads every client's run back and returns the result; each acknowledged write not stored is lost."""
        assert self.stopping.is_set(), "verify() after the load stopped (leave its `with` block first)"
        reader = MlflowClient(self.tracking_uri)
        lost: list[tuple[int, Write]] = []
        for thread in self._threads:
            run = reader.get_run(thread.run_id)
            metrics = {
                (m.step, m.value, m.timestamp) for m in reader.get_metric_history(thread.run_id, self.metric_key)
            }
            stored = {"param": run.data.params, "tag": run.data.tags}
            for write in thread.acknowledged:
                if write.kind == "metric":
                    found = (write.step, float(write.value), _TIMESTAMP) in metrics
                else:
                    found = stored[write.kind].get(write.key) == write.value
                if not found:
                    lost.append((thread.index, write))
        return LoadResult(
            clients=self.clients,
            sent=sum(thread.sent for thread in self._threads),
            acknowledged=self.acknowledged(),
            failed=[failure for thread in self._threads for failure in thread.failed],
            lost=lost,
            retries=self._counter.count,
            longest_call=max((max(thread.latencies, default=0.0) for thread in self._threads), default=0.0),
            latencies=[latency for thread in self._threads for latency in thread.latencies],
            seconds=self._stopped - self._started,
            retry_settings=self.retries,
        )


@dataclass(frozen=True)
class Answer:
    """One probe of the server: when it was sent, and the release that answered (None: no answer)."""

    at: float
    release: str | None


class ReleaseProbe(threading.Thread):
    """Asks the front door which MLflow release answers (`GET /version`) every `interval` seconds, no retries.

    Measures a stop as the server side has it: the longest time without an answer, which client
    retries with backoff can only stretch; and whether two releases ever answered in turn.
    Credentials and the CA come from the environment (tests/e2e.py `trusting`).
    """

    def __init__(self, tracking_uri: str, interval: float = 0.25, timeout: float = 2.0) -> None:
        super().__init__(name="release-probe", daemon=True)
        self.url, self.interval, self.timeout = f"{tracking_uri.rstrip('/')}/version", interval, timeout
        self.answers: list[Answer] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        import requests

        username, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        auth = (username, password) if username and password else None
        with requests.Session() as session:
            while not self._stopping.is_set():
                sent = time.monotonic()
                try:
                    response = session.get(self.url, auth=auth, timeout=self.timeout)
                    release = response.text.strip() if response.status_code == 200 else None
                except requests.RequestException:
                    release = None
                self.answers.append(Answer(sent, release))
                self._stopping.wait(self.interval)

    def __enter__(self) -> ReleaseProbe:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stopping.set()
        self.join(timeout=self.timeout + 5)

    def releases(self) -> list[str]:
        """The releases that answered, in order, each run of equal answers once (gaps left out)."""
        seen: list[str] = []
        for answer in self.answers:
            if answer.release is not None and (not seen or seen[-1] != answer.release):
                seen.append(answer.release)
        return seen

    def longest_outage(self) -> float:
        """Seconds from the last answer before the longest run of unanswered probes to the first after it."""
        longest, last_answered = 0.0, None
        for answer in self.answers:
            if answer.release is None:
                continue
            if last_answered is not None:
                longest = max(longest, answer.at - last_answered)
            last_answered = answer.at
        return longest
