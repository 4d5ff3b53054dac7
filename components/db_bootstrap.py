"""Puts the declared database secrets and roles in force on every data directory.

The official Postgres image applies POSTGRES_PASSWORD only when it initialises an
empty data directory, so kept, restored or migrated data would keep whatever
passwords it was made with. This one-shot container (the MLflow image's
bootstrap_db.py) connects to Postgres over its local socket, which the image
trusts, and sets: MLflow's role (not a superuser, no CREATEDB/CREATEROLE, owner of
the tracking and auth databases only) with the generated password; the
superuser's password; and moves stacks made with MLflow connecting as the
superuser to that layout. Its inputs hold every secret it applies, so it is
replaced, and runs again, whenever one of them changes, as well as when the
Postgres container is replaced.
"""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.docker_common import (
    SECRETS_DIR,
    container_labels,
    hardening,
    secrets_volume,
)
from components.mlflow_server import MLFLOW_UID
from components.postgres import SOCKET_DIR

_PASSWORD_FILE = f"{SECRETS_DIR}/postgres-password"
_SUPERUSER_PASSWORD_FILE = f"{SECRETS_DIR}/postgres-superuser-password"
BOOTSTRAP_SCRIPT = "/opt/mlflow-entrypoint/bootstrap_db.py"
# Python, psycopg and nothing else: a fraction of what the server needs.
_MEMORY_MB = 256
# Marks which Postgres container the bootstrap ran against: a replaced Postgres
# container (new image, restored volume) replaces the bootstrap too.
POSTGRES_CONTAINER_LABEL = "org.mlflow-platform.bootstrapped-container"


class DatabaseBootstrapArgs(TypedDict):
    image: pulumi.Input[str]
    """The MLflow image (it carries bootstrap_db.py, Python and psycopg)."""
    container_name: str
    """Docker name of the one-shot container."""
    socket_volume_name: pulumi.Input[str]
    """Volume holding Postgres's local socket."""
    postgres_container: docker.Container
    """The health-gated Postgres container the bootstrap runs against."""
    superuser: str
    """The cluster's superuser."""
    superuser_password: pulumi.Input[str]
    """Its generated password (secret)."""
    user: str
    """MLflow's role."""
    password: pulumi.Input[str]
    """Its generated password (secret)."""
    database: str
    """Tracking database."""
    auth_database: str
    """Auth database."""
    log_max_size: str
    """json-file log size that triggers rotation."""
    log_max_files: int
    """Rotated log files kept."""
    labels: dict[str, str]
    """Labels that identify the stack."""


class DatabaseBootstrap(pulumi.ComponentResource):
    """Runs bootstrap_db.py once per change and fails the deployment if it fails."""

    container: docker.Container
    succeeded: pulumi.Output[docker.Container]

    def __init__(self, name: str, args: DatabaseBootstrapArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:database:DatabaseBootstrap", name, None, opts)
        postgres = args["postgres_container"]
        labels = container_labels(args["labels"])
        labels.append(docker.ContainerLabelArgs(label=POSTGRES_CONTAINER_LABEL, value=postgres.id))
        self.container = docker.Container(
            f"{name}-container",
            name=args["container_name"],
            image=args["image"],
            user=f"{MLFLOW_UID}:{MLFLOW_UID}",
            entrypoints=["python", BOOTSTRAP_SCRIPT],
            envs=[
                f"POSTGRES_SOCKET_DIR={SOCKET_DIR}",
                f"POSTGRES_SUPERUSER={args['superuser']}",
                f"POSTGRES_SUPERUSER_PASSWORD_FILE={_SUPERUSER_PASSWORD_FILE}",
                f"POSTGRES_USER={args['user']}",
                f"POSTGRES_PASSWORD_FILE={_PASSWORD_FILE}",
                f"POSTGRES_DB={args['database']}",
                f"POSTGRES_AUTH_DB={args['auth_database']}",
            ],
            uploads=[
                _secret_file(_PASSWORD_FILE, args["password"]),
                _secret_file(_SUPERUSER_PASSWORD_FILE, args["superuser_password"]),
            ],
            volumes=[
                # Read-only is enough to connect to a socket.
                docker.ContainerVolumeArgs(
                    volume_name=args["socket_volume_name"], container_path=SOCKET_DIR, read_only=True
                ),
                secrets_volume(),
            ],
            # The socket is its only way to Postgres; it needs no network at all.
            network_mode="none",
            # One shot: `pulumi up` waits for it to exit and records the exit code.
            must_run=False,
            attach=True,
            restart="no",
            read_only=True,
            **hardening(_MEMORY_MB, args["log_max_size"], args["log_max_files"]),
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[postgres], delete_before_replace=True),
        )
        container_name = args["container_name"]

        def require_success(exit_code: int | None) -> docker.Container:
            # pulumi-docker records the exit code of an attached container but does not
            # fail on it: fail here, before MLflow starts with secrets not in force.
            if exit_code != 0:
                raise pulumi.RunError(
                    f"the database bootstrap exited with code {exit_code}; see `docker logs {container_name}`"
                )
            return self.container

        self.succeeded = self.container.exit_code.apply(require_success)
        self.register_outputs({"container_name": self.container.name})


def _secret_file(path: str, content: pulumi.Input[str]) -> docker.ContainerUploadArgs:
    return docker.ContainerUploadArgs(
        file=path, content=pulumi.Output.secret(content), owner=MLFLOW_UID, group=MLFLOW_UID, permissions="0400"
    )
