"""The stack's settings: read from Pulumi config once, validated, typed.

Every key is declared in Pulumi.yaml with its type, default and description; the
CLI merges those defaults with the stack file. `load_settings` turns the raw
values into a frozen `StackSettings` or raises `SettingsError` naming the key, the
value and what is accepted, before the program declares any resource.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import pulumi

from components.certificates import CertificateError, check_key_pair, parse_certificates

T = TypeVar("T")

# Config key `environmentKind`: every stack is shared (auth and volume protection mandatory)
# unless its stack file says it is one person's dev stack. Never decided by the stack's name,
# so `production`, `prod-eu` or `Prod` get no way around the rules. policy/policies.py agrees.
ENVIRONMENT_KINDS = ("dev", "shared")
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
# released wheels (mlflow/cli/, mlflow/environment_variables.py, mlflow/server/):
# the basic-auth config keys (default_permission, database_uri, admin_username,
# admin_password, authorization_function: 3.4 has them all), `mlflow server
# --allowed-hosts` and the job-execution switch MLFLOW_SERVER_ENABLE_JOB_EXECUTION
# (both first in 3.5.0), `mlflow server` forwarding SIGTERM to uvicorn, so a
# stopped container finishes its in-flight requests (first in 3.10.0; before, the
# CLI died and uvicorn was killed with it), and the basic-auth credential cache's
# key auth_cache_ttl_seconds (config key authCacheTtlSeconds), first read by
# mlflow/server/auth/config.py in 3.12.0: 3.11 ignores it without a word.
OLDEST_MLFLOW = (3, 12, 0)
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
# Enough to reject a typo; the ACME CA is the judge of a real address.
_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
TLS_MODES = ("off", "internal", "acme", "provided")
# `mlflow gc --older-than`: days, hours, minutes, seconds, each optional, in that order.
_GC_AGE = re.compile(r"^(?=.)([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$")


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
    tls_mode: str
    proxy_image: str
    https_port: int
    http_port: int
    acme_email: str
    acme_directory_url: str
    acme_ca_certificate: str
    tls_certificate: str
    # Secret: kept out of repr, so no error message or debug print can show it.
    tls_private_key: str = field(repr=False)
    max_upload_mb: int
    proxy_memory_mb: int
    secrets_rotation: str
    environment_kind: str
    auth_cache_ttl_seconds: int
    backup_interval_hours: int
    backup_interval_minutes: int
    backup_keep: int
    gc_older_than: str
    gc_interval_hours: int
    metrics_enabled: bool
    telemetry_enabled: bool

    @property
    def proxied(self) -> bool:
        """The TLS front door is on: it is the only container that publishes a port."""
        return self.tls_mode != "off"

    @property
    def shared(self) -> bool:
        """Holds shared experiment data: anything but an explicit personal dev stack."""
        return self.environment_kind != "dev"

    @property
    def backup_interval_seconds(self) -> int:
        """backupIntervalMinutes, when set, replaces backupIntervalHours."""
        if self.backup_interval_minutes:
            return self.backup_interval_minutes * 60
        return self.backup_interval_hours * 3600

    @property
    def tracking_uri(self) -> str:
        if not self.proxied:
            return public_url(self.public_host, self.host_port, https=False)
        return public_url(self.public_host, self.https_port, https=True)


def public_url(host: str, port: int, *, https: bool) -> str:
    """The URL clients reach the stack at: the one place it is built (tracking URI, the proxy's redirect)."""
    bracketed = f"[{host}]" if ":" in host else host
    if https:
        return f"https://{bracketed}" if port == 443 else f"https://{bracketed}:{port}"
    return f"http://{bracketed}:{port}"


class _Reader:
    """Reads raw config strings (as the CLI passes them) and records what was read."""

    def __init__(self, config: pulumi.Config) -> None:
        self._config = config

    def raw(self, key: str) -> str:
        value = self._config.get(key)
        if value is None:
            raise SettingsError(key, None, "it is missing; declare it in Pulumi.yaml with a default")
        return value

    def optional(self, key: str) -> str:
        """A key with no default (certificates, keys): empty when unset."""
        return (self._config.get(key) or "").strip()

    def secret(self, key: str) -> str:
        """A key that must be set with `pulumi config set --secret`, or not at all.

        Set in the clear, the value would sit readable in Pulumi.<stack>.yaml and in git.
        """
        value = self.optional(key)
        if value and not pulumi.runtime.is_config_secret(self._config.full_key(key)):
            # The value itself is never shown: it is a secret set in the wrong way.
            raise SettingsError(key, "<hidden>", f"accepted: a secret value (`pulumi config set --secret {key} ...`)")
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
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION, graceful SIGTERM handling and the basic-auth "
    "cache (authCacheTtlSeconds))"
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
        tls_mode=read.string("tlsMode", lambda value: value in TLS_MODES, f"accepted: one of {', '.join(TLS_MODES)}"),
        proxy_image=read.string("proxyImage", _is_pinned_image, _IMAGE_ACCEPTED),
        https_port=read.integer("httpsPort", 1, 65535),
        http_port=read.integer("httpPort", 1, 65535),
        acme_email=read.optional("acmeEmail"),
        acme_directory_url=read.optional("acmeDirectoryUrl"),
        acme_ca_certificate=read.optional("acmeCaCertificate"),
        tls_certificate=read.optional("tlsCertificate"),
        tls_private_key=read.secret("tlsPrivateKey"),
        # Up to 1 TiB: a model checkpoint of tens of GB must pass; larger is a typo.
        max_upload_mb=read.integer("maxUploadMb", 1, 1_048_576),
        proxy_memory_mb=read.integer("proxyMemoryMb", 64, 1_048_576),
        secrets_rotation=read.string(
            "secretsRotation", lambda value: len(value) <= 256, "accepted: any string of at most 256 characters"
        ),
        environment_kind=read.string(
            "environmentKind",
            lambda value: value in ENVIRONMENT_KINDS,
            "accepted: 'shared' (the default: auth and volume protection required) or 'dev' (a personal stack)",
        ),
        # At most 5 minutes: past a few seconds the throughput gain is already whole,
        # while a revoked password keeps working for up to this long.
        auth_cache_ttl_seconds=read.integer("authCacheTtlSeconds", 0, 300),
        backup_interval_hours=read.integer("backupIntervalHours", 1, 720),
        backup_interval_minutes=read.integer("backupIntervalMinutes", 0, 59),
        backup_keep=read.integer("backupKeep", 1, 1000),
        gc_older_than=read.string(
            "gcOlderThan",
            _matches(_GC_AGE),
            "accepted: an age such as '30d', '12h' or '1d12h30m' (whole days, hours, minutes, seconds, in that order)",
        ),
        gc_interval_hours=read.integer("gcIntervalHours", 1, 720),
        metrics_enabled=read.boolean("metricsEnabled"),
        telemetry_enabled=read.boolean("telemetryEnabled"),
    )
    _check_combinations(settings)
    _check_tls(settings)
    return settings


def _check_combinations(settings: StackSettings) -> None:
    """Rules that span keys: where each stands, the error names the key to change."""
    shared = f"the '{settings.stack}' stack holds shared data (environmentKind is not 'dev'): accepted: true"
    if settings.shared and not settings.auth_enabled:
        raise SettingsError("authEnabled", False, shared)
    if settings.shared and not settings.protect_data:
        raise SettingsError("protectData", False, shared)
    needed = MLFLOW_BASE_MEMORY_MB + MLFLOW_WORKER_MEMORY_MB * settings.workers
    if settings.mlflow_memory_mb < needed:
        raise SettingsError(
            "mlflowMemoryMb",
            settings.mlflow_memory_mb,
            f"with workers = {settings.workers} the server needs at least {needed} MiB "
            f"({MLFLOW_BASE_MEMORY_MB} plus {MLFLOW_WORKER_MEMORY_MB} per worker); "
            "accepted: that much or more, or fewer workers",
        )
    if settings.shared and settings.tls_mode == "off":
        raise SettingsError(
            "tlsMode",
            "off",
            f"the '{settings.stack}' stack holds shared data and is reached over a network "
            "(environmentKind is not 'dev'): accepted: internal, acme, provided",
        )
    if not ipaddress.ip_address(settings.bind_address).is_loopback:
        if not settings.auth_enabled:
            raise SettingsError(
                "bindAddress",
                settings.bind_address,
                "a non-loopback address publishes the server beyond this host; "
                "accepted while authEnabled is false: a loopback address (127.0.0.1 or ::1)",
            )
        if not settings.proxied:
            # Basic auth over plain HTTP sends every password across the network in the clear.
            raise SettingsError(
                "bindAddress",
                settings.bind_address,
                "a non-loopback address sends passwords across the network; "
                "accepted while tlsMode is off: a loopback address (127.0.0.1 or ::1)",
            )
    if settings.proxied and settings.https_port == settings.http_port:
        raise SettingsError(
            "httpPort", settings.http_port, f"accepted: a port other than httpsPort ({settings.https_port})"
        )


def _check_tls(settings: StackSettings) -> None:
    """What each TLS mode needs, checked before anything is declared."""
    mode = settings.tls_mode
    if mode == "acme":
        host = settings.public_host
        if _is_ip_address(host) or host == "localhost" or host.endswith(".localhost") or "." not in host:
            raise SettingsError(
                "publicHost",
                host,
                "tlsMode acme needs a public DNS name that resolves to this host (not an IP address or localhost); "
                "accepted otherwise: tlsMode internal or provided",
            )
        if not _EMAIL.match(settings.acme_email):
            raise SettingsError(
                "acmeEmail",
                settings.acme_email,
                "tlsMode acme needs a contact address for the ACME account: accepted: an e-mail address",
            )
        url = settings.acme_directory_url
        if url and (urlsplit(url).scheme != "https" or not urlsplit(url).hostname):
            raise SettingsError(
                "acmeDirectoryUrl", url, "accepted: empty (Let's Encrypt) or an https:// ACME directory URL"
            )
    if settings.acme_ca_certificate:
        try:
            parse_certificates(settings.acme_ca_certificate)
        except CertificateError as error:
            raise SettingsError("acmeCaCertificate", "<PEM>", f"accepted: PEM certificates; {error}") from None
    if mode == "provided":
        _check_provided_certificate(settings)


def _check_provided_certificate(settings: StackSettings) -> None:
    if not settings.tls_certificate:
        raise SettingsError(
            "tlsCertificate", "", "tlsMode provided needs it: accepted: the PEM certificate chain, leaf first"
        )
    if not settings.tls_private_key:
        raise SettingsError(
            "tlsPrivateKey", "", "tlsMode provided needs it: accepted: the PEM private key, set with --secret"
        )
    try:
        check_key_pair(
            settings.tls_certificate,
            settings.tls_private_key,
            settings.public_host,
            datetime.datetime.now(datetime.UTC),
        )
    except CertificateError as error:
        raise SettingsError(error.key, error.shown, error.accepted) from None
