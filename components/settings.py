"""The stack's settings: read from Pulumi config once, validated, typed.

Every key is declared in Pulumi.yaml with its type, default and description; the
CLI merges those defaults with the stack file. `load_settings` turns the raw
values into a frozen `StackSettings` or raises `SettingsError` naming the key, the
value and what is accepted, before the program declares any resource.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pulumi

T = TypeVar("T")

# Stacks that hold real experiment data: auth and volume protection are mandatory there.
PROTECTED_STACKS = frozenset({"staging", "prod"})
MIN_SECRET_LENGTH = 24
MAX_SECRET_LENGTH = 128

# Docker's reference grammar (distribution/reference), anchored: optional registry
# host[:port], lower-case path components, then a tag and/or a digest.
_DOMAIN_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?/)"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_IMAGE_REFERENCE = re.compile(
    rf"^(?P<name>{_HOST}?{_PATH})(?::(?P<tag>[\w][\w.-]{{0,127}}))?(?:@(?P<digest>sha256:[a-f0-9]{{64}}))?$"
)
# RFC 1123 host name: labels of letters, digits and inner hyphens.
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_ORIGIN = re.compile(r"^(?P<scheme>https?)://(?P<host>\[[0-9a-fA-F:.]+\]|[^/\[\]:]+)(?::(?P<port>[0-9]{1,5}))?$")
_MLFLOW_VERSION = re.compile(r"^(?P<major>[0-9]+)\.(?P<minor>[0-9]+)\.(?P<patch>[0-9]+)$")
# The oldest release with every contract the program relies on, read from the
# released wheels (mlflow/cli.py, mlflow/environment_variables.py, mlflow/server/):
# the basic-auth config keys (default_permission, database_uri, admin_username,
# admin_password, authorization_function: 3.4 has them all), `mlflow server
# --allowed-hosts` and the job-execution switch MLFLOW_SERVER_ENABLE_JOB_EXECUTION
# (both first in 3.5.0), and `mlflow server` forwarding SIGTERM to uvicorn, so a
# stopped container finishes its in-flight requests (first in 3.10.0; before, the
# CLI died and uvicorn was killed with it).
OLDEST_MLFLOW = (3, 10, 0)
# Postgres's identifier limit (NAMEDATALEN - 1); the auth database adds a suffix.
_POSTGRES_NAME_MAX = 63
AUTH_DATABASE_SUFFIX = "_auth"
# Databases every cluster has: MLflow's tables do not belong in them.
_RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})
# The cluster's superuser (the official image's default POSTGRES_USER) is the
# bootstrap role; MLflow's role must be another one. pg_* names are reserved.
SUPERUSER = "postgres"
_POSTGRES_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_DOCKER_SIZE = re.compile(r"^[1-9][0-9]*[kmg]$")


class SettingsError(ValueError):
    """A config value the program refuses; the message names key, value and what is accepted."""

    def __init__(self, key: str, value: object, accepted: str) -> None:
        self.key = key
        self.value = value
        super().__init__(f"config key '{key}' has the value {value!r}; {accepted}")


@dataclass(frozen=True)
class StackSettings:
    """Everything the components need, already checked."""

    stack: str
    project: str
    postgres_image: str
    postgres_database: str
    postgres_user: str
    postgres_password_length: int
    postgres_memory_mb: int
    mlflow_version: str
    base_image: str
    use_wheelhouse: bool
    public_host: str
    bind_address: str
    host_port: int
    workers: int
    mlflow_memory_mb: int
    allowed_hosts: tuple[str, ...]
    cors_allowed_origins: tuple[str, ...]
    auth_enabled: bool
    admin_password_length: int
    protect_data: bool
    log_max_size: str
    log_max_files: int
    startup_timeout_seconds: int
    secrets_rotation: str

    @property
    def tracking_uri(self) -> str:
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"http://{host}:{self.host_port}"


class _Reader:
    """Reads raw config strings (as the CLI passes them) and records what was read."""

    def __init__(self, config: pulumi.Config) -> None:
        self._config = config

    def raw(self, key: str) -> str:
        value = self._config.get(key)
        if value is None:
            raise SettingsError(key, None, "it is missing; declare it in Pulumi.yaml with a default")
        return value

    def string(self, key: str, check: Callable[[str], bool], accepted: str) -> str:
        value = self.raw(key).strip()
        if not check(value):
            raise SettingsError(key, value, accepted)
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.raw(key)
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(key, value, f"accepted: an integer from {low} to {high}") from None
        if not low <= number <= high:
            raise SettingsError(key, number, f"accepted: an integer from {low} to {high}")
        return number

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if value.lower() not in ("true", "false"):
            raise SettingsError(key, value, "accepted: true or false")
        return value.lower() == "true"

    def string_list(self, key: str, check: Callable[[str], bool], accepted: str) -> tuple[str, ...]:
        value = self.raw(key)
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            raise SettingsError(key, value, f"accepted: a list of {accepted}") from None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise SettingsError(key, items, f"accepted: a list of {accepted}")
        for item in items:
            if not check(item):
                raise SettingsError(key, item, f"each item must be {accepted}")
        return tuple(items)


def _is_pinned_image(reference: str) -> bool:
    match = _IMAGE_REFERENCE.match(reference)
    if match is None:
        return False
    tag, digest = match.group("tag"), match.group("digest")
    return digest is not None or (tag is not None and tag != "latest")


def _is_host_name(value: str) -> bool:
    if _HOST_NAME.match(value):
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _split_host_port(value: str) -> tuple[str, str] | None:
    """(host, port) of 'name', 'name:port', 'ipv6', '[ipv6]' or '[ipv6]:port'; None if malformed."""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        return (host, rest[1:]) if rest else (host, "")
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""


def _valid_port(port: str) -> bool:
    return port.isdigit() and 1 <= int(port) <= 65535


def _is_allowed_host(value: str) -> bool:
    parts = _split_host_port(value)
    if parts is None:
        return False
    host, port = parts
    if value.startswith("[") and ":" not in host:
        return False  # brackets only around IPv6 addresses
    return _is_host_name(host) and (not port or _valid_port(port))


def host_header(host: str, port: int | str | None = None) -> str:
    """A host as clients write it in the Host header: lower case, IPv6 in brackets."""
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def _normalise_allowed_host(value: str) -> str:
    parts = _split_host_port(value)
    assert parts is not None  # checked by _is_allowed_host
    return host_header(*parts)


def _is_origin(value: str) -> bool:
    """scheme://host[:port]: one origin, so no comma, path, user info or stray character
    (MLflow splits its --cors-allowed-origins on commas)."""
    match = _ORIGIN.match(value)
    if match is None:
        return False
    host, port = match.group("host"), match.group("port")
    if host.startswith("["):
        host = host[1:-1]
        if ":" not in host:
            return False
    elif host.startswith("*."):
        host = host[2:]  # MLflow's subdomain wildcard
    return _is_host_name(host) and (port is None or _valid_port(port))


def _is_supported_mlflow(value: str) -> bool:
    match = _MLFLOW_VERSION.match(value)
    return match is not None and tuple(int(part) for part in match.groups()) >= OLDEST_MLFLOW


def _is_tracking_database(value: str) -> bool:
    return (
        _POSTGRES_IDENTIFIER.match(value) is not None
        and len(value) + len(AUTH_DATABASE_SUFFIX) <= _POSTGRES_NAME_MAX
        and value not in _RESERVED_DATABASES
    )


def _is_application_role(value: str) -> bool:
    return _POSTGRES_IDENTIFIER.match(value) is not None and value != SUPERUSER and not value.startswith("pg_")


def _matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda value: pattern.match(value) is not None


_IMAGE_ACCEPTED = (
    "accepted: an image reference such as 'registry.example.com/postgres:17.6', "
    "pinned to a tag other than 'latest' or to an @sha256 digest"
)
_IDENTIFIER_ACCEPTED = "accepted: a lower-case Postgres identifier ([a-z_][a-z0-9_]*, at most 63 characters)"
_DATABASE_ACCEPTED = (
    "accepted: a lower-case Postgres identifier ([a-z_][a-z0-9_]*) of at most "
    f"{_POSTGRES_NAME_MAX - len(AUTH_DATABASE_SUFFIX)} characters (the auth database is the name plus "
    f"'{AUTH_DATABASE_SUFFIX}'), other than {', '.join(sorted(_RESERVED_DATABASES))}"
)
_ROLE_ACCEPTED = (
    f"accepted: a lower-case Postgres identifier ([a-z_][a-z0-9_]*, at most 63 characters) other than "
    f"'{SUPERUSER}' (the cluster's superuser) and not starting with 'pg_'"
)
_MLFLOW_ACCEPTED = (
    "accepted: an exact MLflow release such as '3.17.2', "
    f"{'.'.join(map(str, OLDEST_MLFLOW))} or newer (the oldest with --allowed-hosts, "
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION and graceful SIGTERM handling)"
)
# What the server needs: measured after start with 2 workers, auth on and job
# execution off, it holds 582 MiB (tests/test_e2e_secrets.py reports it): the CLI
# and uvicorn's supervisor plus ~200 MiB per worker. The floor leaves headroom:
# 256 MiB, plus 256 per worker (so 512 for one worker, 768 for two).
MLFLOW_BASE_MEMORY_MB = 256
MLFLOW_WORKER_MEMORY_MB = 256
MIN_MLFLOW_MEMORY_MB = MLFLOW_BASE_MEMORY_MB + MLFLOW_WORKER_MEMORY_MB


def load_settings(config: pulumi.Config | None = None, stack: str | None = None) -> StackSettings:
    """Reads and validates every setting; raises SettingsError on the first bad one."""
    read = _Reader(config or pulumi.Config())
    settings = StackSettings(
        stack=stack or pulumi.get_stack(),
        project=pulumi.get_project(),
        postgres_image=read.string("postgresImage", _is_pinned_image, _IMAGE_ACCEPTED),
        postgres_database=read.string("postgresDatabase", _is_tracking_database, _DATABASE_ACCEPTED),
        postgres_user=read.string("postgresUser", _is_application_role, _ROLE_ACCEPTED),
        postgres_password_length=read.integer("postgresPasswordLength", MIN_SECRET_LENGTH, MAX_SECRET_LENGTH),
        postgres_memory_mb=read.integer("postgresMemoryMb", 128, 1_048_576),
        mlflow_version=read.string("mlflowVersion", _is_supported_mlflow, _MLFLOW_ACCEPTED),
        base_image=read.string("baseImage", _is_pinned_image, _IMAGE_ACCEPTED),
        use_wheelhouse=read.boolean("useWheelhouse"),
        # Clients send the Host header in lower case and MLflow compares it exactly.
        public_host=read.string("publicHost", _is_host_name, "accepted: a DNS host name or an IP address").lower(),
        bind_address=read.string(
            "bindAddress", _is_ip_address, "accepted: an IPv4 or IPv6 address such as 127.0.0.1 or 0.0.0.0"
        ),
        host_port=read.integer("hostPort", 1, 65535),
        workers=read.integer("workers", 1, 32),
        mlflow_memory_mb=read.integer("mlflowMemoryMb", MIN_MLFLOW_MEMORY_MB, 1_048_576),
        allowed_hosts=tuple(
            _normalise_allowed_host(host)
            for host in read.string_list(
                "allowedHosts",
                _is_allowed_host,
                "a host name or IP address, optionally with ':port' (an IPv6 address with a port in brackets)",
            )
        ),
        cors_allowed_origins=tuple(
            origin.lower()
            for origin in read.string_list(
                "corsAllowedOrigins",
                _is_origin,
                "one origin such as 'https://ml.example.com' (scheme://host[:port]: no path, no comma)",
            )
        ),
        auth_enabled=read.boolean("authEnabled"),
        admin_password_length=read.integer("adminPasswordLength", MIN_SECRET_LENGTH, MAX_SECRET_LENGTH),
        protect_data=read.boolean("protectData"),
        log_max_size=read.string(
            "logMaxSize", _matches(_DOCKER_SIZE), "accepted: a size such as '10m' (a whole number, then k, m or g)"
        ),
        log_max_files=read.integer("logMaxFiles", 1, 100),
        startup_timeout_seconds=read.integer("startupTimeoutSeconds", 30, 3600),
        secrets_rotation=read.string(
            "secretsRotation", lambda value: len(value) <= 256, "accepted: any string of at most 256 characters"
        ),
    )
    _check_combinations(settings)
    return settings


def _check_combinations(settings: StackSettings) -> None:
    """Rules that span keys: where each stands, the error names the key to change."""
    if settings.stack in PROTECTED_STACKS and not settings.auth_enabled:
        raise SettingsError("authEnabled", False, f"the '{settings.stack}' stack holds shared data: accepted: true")
    if settings.stack in PROTECTED_STACKS and not settings.protect_data:
        raise SettingsError("protectData", False, f"the '{settings.stack}' stack holds shared data: accepted: true")
    needed = MLFLOW_BASE_MEMORY_MB + MLFLOW_WORKER_MEMORY_MB * settings.workers
    if settings.mlflow_memory_mb < needed:
        raise SettingsError(
            "mlflowMemoryMb",
            settings.mlflow_memory_mb,
            f"with workers = {settings.workers} the server needs at least {needed} MiB "
            f"({MLFLOW_BASE_MEMORY_MB} plus {MLFLOW_WORKER_MEMORY_MB} per worker); "
            "accepted: that much or more, or fewer workers",
        )
    if not ipaddress.ip_address(settings.bind_address).is_loopback and not settings.auth_enabled:
        raise SettingsError(
            "bindAddress",
            settings.bind_address,
            "a non-loopback address publishes the server beyond this host; "
            "accepted while authEnabled is false: a loopback address (127.0.0.1 or ::1)",
        )
