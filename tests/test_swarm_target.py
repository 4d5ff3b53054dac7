"""SwarmTarget: what it makes of a workload, and what a swarm stack declares (engine: swarm).

Each test reads what the program declared under mocks (tests/expected.py's `built` and
tests/harness.py's `declaration` run it in `pulumi.runtime.test` and return once every
Output resolved): replicas, rolling updates, swarm secrets and configs, placement, overlay
networks, the task limit's shell, and that no secret value reaches a service.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pulumi
import pytest

from components.context import ImageRegistry, StackContext
from components.db_bootstrap import READY_FILE
from components.mlflow_facts import MLFLOW_ENTRYPOINT
from components.proxy import CaddySite, caddyfile
from components.swarm import SwarmTarget
from components.task_limits import MLFLOW_TASKS, POSTGRES_TASKS, PROXY_TASKS
from components.workload import DATABASE, HealthCheck, Workload
from tests.conftest import CONTAINER, IMAGE, NETWORK, RANDOM_PASSWORD, VOLUME
from tests.expected import built, unit_context
from tests.harness import EngineMocks, Registration, declaration
from tests.test_standalone_target import EVERYTHING, MINIMAL, OWNER, TOKEN

SERVICE = "docker:index/service:Service"
SECRET = "docker:index/secret:Secret"
SERVICE_CONFIG = "docker:index/serviceConfig:ServiceConfig"
TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
NODE_LABEL = "mlflow-platform.postgres=true"
PINNED = {"constraints": ["node.labels.mlflow-platform.postgres==true"]}
SPREAD = {"prefs": ["spread=node.id"]}
SWARM = {"engine": "swarm", "artifactStore": "s3", "artifactBucket": "ml-artifacts", "mlflowReplicas": 3}


def _labels(role: str, **extra: str) -> list[dict[str, str]]:
    labels = {"com.pulumi.project": "mlflow-platform", "com.pulumi.stack": "unit", "org.mlflow-platform.role": role}
    return [{"label": key, "value": value} for key, value in sorted({**labels, **extra}.items())]


def _swarm_context(**changes: Any) -> StackContext:
    return dataclasses.replace(
        unit_context(), engine="swarm", data_node_label=NODE_LABEL, network_id="front-id", **changes
    )


def _limited(limit: int, *entrypoint: str) -> list[str]:
    """The shell that sets RLIMIT_NPROC and execs the entrypoint."""
    script = f'set -e; ulimit -u {limit} 2>/dev/null || ulimit -p {limit}; exec "$@"'
    return ["/bin/sh", "-c", script, "sh", *entrypoint]


def _built_service(workload: Workload, context: StackContext | None = None) -> EngineMocks:
    def build() -> pulumi.ComponentResource:
        owner = pulumi.ComponentResource(OWNER, "owner")
        (context or _swarm_context()).target.service(owner, "owner-service", workload)
        return owner

    mocks, _ = built(build)
    return mocks


def test_the_context_picks_the_target_from_the_engine() -> None:
    assert isinstance(_swarm_context().target, SwarmTarget)
    assert not isinstance(unit_context().target, SwarmTarget)


def test_a_service_gets_every_field_of_its_description_and_the_stacks_shared_settings() -> None:
    mocks = _built_service(EVERYTHING)
    service = mocks.one(SERVICE, "owner-service")
    # It publishes ports (host mode): the old task must free them before the new one binds them.
    update = {"parallelism": 1, "order": "stop-first", "failureAction": "rollback", "monitor": "4s"}
    volume_options = {"labels": _labels("web")}
    assert service.inputs == {
        "name": "mlflow-platform-unit-web",
        "labels": _labels("web", **{"org.example.extra": "x"}),
        "mode": {"replicated": {"replicas": 1}},
        "taskSpec": {
            "containerSpec": {
                "image": "sha256:" + "c" * 64,
                "user": "1234:5678",
                "commands": _limited(96, "/usr/local/bin/web"),
                "args": ["serve", "--port", "8000"],
                "env": {"WEB_PORT": "8000", "WEB_MODE": "strict"},
                "labels": _labels("web", **{"org.example.extra": "x"}),
                "mounts": [
                    {"target": "/var/lib/web", "type": "volume", "source": "web-data", "volumeOptions": volume_options},
                    {
                        "target": "/srv/seed",
                        "type": "volume",
                        "source": "web-seed",
                        "readOnly": True,
                        "volumeOptions": volume_options,
                    },
                    {"target": "/etc/web", "type": "volume"},
                    {"target": "/tmp", "type": "tmpfs", "tmpfsOptions": {"sizeBytes": 1024 * 1024}},
                    {"target": "/dev/shm", "type": "tmpfs", "tmpfsOptions": {"sizeBytes": 64 * 1024 * 1024}},
                ],
                "secrets": [
                    {
                        "secretId": "owner-service-run-secrets-token-id",
                        "fileName": "/run/secrets/token",
                        "fileUid": "1234",
                        "fileGid": "1234",
                        "fileMode": 0o400,
                    }
                ],
                "configs": [
                    {
                        "configId": "owner-service-etc-web-web-conf-id",
                        "fileName": "/etc/web/web.conf",
                        "fileUid": "0",
                        "fileGid": "0",
                        "fileMode": 0o444,
                    },
                    {
                        "configId": "owner-service-usr-local-bin-web-hook-id",
                        "fileName": "/usr/local/bin/web-hook",
                        "fileUid": "0",
                        "fileGid": "0",
                        "fileMode": 0o755,
                    },
                ],
                "healthcheck": {
                    "tests": ["CMD", "web", "health"],
                    "interval": "1s",
                    "timeout": "2s",
                    "retries": 3,
                    "startPeriod": "4s",
                },
                "readOnly": True,
                "capDrops": ["ALL"],
                "stopSignal": "SIGQUIT",
                "stopGracePeriod": "7s",
            },
            "networksAdvanceds": [{"id": "front-id", "aliases": ["web", "www"]}],
            # It mounts named volumes, which live on the data node.
            "placement": PINNED,
            "resources": {"limits": {"memoryBytes": 300 * 1024 * 1024}},
            "restartPolicy": {"condition": "any", "delay": "5s"},
            "logDriver": {"name": "json-file", "options": {"max-size": "5m", "max-file": "2"}},
        },
        # DNS round robin, ports on the task's node: neither needs the kernel's IPVS.
        "endpointSpec": {
            "mode": "dnsrr",
            "ports": [
                {"targetPort": 8000, "publishedPort": 18000, "protocol": "tcp", "publishMode": "host"},
                {"targetPort": 8001, "publishedPort": 18001, "protocol": "tcp", "publishMode": "host"},
            ],
        },
        # Watched once healthy for as many failed probes as make it unhealthy, and one more: (3 + 1) x 1 s.
        "updateConfig": update,
        "rollbackConfig": {**update, "failureAction": "pause"},
        # The stack's start-up timeout and the monitor: 90 s + 4 s.
        "convergeConfig": {"delay": "5s", "timeout": "94s"},
    }
    # The service holds no secret at all: the token is a swarm secret, referenced by ID.
    assert service.secret_inputs() == set()
    assert TOKEN not in json.dumps(service.inputs)
    secret = mocks.one(SECRET, "owner-service-run-secrets-token")
    assert secret.inputs == {"data": base64.b64encode(TOKEN.encode()).decode(), "labels": _labels("web")}
    assert secret.secret_inputs() == {"data"}
    config = mocks.one(SERVICE_CONFIG, "owner-service-etc-web-web-conf")
    assert config.inputs == {"data": base64.b64encode(b"port = 8000\n").decode(), "labels": _labels("web")}
    # A service declares no container and no volume.
    assert mocks.of_type(CONTAINER) == []
    assert mocks.of_type(VOLUME) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # No named volume: spread over the nodes; no health check: nothing waited for, a fixed monitor.
        ({}, {"placement": SPREAD, "monitor": "30s", "order": "start-first", "converge": None}),
        ({"single_writer": True}, {"placement": SPREAD, "monitor": "30s", "order": "stop-first", "converge": None}),
        (
            {"health": HealthCheck(["CMD", "true"], "10s", "5s", 6, "1m"), "wait_healthy": False},
            {"placement": SPREAD, "monitor": "70s", "order": "start-first", "converge": None},
        ),
        (
            {"health": HealthCheck(["CMD", "true"], "10s", "5s", 6, "1m")},
            {
                "placement": SPREAD,
                "monitor": "70s",
                "order": "start-first",
                "converge": {"delay": "5s", "timeout": "160s"},
            },
        ),
    ],
    ids=["minimal", "single-writer", "not-waited-for", "health-gated"],
)
def test_placement_update_order_and_the_wait(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    workload = dataclasses.replace(MINIMAL, entrypoint=["/web"], replicas=3, **changes)
    service = _built_service(workload).one(SERVICE, "owner-service").inputs
    assert service["mode"] == {"replicated": {"replicas": 3}}
    assert service["taskSpec"]["placement"] == expected["placement"]
    for key in ("updateConfig", "rollbackConfig"):
        assert service[key]["order"] == expected["order"]
        assert service[key]["monitor"] == expected["monitor"]
    assert service.get("convergeConfig") == expected["converge"]
    assert service["endpointSpec"] == {"mode": "dnsrr"}


def test_the_task_limit_wraps_the_images_own_entrypoint_or_refuses_without_one() -> None:
    service = _built_service(dataclasses.replace(MINIMAL, image_entrypoint=["/entry", "x"], command=["serve"]))
    spec = service.one(SERVICE, "owner-service").inputs["taskSpec"]["containerSpec"]
    assert (spec["commands"], spec["args"]) == (_limited(96, "/entry", "x"), ["serve"])
    with pytest.raises(Exception, match="names no entrypoint"):
        _built_service(MINIMAL)


def test_a_workload_without_networks_joins_the_internal_one_not_the_default_bridge() -> None:
    context = _swarm_context(database_network="db-name", database_network_id="db-id")
    service = _built_service(dataclasses.replace(MINIMAL, entrypoint=["/web"], networks=[]), context)
    assert service.one(SERVICE, "owner-service").inputs["taskSpec"]["networksAdvanceds"] == [{"id": "db-id"}]


def test_a_job_is_a_service_that_says_when_it_is_done() -> None:
    health = HealthCheck(["CMD", "test", "-e", "/tmp/done"], "5s", "5s", 3, "2m")
    found: list[Any] = []

    def build() -> pulumi.ComponentResource:
        owner = pulumi.ComponentResource(OWNER, "owner")
        target = _swarm_context().target
        assert not target.runs_jobs_once
        job = target.job(owner, "owner-job", dataclasses.replace(MINIMAL, entrypoint=["/job"], health=health))
        job.succeeded.apply(found.append)
        return owner

    mocks, _ = built(build)
    service = mocks.one(SERVICE, "owner-job")
    assert service.inputs["mode"] == {"replicated": {"replicas": 1}}
    assert service.inputs["convergeConfig"] == {"delay": "5s", "timeout": "110s"}  # 90 s start-up and the monitor
    assert [type(runner).__name__ for runner in found] == ["Service"]
    with pytest.raises(Exception, match="needs a health check"):
        built(lambda: _swarm_context().target.job(pulumi.ComponentResource(OWNER, "o"), "j", MINIMAL))


def test_networks_are_attachable_overlays_and_volumes_are_left_to_the_nodes() -> None:
    names: list[str] = []

    def build() -> pulumi.ComponentResource:
        owner = pulumi.ComponentResource(OWNER, "owner")
        target = _swarm_context().target
        target.network(owner, "owner-front", "front")
        target.network(owner, "owner-db", "db", internal=True)
        target.volume(owner, "owner-volume", "mlflow-platform-unit-data", "web").name.apply(names.append)
        return owner

    mocks, _ = built(build)
    labels = _labels("network")
    assert mocks.one(NETWORK, "owner-front").inputs == {
        "name": "front",
        "driver": "overlay",
        "attachable": True,
        "labels": labels,
    }
    assert mocks.one(NETWORK, "owner-db").inputs == {
        "name": "db",
        "driver": "overlay",
        "attachable": True,
        "internal": True,
        "labels": labels,
    }
    assert mocks.of_type(VOLUME) == []
    assert names == ["mlflow-platform-unit-data"]


def test_with_a_registry_built_images_are_pushed_with_its_login() -> None:
    registry = ImageRegistry(server="registry.example:5000/ml", username="ci", password="registry-pass")

    def build() -> pulumi.ComponentResource:
        owner = pulumi.ComponentResource(OWNER, "owner")
        target = _swarm_context(registry=registry).target
        target.built_image(owner, "owner-image", "mlflow-platform/web:1", "./mlflow", {"A": "b"})
        target.service(owner, "owner-service", dataclasses.replace(MINIMAL, entrypoint=["/web"]))
        return owner

    mocks, _ = built(build)
    image = mocks.one(IMAGE, "owner-image")
    assert image.inputs == {
        "imageName": "registry.example:5000/ml/mlflow-platform/web:1",
        "build": {"context": "./mlflow", "dockerfile": "./mlflow/Dockerfile", "args": {"A": "b"}},
        "skipPush": False,
        "buildOnPreview": False,
        "registry": {"server": "registry.example:5000", "username": "ci", "password": "registry-pass"},
    }
    assert image.secret_inputs() == {"registry"}
    service = mocks.one(SERVICE, "owner-service")
    assert service.inputs["auth"] == {
        "serverAddress": "registry.example:5000",
        "username": "ci",
        "password": "registry-pass",
    }
    assert service.secret_inputs() == {"auth"}


def test_the_caddyfile_spreads_requests_over_each_healthy_task() -> None:
    site = CaddySite(
        public_host="mlflow.example.internal",
        tls_mode="internal",
        https_port=443,
        upstream="mlflow:5000",
        max_upload_mb=100,
        upstream_tasks="tasks.mlflow-platform-prod-mlflow",
    )
    block = (
        "\treverse_proxy {\n"
        "\t\tdynamic a {\n"
        "\t\t\tname tasks.mlflow-platform-prod-mlflow\n"
        "\t\t\tport 5000\n"
        "\t\t\trefresh 1s\n"
        "\t\t}\n"
        "\t\tlb_policy round_robin\n"
        "\t\tlb_try_duration 15s\n"
        "\t\tlb_try_interval 250ms\n"
        "\t\tfail_duration 10s\n"
        "\t\tflush_interval -1\n"
        "\t\ttransport http {\n"
        "\t\t\tkeepalive 2s\n"
        "\t\t\tdial_timeout 2s\n"
        "\t\t}\n"
        "\t}\n"
    )
    assert block in caddyfile(site)
    # Without tasks, the one upstream as on a single host.
    assert "\treverse_proxy mlflow:5000 {\n" in caddyfile(dataclasses.replace(site, upstream_tasks=""))


# --- The program with engine: swarm ------------------------------------------------------------


def _services(mocks: EngineMocks) -> dict[str, Registration]:
    return {r.inputs["name"].removeprefix("mlflow-platform-prod-"): r for r in mocks.of_type(SERVICE)}


def test_a_swarm_stack_declares_services_secrets_and_configs_and_no_container_or_volume() -> None:
    found = declaration("prod", SWARM)
    mocks = found.mocks
    services = _services(mocks)
    assert set(services) == {"postgres", "db-bootstrap", "mlflow", "backup", "gc", "proxy"}
    assert mocks.of_type(CONTAINER) == []
    assert mocks.of_type(VOLUME) == []
    replicas = {name: s.inputs["mode"]["replicated"]["replicas"] for name, s in services.items()}
    assert replicas == {"postgres": 1, "db-bootstrap": 1, "mlflow": 3, "backup": 1, "gc": 1, "proxy": 1}
    # Only the front door publishes.
    assert {name for name, s in services.items() if "ports" in s.inputs["endpointSpec"]} == {"proxy"}
    assert {s.inputs["endpointSpec"]["mode"] for s in services.values()} == {"dnsrr"}
    assert services["proxy"].inputs["endpointSpec"] == {
        "mode": "dnsrr",
        "ports": [{"targetPort": 8443, "publishedPort": 443, "protocol": "tcp", "publishMode": "host"}],
    }
    placement = {name: s.inputs["taskSpec"]["placement"] for name, s in services.items()}
    # Whatever mounts a named volume is on the data node; the server (artifacts in a bucket) and gc spread.
    assert placement == {
        "postgres": PINNED,
        "db-bootstrap": PINNED,
        "mlflow": SPREAD,
        "backup": PINNED,
        "gc": SPREAD,
        "proxy": PINNED,
    }
    orders = {name: (s.inputs["updateConfig"], s.inputs["rollbackConfig"]) for name, s in services.items()}
    for name, (update, rollback) in orders.items():
        # Postgres and backups write alone; the proxy's host-mode ports are its node's.
        order = "stop-first" if name in ("postgres", "backup", "proxy") else "start-first"
        assert (update["order"], update["failureAction"], update["parallelism"]) == (order, "rollback", 1), name
        assert (rollback["order"], rollback["failureAction"]) == (order, "pause"), name
    # MLflow: 12 failed probes of 5 s make it unhealthy, and one more interval.
    assert orders["mlflow"][0]["monitor"] == "65s"
    assert found.values["engine"] == "swarm"
    assert found.values["mlflow_service_name"] == "mlflow-platform-prod-mlflow"
    assert found.values["mlflow_replicas"] == 3


def test_networks_are_overlays_and_the_database_one_is_internal() -> None:
    networks = {r.inputs["name"]: r.inputs for r in declaration("prod", SWARM).mocks.of_type(NETWORK)}
    assert {name: (n["driver"], n["attachable"], n.get("internal")) for name, n in networks.items()} == {
        "mlflow-platform-prod": ("overlay", True, None),
        "mlflow-platform-prod-db": ("overlay", True, True),
    }


def test_every_service_runs_under_its_task_limit() -> None:
    services = _services(declaration("prod", SWARM).mocks)
    commands = {name: s.inputs["taskSpec"]["containerSpec"]["commands"] for name, s in services.items()}
    assert commands == {
        "postgres": _limited(POSTGRES_TASKS, "/opt/mlflow-platform/postgres-entrypoint"),
        "db-bootstrap": _limited(MLFLOW_TASKS, "python", "/opt/mlflow-entrypoint/bootstrap_db.py"),
        "mlflow": _limited(MLFLOW_TASKS, MLFLOW_ENTRYPOINT),
        "backup": _limited(MLFLOW_TASKS, "/usr/local/bin/mlflow-backup"),
        "gc": _limited(MLFLOW_TASKS, "/usr/local/bin/mlflow-gc"),
        "proxy": _limited(PROXY_TASKS, "/bin/sh", "-c"),
    }


def test_no_secret_value_reaches_a_service_and_every_secret_file_is_a_0400_swarm_secret() -> None:
    mocks = declaration("prod", SWARM).mocks
    values = [r.outputs["result"] for r in mocks.of_type(RANDOM_PASSWORD)]
    values += [r.outputs["privateKeyPem"] for r in mocks.of_type(TLS_PRIVATE_KEY)]
    assert len(values) >= 5
    for service in mocks.of_type(SERVICE):
        text = json.dumps(service.inputs)
        assert not [value for value in values if value in text], service.name
        assert service.secret_inputs() == set(), service.name
        spec = service.inputs["taskSpec"]["containerSpec"]
        uid = spec["user"].split(":")[0]
        for secret in spec.get("secrets", []):
            assert (secret["fileMode"], secret["fileUid"], secret["fileGid"]) == (0o400, uid, uid), service.name
            assert secret["fileName"].startswith("/run/secrets/")
    secrets = mocks.of_type(SECRET)
    assert secrets
    assert all(secret.secret_inputs() == {"data"} for secret in secrets)
    # The database password is in each of its four readers' own swarm secret, and nowhere in the clear.
    password = mocks.one(RANDOM_PASSWORD, "mlflow-postgres-password").outputs["result"]
    holding = sorted(s.name for s in secrets if password in base64.b64decode(s.inputs["data"]).decode())
    assert holding == [
        "mlflow-backups-container-run-secrets-pgpass",
        "mlflow-db-bootstrap-container-run-secrets-postg-2770f2bc",
        "mlflow-gc-container-run-secrets-postgres-password",
        "mlflow-server-container-run-secrets-postgres-password",
    ]


def test_every_secret_and_config_name_fits_swarm_once_auto_named() -> None:
    mocks = declaration("prod", SWARM).mocks
    names = [r.name for r in [*mocks.of_type(SECRET), *mocks.of_type(SERVICE_CONFIG)]]
    # Swarm takes 64 characters; auto-naming adds `-` and 7 hex. A shortened name stays unique.
    assert max(len(name) for name in names) == 56
    assert len(set(names)) == len(names)


def test_a_new_mlflow_release_replaces_the_server_stopping_every_old_task_first() -> None:
    """A release may migrate the schema: no rolling update, where old servers answer on the new schema."""
    found = declaration("prod", {**SWARM, "mlflowVersion": "3.12.0"})
    services = _services(found.mocks)
    # The trigger is the release, nothing else: any other change (workers, an image rebuilt) still rolls.
    assert {name: s.replacement_trigger for name, s in services.items()} == {
        "postgres": None,
        "db-bootstrap": None,
        "mlflow": "3.12.0",
        "backup": None,
        "gc": None,
        "proxy": None,
    }
    # Replaced old first (the names are fixed); the proxy and gc only wait for the server (depends_on),
    # so its replacement replaces neither.
    assert all(s.delete_before_replace for s in services.values())
    assert all(s.replace_on_changes == [] for s in services.values())
    mlflow = services["mlflow"].urn
    for name in ("proxy", "gc"):
        assert mlflow in services[name].dependencies, name
        assert all(mlflow not in urns for urns in services[name].property_dependencies.values()), name


def test_the_bootstrap_runs_then_stays_up_healthy_and_mlflow_waits_for_it() -> None:
    services = _services(declaration("prod", SWARM).mocks)
    bootstrap = services["db-bootstrap"]
    spec = bootstrap.inputs["taskSpec"]["containerSpec"]
    assert spec["args"] == ["--then-wait", READY_FILE]
    assert spec["healthcheck"] == {
        "tests": ["CMD", "test", "-e", READY_FILE],
        "interval": "5s",
        "timeout": "5s",
        "retries": 3,
        "startPeriod": "2m",
    }
    # It talks over the socket alone: on the internal network, never the default bridge.
    assert [n["id"] for n in bootstrap.inputs["taskSpec"]["networksAdvanceds"]] == ["mlflow-network-database-id"]
    assert bootstrap.urn in services["mlflow"].dependencies
    assert services["postgres"].urn in bootstrap.dependencies


def test_the_front_door_spreads_over_the_servers_tasks() -> None:
    mocks = declaration("prod", SWARM).mocks
    caddy = mocks.one(SERVICE_CONFIG, "proxy-container-etc-caddy-caddyfile")
    text = base64.b64decode(caddy.inputs["data"]).decode()
    assert "\t\tdynamic a {\n\t\t\tname tasks.mlflow-platform-prod-mlflow\n\t\t\tport 5000\n" in text
    # Caddy keeps the client's Host: the server's host check accepts the public name.
    args = _services(mocks)["mlflow"].inputs["taskSpec"]["containerSpec"]["args"]
    assert "mlflow.example.internal" in args[args.index("--allowed-hosts") + 1].split(",")


def test_replicas_default_to_two_on_swarm() -> None:
    found = declaration("prod", {**SWARM, "mlflowReplicas": 0})
    assert _services(found.mocks)["mlflow"].inputs["mode"] == {"replicated": {"replicas": 2}}
    assert found.values["mlflow_replicas"] == 2


def test_one_replica_with_volume_artifacts_is_pinned_to_the_volumes_node() -> None:
    services = _services(declaration("prod", {"engine": "swarm", "mlflowReplicas": 1}).mocks)
    mlflow = services["mlflow"].inputs["taskSpec"]
    assert mlflow["placement"] == PINNED
    assert {"target": "/mlflow/artifacts", "type": "volume", "source": "mlflow-platform-prod-artifacts"}.items() <= (
        mlflow["containerSpec"]["mounts"][0].items()
    )
    assert services["gc"].inputs["taskSpec"]["placement"] == PINNED


def test_the_database_network_is_the_internal_one() -> None:
    postgres = _services(declaration("prod", SWARM).mocks)["postgres"].inputs["taskSpec"]
    assert postgres["networksAdvanceds"] == [{"id": "mlflow-network-database-id", "aliases": ["postgres"]}]
    assert DATABASE == "database"
