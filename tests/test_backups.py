"""BackupService: scheduled dumps of both databases plus the artifacts, alone and in every stack."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_docker as docker
import pytest

from components.backups import BackupService, BackupServiceArgs, backup_config
from components.context import StackContext
from components.settings import BackupSettings, BucketLocation
from tests.conftest import CONTAINER, VOLUME
from tests.expected import (
    DB_PASSWORD,
    PLATFORM_DATABASE,
    POSTGRES_IMAGE,
    POSTGRES_REFERENCE,
    STACKS,
    UNIT,
    UNIT_DATABASE,
    UNIT_PASSWORD,
    Database,
    Placeholder,
    SourceOf,
    built,
    children,
    config_upload,
    containers,
    declared_volume,
    docker_name,
    hardened,
    mount,
    network_name,
    registered_outputs,
    resolve,
    secret_upload,
    service,
    stopped_with,
    unit_context,
    unit_endpoint,
    volumes_of,
)
from tests.harness import EngineMocks, declaration

SCRIPT = "/usr/local/bin/mlflow-backup"
CONFIG = "/etc/mlflow-backup/backup.conf"


@dataclass(frozen=True)
class PgpassOf(Placeholder):
    """libpq's password file for MLflow's role, holding the given password."""

    database: Database
    password: object

    def resolve(self, mocks: EngineMocks) -> Any:
        password = resolve(self.password, mocks)
        return f"{self.database.host}:{self.database.port}:*:{self.database.role}:{password}\n"


def _config(
    stack: str,
    *,
    database: Database = PLATFORM_DATABASE,
    admin: str = "",
    interval: int = 86400,
    keep: int = 7,
    image: str = "postgres:17.11",
    mlflow_version: str = "3.17.2",
    network: str | None = None,
    artifacts_volume: str | None = None,
    artifacts_in_bucket: bool = False,
    offsite: bool = False,
) -> str:
    """The script's settings: Pulumi.yaml's daily schedule, seven kept, unless told otherwise."""
    return (
        f"PGHOST='{database.host}'\n"
        f"PGPORT='{database.port}'\n"
        f"PGUSER='{database.role}'\n"
        "PGPASSFILE='/run/secrets/pgpass'\n"
        f"TRACKING_DB='{database.database}'\n"
        f"AUTH_DB='{database.auth_database}'\n"
        f"ADMIN_USERNAME='{admin}'\n"
        f"MLFLOW_VERSION='{mlflow_version}'\n"
        "BACKUP_DIR='/var/lib/postgresql/data'\n"
        "ARTIFACTS_DIR='/mlflow/artifacts'\n"
        f"INTERVAL_SECONDS='{interval}'\n"
        f"KEEP='{keep}'\n"
        # For the one-off restore command the script prints.
        f"CONTAINER_NAME='{docker_name(stack, 'backup')}'\n"
        # The database network: the one-off restore container reaches Postgres there.
        f"NETWORK_NAME='{network or network_name(stack) + '-db'}'\n"
        f"ARTIFACTS_VOLUME='{artifacts_volume or docker_name(stack, 'artifacts')}'\n"
        f"IMAGE='{image}'\n"
        f"ARTIFACTS_IN_BUCKET='{int(artifacts_in_bucket)}'\n"
        f"OFFSITE='{int(offsite)}'\n"
        f"OFFSITE_CONTAINER='{docker_name(stack, 'backup-offsite')}'\n"
    )


def container(
    stack: str,
    *,
    config: str,
    image: object = POSTGRES_IMAGE,
    pgpass: object = PgpassOf(PLATFORM_DATABASE, DB_PASSWORD),
) -> dict[str, Any]:
    return {
        **hardened(stack, "backup", 512, 4096),
        **service(stack),
        # A dump in flight finishes its current step.
        **stopped_with("SIGTERM", 60),
        # Postgres on the internal network; the front one keeps a way out (an object store next).
        "networksAdvanced": [{"name": network_name(stack)}, {"name": f"{network_name(stack)}-db"}],
        "name": docker_name(stack, "backup"),
        # The database's own image, by ID: pg_dump always matches the server.
        "image": image,
        # The server's uid: the only one that can read its 0600 artifacts and write them back.
        "user": "10001:10001",
        "entrypoints": [SCRIPT],
        "command": ["schedule"],
        "envs": [f"MLFLOW_BACKUP_CONFIG={CONFIG}", "TMPDIR=/tmp"],
        "uploads": [
            config_upload(SCRIPT, SourceOf("mlflow/backup/mlflow-backup"), "0755"),
            config_upload(CONFIG, config),
            secret_upload("/run/secrets/pgpass", pgpass, "10001"),
        ],
        "volumes": [
            mount(stack, "backups", "/var/lib/postgresql/data"),
            mount(stack, "artifacts", "/mlflow/artifacts", read_only=True),
            # Scratch volumes the script and its settings are uploaded into (the root is read-only).
            {"containerPath": "/usr/local/bin"},
            {"containerPath": "/etc/mlflow-backup"},
            {"containerPath": "/run/secrets"},
        ],
        "readOnly": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=256m"},
        # Unhealthy once the newest backup is older than twice the interval.
        "healthcheck": {
            "tests": ["CMD", SCRIPT, "health"],
            "interval": "10s",
            "timeout": "10s",
            "retries": 3,
            "startPeriod": "5m",
        },
    }


def _unit_stack(*, protect_data: bool = False) -> StackContext:
    """The stack a component built alone belongs to, with its database network declared."""
    return dataclasses.replace(unit_context(protect_data=protect_data), database_network=f"{network_name(UNIT)}-db")


def _args(**changes: Any) -> BackupServiceArgs:
    args: BackupServiceArgs = {
        "stack": _unit_stack(),
        "image": "sha256:" + "b" * 64,
        "image_reference": "postgres:16.4",
        "mlflow_image": "sha256:" + "c" * 64,
        "artifacts_in_bucket": False,
        "artifacts_volume_name": "mlflow-platform-unit-artifacts",
        "database": unit_endpoint(),
        "admin_username": "root-admin",
        "mlflow_version": "3.18.1",
        # Minutes win over hours (BackupSettings.interval_seconds): 60 minutes, not 5 hours.
        "backups": BackupSettings(interval_hours=5, interval_minutes=60, keep=3),
        "start_after": [],
    }
    return {**args, **changes}  # type: ignore[typeddict-item]


def _unit_config(**changes: Any) -> str:
    """The settings of the backups built alone (_args), with `changes`."""
    given: dict[str, Any] = {"admin": "root-admin", "interval": 3600, "keep": 3, "image": "postgres:16.4"}
    return _config(UNIT, database=UNIT_DATABASE, mlflow_version="3.18.1", **{**given, **changes})


@pytest.mark.parametrize("protect", [False, True])
def test_the_backups_alone(protect: bool) -> None:
    def build() -> BackupService:
        postgres = docker.Container("mlflow-postgres-container", image="postgres")
        return BackupService("mlflow-backups", _args(stack=_unit_stack(protect_data=protect), start_after=[postgres]))

    mocks, _ = built(build)
    assert children(mocks, "mlflow-backups") == {"mlflow-backups-volume": VOLUME, "mlflow-backups-container": CONTAINER}
    backup = mocks.one(CONTAINER, "backups-container")
    pgpass = f"db:5433:*:tracker:{UNIT_PASSWORD}\n"
    expected = container(UNIT, config=_unit_config(), image="sha256:" + "b" * 64, pgpass=pgpass)
    assert backup.inputs == resolve(expected, mocks)
    # Only the pgpass upload carries the password, and it is marked secret.
    assert backup.secret_inputs() == {"uploads"}
    # The database first (health-gated); the volume it writes to is an input.
    assert sorted(backup.dependencies) == sorted(
        [mocks.one(CONTAINER, "postgres-container").urn, mocks.one(VOLUME, "backups-volume").urn]
    )
    volume = declared_volume(UNIT, "backups", "backup")
    assert volumes_of(mocks, "mlflow-backups-volume") == {"mlflow-backups-volume": (volume[0], protect, protect)}
    assert registered_outputs(mocks, "mlflow-backups") == {
        "container_name": "mlflow-platform-unit-backup",
        "volume_name": "mlflow-platform-unit-backups",
    }


OFFSITE_SECRET = "s" * 40
OFFSITE = BucketLocation(
    bucket="ml-backups",
    prefix="prod",
    endpoint="https://backup.example.com",
    region="eu-west-1",
    path_style=True,
    access_key_id="AKIABACKUP",
    secret_access_key=OFFSITE_SECRET,
    ca_certificate="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
)


def test_with_a_backup_bucket_an_offsite_container_copies_the_backups_with_the_key_pair_as_a_file() -> None:
    backups = BackupSettings(interval_hours=1, interval_minutes=0, keep=2, offsite=OFFSITE)

    def build() -> BackupService:
        return BackupService("mlflow-backups", _args(backups=backups))

    mocks, _ = built(build)
    assert children(mocks, "mlflow-backups") == {
        "mlflow-backups-volume": VOLUME,
        "mlflow-backups-container": CONTAINER,
        "mlflow-backups-offsite": CONTAINER,
    }
    script = "/opt/mlflow-offsite/mlflow-offsite"
    credentials = f"[default]\naws_access_key_id = AKIABACKUP\naws_secret_access_key = {OFFSITE_SECRET}\n"
    expected = {
        **hardened(UNIT, "backup-offsite", 384, 4096),
        **service(UNIT),
        **stopped_with("SIGTERM", 60),
        # The way out to the store only: no network that reaches Postgres.
        "networksAdvanced": [{"name": network_name(UNIT)}],
        "name": docker_name(UNIT, "backup-offsite"),
        # The MLflow image (boto3), as the backup container's uid: both write the backups volume.
        "image": "sha256:" + "c" * 64,
        "user": "10001:10001",
        "entrypoints": [script],
        "command": ["serve"],
        # Where the bucket is; never a key.
        "envs": [
            "OFFSITE_BUCKET=ml-backups",
            "OFFSITE_PREFIX=prod",
            "OFFSITE_ENDPOINT=https://backup.example.com",
            "AWS_DEFAULT_REGION=eu-west-1",
            "OFFSITE_PATH_STYLE=true",
            "AWS_SHARED_CREDENTIALS_FILE=/run/secrets/backup-store-credentials",
            "AWS_CA_BUNDLE=/run/secrets/backup-store-ca.pem",
            "BACKUP_DIR=/var/lib/postgresql/data",
            "HOME=/tmp",
            "TMPDIR=/tmp",
        ],
        "uploads": [
            config_upload(script, SourceOf("mlflow/backup/offsite.py"), "0755"),
            secret_upload("/run/secrets/backup-store-credentials", credentials, "10001"),
            config_upload("/run/secrets/backup-store-ca.pem", OFFSITE.ca_certificate),
        ],
        "volumes": [
            mount(UNIT, "backups", "/var/lib/postgresql/data"),
            {"containerPath": "/opt/mlflow-offsite"},
            {"containerPath": "/run/secrets"},
        ],
        "readOnly": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=16m"},
        # Healthy once the bucket passed the start-up check and a pass copied every backup.
        "healthcheck": {
            "tests": ["CMD", script, "health"],
            "interval": "5s",
            "timeout": "10s",
            "retries": 3,
            "startPeriod": "2m",
        },
    }
    found = mocks.one(CONTAINER, "backups-offsite")
    assert found.inputs == resolve(expected, mocks)
    assert found.secret_inputs() == {"uploads"}
    # The backup container learns where to ask for `--from offsite`.
    backup_conf = mocks.one(CONTAINER, "backups-container").inputs["uploads"][1]["content"]
    assert "OFFSITE='1'\nOFFSITE_CONTAINER='mlflow-platform-unit-backup-offsite'\n" in backup_conf


def test_the_backup_config_without_auth() -> None:
    found: list[str] = []

    @pulumi.runtime.test
    def run() -> None:
        args = _args(admin_username="", backups=BackupSettings(interval_hours=1, interval_minutes=1, keep=2))
        found.append(backup_config(args, "other-network", "other-artifacts"))

    run()
    # No admin whose password a restore would keep; the names it is given, not the stack's.
    assert found == [
        _unit_config(admin="", interval=60, keep=2, network="other-network", artifacts_volume="other-artifacts")
    ]


@pytest.mark.parametrize("stack", STACKS)
def test_the_backups_of_every_stack(stack: str) -> None:
    found = declaration(stack)
    backup = containers(found.mocks)[docker_name(stack, "backup")]
    # The admin whose password a restore keeps: only where basic auth is on.
    admin = "" if stack == "dev" else "admin"
    config = _config(stack, admin=admin, image=POSTGRES_REFERENCE[stack])
    assert backup.inputs == resolve(container(stack, config=config), found.mocks)
    assert volumes_of(found.mocks, "mlflow-backups-volume") == {
        "mlflow-backups-volume": declared_volume(stack, "backups", "backup")
    }


def test_a_one_minute_schedule_for_tests() -> None:
    # Minutes, when set, replace the hours.
    mocks = declaration("dev", {"backupIntervalMinutes": 1, "backupIntervalHours": 5, "gcIntervalHours": 2}).mocks
    backup = containers(mocks)["mlflow-platform-dev-backup"]
    assert backup.inputs == resolve(container("dev", config=_config("dev", interval=60)), mocks)
