"""The MLflow tracking server container, its artifact volume and its auth secrets."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TypedDict

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from components.docker_common import (
    LOG_DRIVER,
    NO_NEW_PRIVILEGES,
    RESTART_POLICY,
    SECRETS_DIR,
    container_labels,
    log_rotation,
    secrets_volume,
    volume_labels,
)

SERVER_PORT = 5000
# The image's dedicated user (mlflow/Dockerfile).
MLFLOW_UID = "10001"
ARTIFACTS_DIR = "/mlflow/artifacts"
ADMIN_USERNAME = "admin"
_DB_PASSWORD_FILE = f"{SECRETS_DIR}/postgres-password"
_ADMIN_PASSWORD_FILE = f"{SECRETS_DIR}/admin-password"
_FLASK_SECRET_FILE = f"{SECRETS_DIR}/flask-secret-key"
# The image has no curl; its Python does the probe. /health is exempt from the
# host check and from basic auth, so the probe needs neither a Host nor a password.
HEALTH_PROBE = [
    "CMD",
    "python",
    "-c",
    f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{SERVER_PORT}/health', timeout=4)",
]
# The root file system is read-only; the server writes temporary files (artifact
# uploads it proxies, library caches) here. noexec: nothing should run from it.
_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=512m"}  # noqa: S108 - a private tmpfs, not a shared /tmp


class MlflowServerArgs(TypedDict):
    image: pulumi.Input[str]
    """Image to run, by ID or digest, so a rebuilt image replaces the container."""
    container_name: pulumi.Input[str]
    """Docker name of the container."""
    artifacts_volume_name: pulumi.Input[str]
    """Docker name of the artifacts volume; fixed, so a redeploy finds the artifacts again."""
    network_name: pulumi.Input[str]
    """Network shared with Postgres."""
    alias: str
    """Host name other containers on the network use for the server."""
    postgres_host: str
    """Postgres's alias on the network."""
    postgres_port: int
    """Postgres's port on the network."""
    database: str
    """Tracking database."""
    user: str
    """Database role."""
    password: pulumi.Input[str]
    """Database password (secret); uploaded as a file, never an environment value."""
    public_host: str
    """Host name clients use."""
    bind_address: str
    """Host address the port is published on."""
    host_port: int
    """Host port the server is published on."""
    workers: int
    """uvicorn worker processes."""
    memory_mb: int
    """Memory limit in MiB; swap is not allowed on top."""
    extra_allowed_hosts: Sequence[str]
    """Host header values accepted besides the public host and the alias."""
    cors_allowed_origins: Sequence[str]
    """Browser origins allowed to call the API; empty keeps MLflow's default."""
    auth_enabled: bool
    """Run MLflow's basic-auth app."""
    admin_password_length: int
    """Length of the generated admin password."""
    protect_data: bool
    """Protect the artifacts volume from deletion by destroy or replacement."""
    log_max_size: str
    """json-file log size that triggers rotation."""
    log_max_files: int
    """Rotated log files kept."""
    startup_timeout_seconds: int
    """How long `pulumi up` waits for the container to be healthy."""
    labels: dict[str, str]
    """Labels that identify the stack."""
    start_after: Sequence[pulumi.Resource]
    """Resources that must exist first: the health-gated Postgres container."""


def allowed_hosts(public_host: str, host_port: int, bind_address: str, alias: str, extra: Sequence[str]) -> list[str]:
    """Every Host header clients send. `--allowed-hosts` replaces MLflow's defaults,
    so a name left out here is answered with 403 (the in-network alias included)."""
    # A Host header brackets an IPv6 address, and MLflow compares headers exactly.
    public = f"[{public_host}]" if ":" in public_host else public_host
    hosts = [public, f"{public}:{host_port}", alias, f"{alias}:{SERVER_PORT}"]
    if ipaddress.ip_address(bind_address).is_loopback:
        # Published on loopback only: whoever reaches it is on this machine, and
        # may well type 127.0.0.1 instead of the public host.
        hosts += ["localhost", f"localhost:{host_port}", "127.0.0.1", f"127.0.0.1:{host_port}"]
        if ipaddress.ip_address(bind_address).version == 6:
            hosts += ["[::1]", f"[::1]:{host_port}"]
    hosts += extra
    return list(dict.fromkeys(hosts))


class MlflowServer(pulumi.ComponentResource):
    """`mlflow server` with proxied artifacts, published on one host address."""

    artifacts_volume: docker.Volume
    admin_password: random.RandomPassword | None
    flask_secret_key: random.RandomPassword | None
    container: docker.Container
    command: list[str]

    def __init__(self, name: str, args: MlflowServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:server:MlflowServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.artifacts_volume = docker.Volume(
            f"{name}-artifacts",
            name=args["artifacts_volume_name"],
            labels=volume_labels(args["labels"]),
            opts=pulumi.ResourceOptions(
                parent=self, protect=args["protect_data"], retain_on_delete=args["protect_data"]
            ),
        )

        envs = [
            f"POSTGRES_HOST={args['postgres_host']}",
            f"POSTGRES_PORT={args['postgres_port']}",
            f"POSTGRES_DB={args['database']}",
            f"POSTGRES_USER={args['user']}",
            f"POSTGRES_PASSWORD_FILE={_DB_PASSWORD_FILE}",
            # HOME is /nonexistent and the root file system read-only: caches go to tmpfs.
            "HOME=/tmp",
            "TMPDIR=/tmp",
            # MLflow 3.x starts a job runner (seven huey consumers, ~200 MB each) for
            # GenAI jobs a tracking server does not run; inside 1.5 GiB it got the
            # container OOM-killed in a loop. Off, the server peaks near 350 MiB.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
        ]
        uploads = [self._secret_file(_DB_PASSWORD_FILE, args["password"])]
        self.admin_password = None
        self.flask_secret_key = None
        if args["auth_enabled"]:
            self.admin_password = random.RandomPassword(
                f"{name}-admin-password",
                length=args["admin_password_length"],
                special=False,
                min_lower=1,
                min_upper=1,
                min_numeric=1,
                opts=child,
            )
            # Signs the Flask session and CSRF tokens of the auth app; must be the
            # same in every worker and survive restarts, so it is generated once here.
            self.flask_secret_key = random.RandomPassword(
                f"{name}-flask-secret-key", length=64, special=False, opts=child
            )
            envs += [
                f"MLFLOW_AUTH_ADMIN_USERNAME={ADMIN_USERNAME}",
                f"MLFLOW_AUTH_ADMIN_PASSWORD_FILE={_ADMIN_PASSWORD_FILE}",
                f"MLFLOW_FLASK_SERVER_SECRET_KEY_FILE={_FLASK_SECRET_FILE}",
            ]
            uploads += [
                self._secret_file(_ADMIN_PASSWORD_FILE, self.admin_password.result),
                self._secret_file(_FLASK_SECRET_FILE, self.flask_secret_key.result),
            ]

        hosts = allowed_hosts(
            args["public_host"], args["host_port"], args["bind_address"], args["alias"], args["extra_allowed_hosts"]
        )
        self.command = [
            "--host", "0.0.0.0",
            "--port", str(SERVER_PORT),
            "--workers", str(args["workers"]),
            # Clients upload and download artifacts through the server, which
            # stores them in the volume: no client needs a path on this host.
            "--serve-artifacts",
            "--artifacts-destination", ARTIFACTS_DIR,
            "--allowed-hosts", ",".join(hosts),
        ]  # fmt: skip
        if args["cors_allowed_origins"]:
            self.command += ["--cors-allowed-origins", ",".join(args["cors_allowed_origins"])]
        if args["auth_enabled"]:
            self.command += ["--app-name", "basic-auth"]

        self.container = docker.Container(
            f"{name}-container",
            name=args["container_name"],
            image=args["image"],
            user=f"{MLFLOW_UID}:{MLFLOW_UID}",
            command=self.command,
            envs=envs,
            uploads=uploads,
            volumes=[
                docker.ContainerVolumeArgs(volume_name=self.artifacts_volume.name, container_path=ARTIFACTS_DIR),
                secrets_volume(),
            ],
            ports=[
                docker.ContainerPortArgs(
                    internal=SERVER_PORT, external=args["host_port"], ip=args["bind_address"], protocol="tcp"
                )
            ],
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=args["network_name"], aliases=[args["alias"]])
            ],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=HEALTH_PROBE, interval="10s", timeout="5s", retries=6, start_period="60s"
            ),
            restart=RESTART_POLICY,
            read_only=True,
            tmpfs=_TMPFS,
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=[NO_NEW_PRIVILEGES],
            memory=args["memory_mb"],
            memory_swap=args["memory_mb"],
            log_driver=LOG_DRIVER,
            log_opts=log_rotation(args["log_max_size"], args["log_max_files"]),
            labels=container_labels(args["labels"]),
            wait=True,
            wait_timeout=args["startup_timeout_seconds"],
            # Nothing flows from the Postgres container to this one, yet the server
            # must start only once Postgres is healthy (wait=True there): say so.
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args["start_after"])),
        )
        self.register_outputs(
            {"container_name": self.container.name, "artifacts_volume_name": self.artifacts_volume.name}
        )

    @staticmethod
    def _secret_file(path: str, content: pulumi.Input[str]) -> docker.ContainerUploadArgs:
        return docker.ContainerUploadArgs(
            file=path,
            content=pulumi.Output.secret(content),
            owner=MLFLOW_UID,
            group=MLFLOW_UID,
            permissions="0400",
        )
