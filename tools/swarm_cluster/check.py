"""`make cluster-check`: brings the cluster up, proves what the multi-node swarm target relies on, takes it down.

1. a 3-replica service, spread over node.id, from an image every node pulls from the registry with
   the login the service carries: one task per node, and each task answers across the overlay
   network (VXLAN between nodes);
2. a 1-replica service constrained to the Postgres node label lands on the labelled worker;
3. the node container of a worker that runs a replica (not the Postgres node) is stopped: how
   long until the manager marks it down and the replica runs again elsewhere;
4. `down`, and nothing labelled is left.

Services use `endpoint_mode: dnsrr`: this host's kernel has no IPVS (CONFIG_IP_VS unset), so
a swarm VIP and the ingress routing mesh accept nothing (checked by hand: a VIP timed out,
`tasks.<service>` and host-mode published ports answered).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import docker.types

from tools.local_deploy import prepare
from tools.swarm_cluster import cluster, spec

_NETWORK = "cluster-check"
_WEB = "cluster-check-web"
_PINNED = "cluster-check-pinned"
_PORT = 8000
_CONVERGE_TIMEOUT = 120.0
_RESCHEDULE_TIMEOUT = 120.0

# PID 1 ignores an unhandled SIGTERM: wait for it explicitly, so the task stops at once.
_IDLE = "import signal; s = {signal.SIGTERM}; signal.pthread_sigmask(signal.SIG_BLOCK, s); signal.sigwait(s)"
# Run on the manager, on the overlay: every task of the web service, by its own address.
_PROBE = f"""
import socket, urllib.request
addresses = sorted({{a[4][0] for a in socket.getaddrinfo("tasks.{_WEB}", {_PORT}, proto=socket.IPPROTO_TCP)}})
for address in addresses:
    with urllib.request.urlopen(f"http://{{address}}:{_PORT}/", timeout=5) as response:
        print(address, response.status)
"""


def _running_tasks(service: Any) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = service.tasks(filters={"desired-state": "running"})
    return [task for task in tasks if task["Status"]["State"] == "running"]


def _hostnames(manager: docker.DockerClient) -> dict[str, str]:
    return {node.id: node.attrs["Description"]["Hostname"] for node in manager.nodes.list()}


def _placement(manager: docker.DockerClient, service: Any) -> list[str]:
    names = _hostnames(manager)
    return sorted(names[task["NodeID"]] for task in _running_tasks(service))


def _wait_running(service: Any, replicas: int, *, avoid: str | None = None, timeout: float) -> float:
    """Seconds until `replicas` tasks run (none of them on node id `avoid`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        running = [task for task in _running_tasks(service) if task["NodeID"] != avoid]
        if len(running) == replicas:
            return time.monotonic() - started
        time.sleep(0.25)
    raise spec.ClusterError(f"service {service.name} has not {replicas} running tasks after {timeout:.0f}s")


def _demonstrate(made: cluster.Cluster, state_dir: Path, host: docker.DockerClient) -> dict[str, Any]:
    results: dict[str, Any] = {}
    manager = cluster.node_client(state_dir, 1)
    # The registry needs a login: the manager's client sends it with the services it creates (the
    # nodes pull with it, as `--with-registry-auth`) and with its own pull for the probe below.
    login = made.registry_login()
    manager.login(login["username"], login["password"], registry=made.registry, reauth=True)
    image = made.images[prepare.STANDIN_BASE_IMAGE]
    labels = spec.labels("check")
    manager.networks.create(_NETWORK, driver="overlay", attachable=True, labels=labels)
    started = time.monotonic()
    web = manager.services.create(
        image,
        ["python", "-m", "http.server", str(_PORT)],
        name=_WEB,
        labels=labels,
        mode=docker.types.ServiceMode("replicated", replicas=3),
        preferences=[docker.types.PlacementPreference("spread", "node.id")],
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        networks=[_NETWORK],
        stop_grace_period=2_000_000_000,
    )
    _wait_running(web, 3, timeout=_CONVERGE_TIMEOUT)
    results["web_converged_seconds"] = round(time.monotonic() - started, 1)
    results["web_tasks_per_node"] = dict(Counter(_placement(manager, web)))
    if sorted(results["web_tasks_per_node"]) != made.nodes:
        raise spec.ClusterError(f"the 3 replicas are not one per node: {results['web_tasks_per_node']}")
    answers = manager.containers.run(image, ["python", "-c", _PROBE], network=_NETWORK, remove=True)
    results["web_answers_over_overlay"] = bytes(answers).decode().split("\n")[:-1]
    if len(results["web_answers_over_overlay"]) != 3:
        raise spec.ClusterError(f"not every task answered over the overlay: {results['web_answers_over_overlay']}")

    key, value = spec.parse_node_label(made.postgres_node_label)
    pinned = manager.services.create(
        image,
        ["python", "-c", _IDLE],
        name=_PINNED,
        labels=labels,
        mode=docker.types.ServiceMode("replicated", replicas=1),
        constraints=[f"node.labels.{key}=={value}"],
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
    )
    _wait_running(pinned, 1, timeout=_CONVERGE_TIMEOUT)
    results["pinned_task_node"] = _placement(manager, pinned)
    if results["pinned_task_node"] != [made.postgres_node]:
        raise spec.ClusterError(f"the pinned task runs on {results['pinned_task_node']}, not {made.postgres_node}")

    # A worker with a replica that is neither the manager nor the Postgres node.
    names = _hostnames(manager)
    victim_id, victim = next(
        (task["NodeID"], names[task["NodeID"]])
        for task in _running_tasks(web)
        if names[task["NodeID"]] not in (made.manager, made.postgres_node)
    )
    results["stopped_node"] = victim
    stopped_at = cluster.stop_node(host, manager, victim, victim_id, _RESCHEDULE_TIMEOUT, results)
    _wait_running(web, 3, avoid=victim_id, timeout=_RESCHEDULE_TIMEOUT)
    results["replica_rescheduled_seconds"] = round(time.monotonic() - stopped_at, 1)
    results["web_tasks_per_node_after"] = dict(Counter(_placement(manager, web)))
    manager.close()
    return results


def check(*, state_dir: Path = cluster.DEFAULT_STATE_DIR) -> dict[str, Any]:
    """Runs the whole check; the cluster is taken down whatever happens. Returns the timings."""
    host = cluster.connect()
    check_started = started = time.monotonic()
    made = cluster.up(client=host, state_dir=state_dir, push=[prepare.STANDIN_BASE_IMAGE])
    results: dict[str, Any] = {"up_seconds": round(time.monotonic() - started, 1)}
    try:
        results.update(_demonstrate(made, state_dir, host))
    finally:
        started = time.monotonic()
        cluster.down(client=host, state_dir=state_dir)
        results["down_seconds"] = round(time.monotonic() - started, 1)
    results["total_seconds"] = round(time.monotonic() - check_started, 1)
    # `down` raises if anything labelled stays; this is the same question asked independently.
    filters = {"label": spec.CLUSTER_LABEL}
    results["left_after_down"] = [
        *(c.name for c in host.containers.list(all=True, filters=filters)),
        *(v.name for v in host.volumes.list(filters=filters)),
        *(n.name for n in host.networks.list(filters=filters)),
    ]
    return results
