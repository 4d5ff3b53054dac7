"""What every realiser shares during one `up`: the engine client, the state file, the events, the abort flag."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import docker
import pulumi

from tools.local_deploy.common import MANAGED_LABEL, PROJECT_LABEL, STACK_LABEL, AbortedError, DeployError, log
from tools.local_deploy.inputs import label_map
from tools.local_deploy.state import load_state, save_state
from tools.mocks import EngineMocks

# Makes one resource for real: its id and the outputs the provider would compute.
Realise = Callable[["Session", pulumi.runtime.MockResourceArgs, dict[str, Any]], tuple[str, dict[str, Any]]]


class Session(EngineMocks):
    """The mocks' registrations plus what the realisers (randoms, tls, docker_realise, containers) share."""

    def __init__(self, project: str, stack: str) -> None:
        super().__init__()
        self.project = project
        self.stack = stack
        self.state = load_state(stack)
        self._state_lock = threading.Lock()
        self._local = threading.local()
        # Set by the first failure: creates still running in other threads (a build,
        # a health wait) stop early instead of holding the process for minutes.
        self.aborted = threading.Event()
        self.first_error: DeployError | None = None
        # Creates still running: after a failure `up` waits for them, so a `down`
        # that follows never races a container being created behind its back.
        self._in_flight = 0
        self._idle = threading.Condition()
        self.started = time.monotonic()
        # (seconds since start, event, resource name): the order things happened in.
        self.events: list[tuple[float, str, str]] = []
        # Swarm secrets and configs this `up` made or reused: the stack's others go once unused.
        self.made_this_up: set[str] = set()

    @property
    def client(self) -> docker.DockerClient:
        """One client per thread: the mocks call `create` from the SDK's thread pool."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = docker.from_env(timeout=300)
            self._local.client = client
        return client

    def event(self, event: str, name: str) -> None:
        elapsed = time.monotonic() - self.started
        self.events.append((elapsed, event, name))
        log(f"[{elapsed:6.1f}s] {event} {name}")

    def update_state(self, change: Callable[[dict[str, Any]], None]) -> None:
        with self._state_lock:
            change(self.state)
            self.state.update(project=self.project, stack=self.stack)
            save_state(self.stack, self.state)

    def record(self, kind: str, name: str) -> None:
        """Remembers what `up` made or took over, for `down` (besides finding it by label)."""

        def add(state: dict[str, Any]) -> None:
            state[kind] = sorted({*state.get(kind, []), name})

        self.update_state(add)

    def labels(self, inputs: Mapping[str, Any]) -> dict[str, str]:
        """The declared labels, plus the stack's own so `down` finds the resource from any process."""
        labels = label_map(inputs.get("labels"))
        labels.setdefault(PROJECT_LABEL, self.project)
        labels.setdefault(STACK_LABEL, self.stack)
        labels[MANAGED_LABEL] = "true"
        return labels

    def options(self, args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
        return self.pending_options.get((args.typ, args.name), {})

    def check_aborted(self, name: str) -> None:
        if self.aborted.is_set():
            raise AbortedError(f"'{name}': stopped because another resource failed")

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no create is running; False if some still are after `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)
