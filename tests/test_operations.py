"""The backup and gc containers, metrics and telemetry, under mocks: every input, with literal values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.backups import BackupService, BackupServiceArgs
from components.docker_common import stack_labels
from components.gc import GarbageCollector, GarbageCollectorArgs
from components.mlflow_server import MlflowServer
from tests.conftest import CONTAINER, VOLUME
from tests.harness import EngineMocks, install, resolved, run_program
from tests.test_components import _server_args

LABELS = stack_labels("mlflow-platform", "test", "unit")
PASSWORD = "p" * 32
SCRIPT = (Path(__file__).resolve().parent.parent / "mlflow" / "backup" / "mlflow-backup").read_text(encoding="utf-8")


def _backup_args(**changes: Any) -> BackupServiceArgs:
    args: BackupServiceArgs = {
        "image": "sha256:" + "b" * 64,
        "image_reference": "postgres:17.6",
        "container_name": "t-backup",
        "volume_name": "t-backups",
        "artifacts_volume_name": "t-artifacts",
        "network_name": "t-net",
        "postgres_host": "postgres",
        "postgres_port": 5432,
        "database": "mlflow",
        "user": "mlflow",
        "password": pulumi.Output.secret(PASSWORD),
        "admin_username": "admin",
        "mlflow_version": "3.17.2",
        "interval_seconds": 86400,
        "keep": 7,
        "protect_data": False,
        "log_max_size": "5m",
        "log_max_files": 2,
        "startup_timeout_seconds": 90,
        "labels": LABELS,
        "start_after": [],
    }
    args.update(changes)  # type: ignore[typeddict-item]
    return args


@pulumi.runtime.test
def test_backup_container_inputs() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    service = BackupService("t", _backup_args())

    def check(_: object) -> None:
        registration = mocks.one(CONTAINER)
        container = registration.inputs
        assert container["name"] == "t-backup"
        assert container["image"] == "sha256:" + "b" * 64
        assert container["user"] == "10001:10001"
        assert container["entrypoints"] == ["/usr/local/bin/mlflow-backup"]
        assert container["command"] == ["schedule"]
        assert container["envs"] == ["MLFLOW_BACKUP_CONFIG=/etc/mlflow-backup/backup.conf", "TMPDIR=/tmp"]
        assert container["uploads"] == [
            {
                "file": "/usr/local/bin/mlflow-backup",
                "content": SCRIPT,
                "owner": "0",
                "group": "0",
                "permissions": "0755",
            },
            {
                "file": "/etc/mlflow-backup/backup.conf",
                "content": (
                    "PGHOST='postgres'\nPGPORT='5432'\nPGUSER='mlflow'\nPGPASSFILE='/run/secrets/pgpass'\n"
                    "TRACKING_DB='mlflow'\nAUTH_DB='mlflow_auth'\nADMIN_USERNAME='admin'\nMLFLOW_VERSION='3.17.2'\n"
                    "BACKUP_DIR='/var/lib/postgresql/data'\nARTIFACTS_DIR='/mlflow/artifacts'\n"
                    "INTERVAL_SECONDS='86400'\nKEEP='7'\nCONTAINER_NAME='t-backup'\nNETWORK_NAME='t-net'\n"
                    "ARTIFACTS_VOLUME='t-artifacts'\nIMAGE='postgres:17.6'\n"
                ),
                "owner": "0",
                "group": "0",
                "permissions": "0444",
            },
            {
                "file": "/run/secrets/pgpass",
                "content": f"postgres:5432:*:mlflow:{PASSWORD}\n",
                "owner": "10001",
                "group": "10001",
                "permissions": "0400",
            },
        ]
        # Only the pgpass upload carries the password, and it is marked secret.
        assert registration.secret_inputs() == {"uploads"}
        assert PASSWORD not in str(container["envs"]) + str(container["command"]) + str(container["labels"])
        assert container["volumes"] == [
            {"volumeName": "t-backups", "containerPath": "/var/lib/postgresql/data"},
            {"volumeName": "t-artifacts", "containerPath": "/mlflow/artifacts", "readOnly": True},
            {"containerPath": "/usr/local/bin"},
            {"containerPath": "/etc/mlflow-backup"},
            {"containerPath": "/run/secrets"},
        ]
        assert container["networksAdvanced"] == [{"name": "t-net"}]
        assert "ports" not in container
        assert container["healthcheck"] == {
            "tests": ["CMD", "/usr/local/bin/mlflow-backup", "health"],
            "interval": "10s",
            "timeout": "10s",
            "retries": 3,
            "startPeriod": "5m",
        }
        assert container["restart"] == "unless-stopped"
        assert container["readOnly"] is True
        assert container["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=256m"}
        assert container["capabilities"] == {"drops": ["ALL"]}
        assert container["securityOpts"] == ["no-new-privileges:true"]
        assert (container["memory"], container["memorySwap"]) == (512, 512)
        assert container["logDriver"] == "json-file"
        assert container["logOpts"] == {"max-size": "5m", "max-file": "2"}
        assert (container["wait"], container["waitTimeout"]) == (True, 90)
        assert {"label": "org.mlflow-platform.role", "value": "unit"} in container["labels"]
        volume = mocks.one(VOLUME)
        assert volume.inputs["name"] == "t-backups"
        assert (volume.protect, volume.retain_on_delete) == (False, False)

    return service.container.id.apply(check)


@pulumi.runtime.test
def test_backup_volume_is_protected_with_the_data() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    service = BackupService("t", _backup_args(protect_data=True, admin_username="", interval_seconds=60, keep=2))

    def check(_: object) -> None:
        volume = mocks.one(VOLUME)
        assert (volume.protect, volume.retain_on_delete) == (True, True)
        config = mocks.one(CONTAINER).inputs["uploads"][1]["content"]
        assert "ADMIN_USERNAME=''\n" in config
        assert "INTERVAL_SECONDS='60'\nKEEP='2'\n" in config

    return service.container.id.apply(check)


@pulumi.runtime.test
def test_gc_container_inputs() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    args: GarbageCollectorArgs = {
        "image": "sha256:" + "a" * 64,
        "container_name": "t-gc",
        "artifacts_volume_name": "t-artifacts",
        "network_name": "t-net",
        "postgres_host": "postgres",
        "postgres_port": 5432,
        "database": "mlflow",
        "user": "mlflow",
        "password": pulumi.Output.secret(PASSWORD),
        "mlflow_version": "3.17.2",
        "older_than": "30d",
        "interval_seconds": 86400,
        "telemetry_enabled": False,
        "log_max_size": "5m",
        "log_max_files": 2,
        "labels": LABELS,
        "start_after": [],
    }
    collector = GarbageCollector("t", args)

    def check(_: object) -> None:
        registration = mocks.one(CONTAINER)
        container = registration.inputs
        assert container["name"] == "t-gc"
        assert container["user"] == "10001:10001"
        assert container["entrypoints"] == ["/usr/local/bin/mlflow-gc"]
        assert container["command"] == ["loop"]
        assert container["envs"] == [
            "POSTGRES_HOST=postgres",
            "POSTGRES_PORT=5432",
            "POSTGRES_DB=mlflow",
            "POSTGRES_USER=mlflow",
            "POSTGRES_PASSWORD_FILE=/run/secrets/postgres-password",
            "ARTIFACTS_DIR=/mlflow/artifacts",
            "GC_OLDER_THAN=30d",
            "GC_INTERVAL_SECONDS=86400",
            "HOME=/tmp",
            "TMPDIR=/tmp",
            "MLFLOW_DISABLE_TELEMETRY=true",
        ]
        assert container["uploads"] == [
            {
                "file": "/run/secrets/postgres-password",
                "content": PASSWORD,
                "owner": "10001",
                "group": "10001",
                "permissions": "0400",
            }
        ]
        assert registration.secret_inputs() == {"uploads"}
        # gc deletes purged runs' artifacts: read-write, unlike the backup container's mount.
        assert container["volumes"] == [
            {"volumeName": "t-artifacts", "containerPath": "/mlflow/artifacts"},
            {"containerPath": "/run/secrets"},
        ]
        assert container["healthcheck"]["tests"] == ["CMD", "/usr/local/bin/mlflow-gc", "health"]
        assert container["wait"] is False
        assert container["readOnly"] is True
        assert container["capabilities"] == {"drops": ["ALL"]}
        assert container["securityOpts"] == ["no-new-privileges:true"]
        assert (container["memory"], container["memorySwap"]) == (512, 512)
        assert "ports" not in container

    return collector.container.id.apply(check)


@pulumi.runtime.test
def test_metrics_and_telemetry_flags_of_the_server() -> pulumi.Output[None]:
    mocks = EngineMocks()
    install(mocks, "dev")
    server = MlflowServer("t", _server_args(metrics_enabled=True, telemetry_enabled=True, pre_upgrade_backup=True))

    def check(_: object) -> None:
        container = mocks.one(CONTAINER).inputs
        command = container["command"]
        assert command[command.index("--expose-prometheus") + 1] == "/run/mlflow-metrics"
        assert (
            container["tmpfs"]["/run/mlflow-metrics"] == "rw,noexec,nosuid,nodev,size=64m,uid=10001,gid=10001,mode=0700"
        )
        assert "PROMETHEUS_MULTIPROC_DIR=/run/mlflow-metrics" in container["envs"]
        assert not any(env.startswith("MLFLOW_DISABLE_TELEMETRY") for env in container["envs"])
        assert "MLFLOW_PRE_UPGRADE_BACKUP=true" in container["envs"]
        assert "MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT=90" in container["envs"]

    return server.container.id.apply(check)


@pulumi.runtime.test
def test_dev_stack_defaults_metrics_off_telemetry_off() -> pulumi.Output[None]:
    mocks, outputs = run_program("dev")

    def check(values: dict[str, Any], _: set[str]) -> None:
        server = mocks.one(CONTAINER, "server-container").inputs
        assert "--expose-prometheus" not in server["command"]
        assert list(server["tmpfs"]) == ["/tmp"]
        assert "MLFLOW_DISABLE_TELEMETRY=true" in server["envs"]
        assert "MLFLOW_DISABLE_TELEMETRY=true" in mocks.one(CONTAINER, "gc-container").inputs["envs"]
        backup = mocks.one(CONTAINER, "backups-container").inputs
        # The database's own image, by ID, and the stack's defaults: daily, seven kept.
        assert backup["image"] == mocks.one(CONTAINER, "postgres-container").inputs["image"]
        assert "INTERVAL_SECONDS='86400'\nKEEP='7'\n" in backup["uploads"][1]["content"]
        assert "IMAGE='postgres:17.6'\n" in backup["uploads"][1]["content"]
        assert values["backup_container_name"] == "mlflow-platform-dev-backup"
        gc = mocks.one(CONTAINER, "gc-container").inputs
        assert "GC_OLDER_THAN=30d" in gc["envs"]
        assert "GC_INTERVAL_SECONDS=86400" in gc["envs"]

    return resolved(outputs, check)


@pulumi.runtime.test
def test_prod_stack_serves_metrics_and_protects_the_backups() -> pulumi.Output[None]:
    mocks, outputs = run_program("prod")

    def check(values: dict[str, Any], _: set[str]) -> None:
        server = mocks.one(CONTAINER, "server-container").inputs
        assert "--expose-prometheus" in server["command"]
        volume = mocks.one(VOLUME, "backups-volume")
        assert volume.inputs["name"] == "mlflow-platform-prod-backups"
        assert (volume.protect, volume.retain_on_delete) == (True, True)
        assert values["backups_volume_name"] == "mlflow-platform-prod-backups"

    return resolved(outputs, check)


@pulumi.runtime.test
def test_a_one_minute_schedule_for_tests() -> pulumi.Output[None]:
    mocks, outputs = run_program("dev", {"backupIntervalMinutes": 1, "backupIntervalHours": 5, "gcIntervalHours": 2})

    def check(values: dict[str, Any], _: set[str]) -> None:
        # Minutes, when set, replace the hours.
        assert "INTERVAL_SECONDS='60'\n" in mocks.one(CONTAINER, "backups-container").inputs["uploads"][1]["content"]
        assert "GC_INTERVAL_SECONDS=7200" in mocks.one(CONTAINER, "gc-container").inputs["envs"]

    return resolved(outputs, check)


@pytest.mark.parametrize(
    ("version", "warned"),
    [
        ("3.12.0", True),
        ("3.16.1", True),
        ("3.17.0", False),
        ("3.17.2", False),
        ("4.0.0", False),
    ],
)
def test_a_release_whose_gc_fails_on_postgres_is_warned_about(
    version: str, warned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    about: list[object] = []

    def warn(message: str, resource: object = None, **_: object) -> None:
        said.append(message)
        about.append(resource)

    monkeypatch.setattr(pulumi.log, "warn", warn)

    @pulumi.runtime.test
    def deploy() -> pulumi.Output[Any]:
        _, outputs = run_program("dev", {"mlflowVersion": version})
        return pulumi.Output.from_input(outputs["mlflow_container_name"])

    deploy()
    expected = (
        f"mlflowVersion {version}: `mlflow gc --older-than` fails on Postgres before MLflow 3.17.0 "
        "(mlflow/mlflow#25574), so deleted runs are not purged and the gc container stays unhealthy "
        "until mlflowVersion is raised"
    )
    assert said == ([expected] if warned else [])
    # Shown against the gc component in `pulumi up`'s output.
    assert all(isinstance(resource, GarbageCollector) for resource in about)
