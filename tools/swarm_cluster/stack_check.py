"""`make cluster-stack-check`: the program's swarm stack on the local 3-node cluster, and the loss of a node under load.

1. `up` of the cluster (tools/swarm_cluster/cluster.py), and a SeaweedFS S3 store on the cluster's
   bridge (tests/s3_store.py), which the tasks on every node and this process reach at one address;
2. a prod-like stack through the local deployer with DOCKER_HOST = the manager and `imageRegistry` =
   the cluster's registry, with its login (`imageRegistryUsername`, the secret `imageRegistryPassword`):
   the MLflow and proxy images built on the manager and pushed, the services running them by digest
   and carrying the login (`auth`) their nodes pull with; the base, Postgres and Caddy images the
   registry's copies of the stand-ins (pulled on the manager with the login first, as a deploying
   machine's `docker login` would let pulumi-docker pull them). 3 MLflow replicas (1 worker), auth,
   the internal CA's HTTPS, artifacts in the store;
3. placement: MLflow's tasks spread over the nodes, Postgres, its bootstrap and the front door on
   the labelled node; the registry refuses the same images without the login (401 to a request, an
   anonymous pull on a node fails) and no service or task shows the password; a realistic run
   written and read back through the front door (at the labelled node's address on the cluster
   bridge: it publishes in host mode there);
4. under 8 logging clients (tests/load.py), the node container of a worker that runs an MLflow task
   and not Postgres is stopped: requests failed after the clients' retries, acknowledged writes lost,
   seconds until the manager marks the node down and until 3 MLflow tasks are healthy again elsewhere;
5. everything removed (stack, store, cluster), whatever failed. The figures are printed as JSON.

Not in `make test`: several minutes, three nested engines, root for the registry's trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tools.local_deploy import deployer, prepare
from tools.local_deploy.state import state_path
from tools.swarm_cluster import cluster, spec

STACK = "cluster"
PREFIX = "stacks/cluster"
REPLICAS = 3
PUBLIC_HOST = "mlflow.cluster.internal"
HTTPS_PORT = 8443
S3_STORE_NAME = "mlflow-cluster-s3"
LOAD_CLIENTS = 8
# Seconds of load before the stop and after the replacement, so both sides of it are measured.
STEADY_SECONDS = 5
HEALTHY_TIMEOUT = 300.0
SERVING_TIMEOUT = 300.0
# Prod-like, as tests/test_e2e_swarm.py, with the registry's images and the cluster's ports.
OVERRIDES: dict[str, object] = {
    "engine": "swarm",
    "mlflowReplicas": REPLICAS,
    "workers": 1,
    "mlflowMemoryMb": 1024,
    "authEnabled": True,
    "protectData": True,
    "tlsMode": "internal",
    "httpsPort": HTTPS_PORT,
    "httpPort": 8080,
    "publicHost": PUBLIC_HOST,
    "bindAddress": "0.0.0.0",
    "useWheelhouse": True,
}


def stack_overrides(made: cluster.Cluster, s3_settings: Mapping[str, object]) -> dict[str, object]:
    """The stack's config: the registry for the built images, the registry's copies of the stand-ins for the rest."""
    images = made.images
    login = made.registry_login()
    return {
        **OVERRIDES,
        **s3_settings,
        "imageRegistry": made.registry,
        "imageRegistryUsername": login["username"],
        # A secret config key: the deployer's log shows it as <secret>, the program wraps it in Output.secret.
        "imageRegistryPassword": login["password"],
        "imageRegistryCaCertificate": Path(made.ca_certificate_file).read_text(),
        "postgresNodeLabel": made.postgres_node_label,
        "baseImage": images[prepare.STANDIN_BASE_IMAGE],
        "postgresImage": images[prepare.STANDIN_POSTGRES_IMAGE],
        "proxyImage": images[prepare.STANDIN_CADDY_IMAGE],
    }


@contextlib.contextmanager
def _docker_host(url: str) -> Iterator[None]:
    """The local deployer talks to DOCKER_HOST's engine (docker.from_env)."""
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved


def _service(manager: docker.DockerClient, name: str) -> Any:
    return manager.services.get(name)


def _hostnames(manager: docker.DockerClient) -> dict[str, str]:
    return {node.id: node.attrs["Description"]["Hostname"] for node in manager.nodes.list()}


class _Nodes:
    """Each node's own engine, for its task containers' health; a stopped node's is skipped."""

    def __init__(self, state_dir: Path, made: cluster.Cluster) -> None:
        self.clients = {name: cluster.node_client(state_dir, index) for index, name in enumerate(made.nodes, 1)}
        self.stopped: set[str] = set()

    def healthy(self, hostname: str, container_id: str) -> bool:
        if hostname in self.stopped:
            return False
        try:
            container = self.clients[hostname].containers.get(container_id)
        except (docker.errors.DockerException, OSError):
            return False
        return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _healthy_tasks(manager: docker.DockerClient, nodes: _Nodes, service: Any) -> dict[str, str]:
    """The service's tasks that should run and do, their container healthy: task id -> node hostname."""
    names = _hostnames(manager)
    healthy = {}
    for task in service.tasks(filters={"desired-state": "running"}):
        status = task["Status"]
        container_id = status.get("ContainerStatus", {}).get("ContainerID")
        hostname = names.get(task.get("NodeID", ""), "")
        if status["State"] == "running" and container_id and nodes.healthy(hostname, container_id):
            healthy[task["ID"]] = hostname
    return healthy


def _wait_healthy(
    manager: docker.DockerClient, nodes: _Nodes, service: Any, replicas: int, timeout: float = HEALTHY_TIMEOUT
) -> tuple[float, dict[str, str]]:
    """Seconds until `replicas` healthy tasks, and those tasks."""
    started = time.monotonic()
    healthy: dict[str, str] = {}
    while time.monotonic() - started < timeout:
        healthy = _healthy_tasks(manager, nodes, service)
        if len(healthy) == replicas:
            return time.monotonic() - started, healthy
        time.sleep(0.5)
    raise spec.ClusterError(f"{service.name}: not {replicas} healthy tasks after {timeout:.0f}s: {healthy}")


def _per_node(tasks: dict[str, str]) -> dict[str, int]:
    return dict(sorted(Counter(tasks.values()).items()))


def _demonstrate(
    made: cluster.Cluster, state_dir: Path, host: docker.DockerClient, outputs: dict[str, Any], results: dict[str, Any]
) -> None:
    # Imported here: the test helpers pull in MLflow's client, which `up`, `down` and `check` do without.
    from mlflow.tracking import MlflowClient

    from tests import e2e, load

    manager = cluster.node_client(state_dir, 1)
    nodes = _Nodes(state_dir, made)
    try:
        mlflow = _service(manager, str(outputs["mlflow_service_name"]))
        _, tasks = _wait_healthy(manager, nodes, mlflow, REPLICAS)
        results["mlflow_tasks_per_node"] = _per_node(tasks)
        results["mlflow_image"] = mlflow.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        if not results["mlflow_image"].startswith(f"{made.registry}/"):
            raise spec.ClusterError(f"MLflow's tasks do not run the registry's image: {results['mlflow_image']}")
        pinned = {}
        # The bootstrap has no output of its own: found by its role label.
        [bootstrap] = manager.services.list(
            filters={"label": [f"com.pulumi.stack={STACK}", "org.mlflow-platform.role=database-bootstrap"]}
        )
        services = {
            "postgres": _service(manager, str(outputs["postgres_container_name"])),
            "db-bootstrap": bootstrap,
            "proxy": _service(manager, str(outputs["proxy_container_name"])),
        }
        for role, service in services.items():
            _, role_tasks = _wait_healthy(manager, nodes, service, 1)
            pinned[role] = sorted(role_tasks.values())
        results["pinned_tasks_node"] = pinned
        results["postgres_node"] = made.postgres_node
        counts = [results["mlflow_tasks_per_node"].get(node, 0) for node in made.nodes]
        if max(counts) - min(counts) > 1:
            raise spec.ClusterError(f"MLflow's tasks are not spread: {results['mlflow_tasks_per_node']}")
        if any(where != [made.postgres_node] for where in pinned.values()):
            raise spec.ClusterError(f"not every pinned task runs on {made.postgres_node}: {pinned}")
        results["registry_login"] = _registry_needs_the_login(
            made, state_dir, manager, services["proxy"], [mlflow, *services.values()]
        )

        front_door = cluster._node_ip(host, made.nodes.index(made.postgres_node) + 1)
        results["front_door"] = f"{front_door}:{HTTPS_PORT}"
        admin = (str(outputs["admin_username"]), str(outputs["admin_password"]))
        deployed = e2e.Deployed(STACK, {}, outputs, 0.0)
        with (
            tempfile.TemporaryDirectory(prefix="cluster-stack-check-") as directory,
            e2e.resolving({PUBLIC_HOST: front_door}),
            e2e.trusting(deployed, Path(directory), auth=admin),
        ):
            results["serving_seconds"] = round(
                e2e.wait_until_serving(deployed.tracking_uri, timeout=SERVING_TIMEOUT, auth=admin), 1
            )
            client = MlflowClient(deployed.tracking_uri)
            started = time.monotonic()
            seed = e2e.write_seed(client, Path(directory) / "seed")
            results["realistic_run_written_seconds"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            e2e.verify_seed(client, seed, Path(directory) / "down")
            results["realistic_run_read_back_seconds"] = round(time.monotonic() - started, 1)
            _stop_a_node_under_load(made, host, manager, nodes, mlflow, tasks, deployed, load, results)
    finally:
        nodes.close()
        manager.close()


_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
)


def _manifest_status(made: cluster.Cluster, reference: str, login: tuple[str, str] | None) -> int:
    """GET of the manifest a node pulls for `<registry>/<repository>@<digest>`, with or without the login."""
    repository, _, digest = reference.removeprefix(f"{made.registry}/").partition("@")
    path = f"/v2/{repository}/manifests/{digest}"
    return cluster.registry_status(made.registry, Path(made.ca_certificate_file), login, path, accept=_MANIFEST_TYPES)


def _registry_needs_the_login(
    made: cluster.Cluster, state_dir: Path, manager: docker.DockerClient, proxy: Any, services: list[Any]
) -> dict[str, Any]:
    """While the stack's tasks run on images pulled by digest: the registry answers those manifests only
    with the login, an anonymous pull of one fails on a node that has not pulled it, and the password
    is in no service's or task's inspect (the manager keeps the services' login to itself)."""
    login = made.registry_login()
    credentials = (login["username"], login["password"])
    proxy_image = str(proxy.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])
    if "@sha256:" not in proxy_image or not proxy_image.startswith(f"{made.registry}/"):
        raise spec.ClusterError(f"the proxy does not run the registry's image by digest: {proxy_image}")
    found: dict[str, Any] = {
        "image": proxy_image,
        "manifest_status_anonymous": _manifest_status(made, proxy_image, None),
        "manifest_status_with_login": _manifest_status(made, proxy_image, credentials),
    }
    # A worker without the proxy's task has never had its image (the manager built it): its engine must
    # ask the registry.
    index = next(i for i, name in enumerate(made.nodes, 1) if name not in (made.postgres_node, made.manager))
    node = cluster.node_client(state_dir, index)
    try:
        # An empty auth_config: no login at all, whatever a Docker config file on this host holds.
        node.images.pull(proxy_image, auth_config={})
        found["anonymous_pull"] = f"succeeded on {made.nodes[index - 1]}"
    except docker.errors.APIError as error:
        found["anonymous_pull"] = f"refused on {made.nodes[index - 1]}: {error.explanation}"
    finally:
        node.close()
    inspected = json.dumps(
        [[service.attrs, manager.api.tasks(filters={"service": service.name})] for service in services]
    )
    found["password_in_inspect"] = login["password"] in inspected
    if (
        found["manifest_status_anonymous"] != 401
        or found["manifest_status_with_login"] != 200
        or not found["anonymous_pull"].startswith("refused")
        or found["password_in_inspect"]
    ):
        raise spec.ClusterError(f"the registry's login is not what the nodes pull with: {found}")
    return found


def _stop_a_node_under_load(
    made: cluster.Cluster,
    host: docker.DockerClient,
    manager: docker.DockerClient,
    nodes: _Nodes,
    mlflow: Any,
    tasks: dict[str, str],
    deployed: Any,
    load: Any,
    results: dict[str, Any],
) -> None:
    # A worker that runs an MLflow task and not Postgres (the manager's loss would stop the control plane).
    candidates = sorted(set(tasks.values()) - {made.manager, made.postgres_node})
    if not candidates:
        raise spec.ClusterError(f"no worker without Postgres runs an MLflow task: {tasks}")
    victim = candidates[0]
    [victim_id] = [node_id for node_id, name in _hostnames(manager).items() if name == victim]
    with load.Load(deployed.tracking_uri, clients=LOAD_CLIENTS) as traffic:
        time.sleep(STEADY_SECONDS)
        results["acknowledged_before_stop"] = traffic.acknowledged()
        nodes.stopped.add(victim)
        results["stopped_node"] = victim
        stopped_at = cluster.stop_node(host, manager, victim, victim_id, HEALTHY_TIMEOUT, results)
        _, after = _wait_healthy(manager, nodes, mlflow, REPLICAS)
        results["replicas_healthy_again_seconds"] = round(time.monotonic() - stopped_at, 1)
        results["mlflow_tasks_per_node_after"] = _per_node(after)
        time.sleep(STEADY_SECONDS)
    result = traffic.verify()
    results["load"] = {
        "clients": result.clients,
        "seconds": round(result.seconds, 1),
        "sent": result.sent,
        "acknowledged": result.acknowledged,
        "failed": len(result.failed),
        "lost": len(result.lost),
        "retried_requests": result.retries,
        "retry_budget_seconds": round(result.retry_settings.budget()),
        "longest_call_seconds": round(result.longest_call, 1),
        "summary": result.summary(),
        "failures": [f"client {index}: {write.kind} {write.key}: {error}" for index, write, error in result.failed][:5],
    }
    if result.lost or result.failed or result.acknowledged <= results["acknowledged_before_stop"]:
        raise spec.ClusterError(f"the node's loss was not absorbed: {result.summary()}")


def _pull_on_manager(made: cluster.Cluster, state_dir: Path) -> None:
    """The registry's copies of the stand-ins (base, Postgres, Caddy) pulled on the manager with the login.

    The program declares them as RemoteImages, which pulumi-docker pulls on the manager with the
    deploying machine's Docker login (its ~/.docker/config.json, `docker login <registry>`): the local
    deployer reads the same file, which this check leaves alone. Pulled here instead, with the login
    given to this one pull only, so the one login any node gets is the one the services carry (`auth`).
    """
    manager = cluster.node_client(state_dir, 1)
    try:
        for reference in made.images.values():
            manager.images.pull(reference, auth_config=made.registry_login())
    finally:
        manager.close()


def _timed(results: dict[str, Any], key: str, action: Callable[[], Any]) -> Any:
    started = time.monotonic()
    value = action()
    results[key] = round(time.monotonic() - started, 1)
    return value


def _remove_stack(made: cluster.Cluster, results: dict[str, Any]) -> None:
    """The stack's services, secrets, configs and networks, through the manager; the nodes' volumes go with them."""
    started = time.monotonic()
    try:
        with _docker_host(made.docker_host):
            deployer.down(STACK, purge=True)
    except deployer.DeployError as error:
        # A stopped node's leftovers; `down` of the cluster removes its engines whole.
        results["stack_down_error"] = str(error)[:500]
        state_path(STACK).unlink(missing_ok=True)
    results["stack_down_seconds"] = round(time.monotonic() - started, 1)


def stack_check(results: dict[str, Any], *, state_dir: Path = cluster.DEFAULT_STATE_DIR) -> None:
    """Runs the whole check (see the module's docstring), its figures into `results` as they come (a failure
    leaves those measured before it); the stack, the store and the cluster are removed whatever happens."""
    from tests.s3_store import running_store

    host = cluster.connect("unix:///var/run/docker.sock")
    check_started = time.monotonic()
    with contextlib.ExitStack() as teardown:
        made = _timed(results, "cluster_up_seconds", lambda: cluster.up(client=host, state_dir=state_dir))

        def cluster_down() -> None:
            started = time.monotonic()
            cluster.down(client=host, state_dir=state_dir)
            results["cluster_down_seconds"] = round(time.monotonic() - started, 1)

        teardown.callback(cluster_down)
        store = teardown.enter_context(running_store(host, name=S3_STORE_NAME, network=spec.NETWORK_NAME))
        results["s3_endpoint"] = store.endpoint
        overrides = stack_overrides(made, store.stack_settings(PREFIX))
        teardown.callback(_remove_stack, made, results)
        _timed(results, "registry_images_on_manager_seconds", lambda: _pull_on_manager(made, state_dir))
        with _docker_host(made.docker_host):
            deployer.down(STACK, purge=True)  # the state file of a run killed before its teardown
            outputs = _timed(results, "stack_up_seconds", lambda: deployer.up(STACK, overrides, standins=False))
        _demonstrate(made, state_dir, host, outputs, results)
    results["total_seconds"] = round(time.monotonic() - check_started, 1)
    filters = {"label": spec.CLUSTER_LABEL}
    results["left_after_down"] = [
        *(c.name for c in host.containers.list(all=True, filters=filters)),
        *(v.name for v in host.volumes.list(filters=filters)),
        *(n.name for n in host.networks.list(filters=filters)),
        *(c.name for c in host.containers.list(all=True, filters={"name": S3_STORE_NAME})),
    ]
    if results["left_after_down"]:
        raise spec.ClusterError(f"left after down: {results['left_after_down']}")
