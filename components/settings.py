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
_ORIGIN = re.compile(r"^https?://[^/\s:]+(?::[0-9]{1,5})?$")
_MLFLOW_VERSION = re.compile(r"^3\.[0-9]+\.[0-9]+$")
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


def _is_port(value: str) -> bool:
    return value.isdigit() and 1 <= int(value) <= 65535


def _is_allowed_host(value: str) -> bool:
    """A `Host` header value, which MLflow compares exactly: a name or IPv4 address, or an
    IPv6 address in brackets (a bare one never matches a header), each with an optional port."""
    if value.startswith("["):
        address, closed, rest = value[1:].partition("]")
        if not closed or not _is_ipv6_address(address):
            return False
        return rest == "" or (rest.startswith(":") and _is_port(rest[1:]))
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return ":" not in host and _is_host_name(host) and (not port or _is_port(port))


def _is_ipv6_address(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv6Address)
    except ValueError:
        return False


def _matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda value: pattern.match(value) is not None


_IMAGE_ACCEPTED = (
    "accepted: an image reference such as 'registry.example.com/postgres:17.6', "
    "pinned to a tag other than 'latest' or to an @sha256 digest"
)
_IDENTIFIER_ACCEPTED = "accepted: a lower-case Postgres identifier ([a-z_][a-z0-9_]*, at most 63 characters)"


def load_settings(config: pulumi.Config | None = None, stack: str | None = None) -> StackSettings:
    """Reads and validates every setting; raises SettingsError on the first bad one."""
    read = _Reader(config or pulumi.Config())
    settings = StackSettings(
        stack=stack or pulumi.get_stack(),
        project=pulumi.get_project(),
        postgres_image=read.string("postgresImage", _is_pinned_image, _IMAGE_ACCEPTED),
        postgres_database=read.string("postgresDatabase", _matches(_POSTGRES_IDENTIFIER), _IDENTIFIER_ACCEPTED),
        postgres_user=read.string("postgresUser", _matches(_POSTGRES_IDENTIFIER), _IDENTIFIER_ACCEPTED),
        postgres_password_length=read.integer("postgresPasswordLength", MIN_SECRET_LENGTH, MAX_SECRET_LENGTH),
        postgres_memory_mb=read.integer("postgresMemoryMb", 128, 1_048_576),
        mlflow_version=read.string(
            "mlflowVersion", _matches(_MLFLOW_VERSION), "accepted: an exact MLflow 3.x release such as '3.17.2'"
        ),
        base_image=read.string("baseImage", _is_pinned_image, _IMAGE_ACCEPTED),
        use_wheelhouse=read.boolean("useWheelhouse"),
        public_host=read.string("publicHost", _is_host_name, "accepted: a DNS host name or an IP address"),
        bind_address=read.string(
            "bindAddress", _is_ip_address, "accepted: an IPv4 or IPv6 address such as 127.0.0.1 or 0.0.0.0"
        ),
        host_port=read.integer("hostPort", 1, 65535),
        workers=read.integer("workers", 1, 32),
        mlflow_memory_mb=read.integer("mlflowMemoryMb", 256, 1_048_576),
        allowed_hosts=read.string_list(
            "allowedHosts",
            _is_allowed_host,
            "a host name or IP address as a Host header carries it (IPv6 in brackets), optionally with ':port'",
        ),
        cors_allowed_origins=read.string_list(
            "corsAllowedOrigins", _matches(_ORIGIN), "an origin such as 'https://ml.example.com' (no path)"
        ),
        auth_enabled=read.boolean("authEnabled"),
        admin_password_length=read.integer("adminPasswordLength", MIN_SECRET_LENGTH, MAX_SECRET_LENGTH),
        protect_data=read.boolean("protectData"),
        log_max_size=read.string(
            "logMaxSize", _matches(_DOCKER_SIZE), "accepted: a size such as '10m' (a whole number, then k, m or g)"
        ),
        log_max_files=read.integer("logMaxFiles", 1, 100),
        startup_timeout_seconds=read.integer("startupTimeoutSeconds", 30, 3600),
    )
    _check_combinations(settings)
    return settings


def _check_combinations(settings: StackSettings) -> None:
    """Rules that span keys: where each stands, the error names the key to change."""
    if settings.stack in PROTECTED_STACKS and not settings.auth_enabled:
        raise SettingsError("authEnabled", False, f"the '{settings.stack}' stack holds shared data: accepted: true")
    if settings.stack in PROTECTED_STACKS and not settings.protect_data:
        raise SettingsError("protectData", False, f"the '{settings.stack}' stack holds shared data: accepted: true")
    if not ipaddress.ip_address(settings.bind_address).is_loopback and not settings.auth_enabled:
        raise SettingsError(
            "bindAddress",
            settings.bind_address,
            "a non-loopback address publishes the server beyond this host; "
            "accepted while authEnabled is false: a loopback address (127.0.0.1 or ::1)",
        )
