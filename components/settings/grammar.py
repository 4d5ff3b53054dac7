"""What each config value may look like: the patterns, the checks and the words that say what is accepted.

Also how a host is written in a Host header and in the URL clients reach the stack at,
since the normalised settings are written the same way.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from components.mlflow_facts import AUTH_DATABASE_SUFFIX
from components.postgres_facts import SUPERUSER

# Config key `environmentKind`: every stack is shared (auth and volume protection mandatory)
# unless its stack file says it is one person's dev stack. Never decided by the stack's name,
# so `production`, `prod-eu` or `Prod` get no way around the rules. policy/policies.py agrees.
ENVIRONMENT_KINDS = ("dev", "shared")
TLS_MODES = ("off", "internal", "acme", "provided")
ARTIFACT_STORES = ("volume", "s3")
# standalone: containers on one Docker host; swarm: services on a swarm manager (issue 21).
ENGINES = ("standalone", "swarm")
NODE_LABEL_ACCEPTED = "accepted: a node label as key=value, such as 'mlflow-platform.postgres=true'"
REGISTRY_ACCEPTED = (
    "accepted: empty, or a registry as host[:port][/path] (no scheme), such as 'registry.example.com:5000/mlflow'"
)

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
# The image installs only a release's hash lock, <release>.txt (mlflow/Dockerfile): a release
# without one would fail only at image build, after the plan was shown and accepted.
IMAGE_LOCKS_DIR = Path(__file__).resolve().parents[2] / "mlflow" / "locks"
# Postgres's identifier limit (NAMEDATALEN - 1); the auth database adds a suffix.
_POSTGRES_NAME_MAX = 63
# Databases every cluster has: MLflow's tables do not belong in them.
_RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})
# The cluster's superuser is the bootstrap role; MLflow's role must be another one.
# pg_* names are reserved.
_POSTGRES_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DOCKER_SIZE = re.compile(r"^[1-9][0-9]*[kmg]$")
# Enough to reject a typo; the ACME CA is the judge of a real address.
_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
# S3's bucket naming rules (the strictest of the S3-compatible stores): 3-63 lower-case
# letters, digits, dots and hyphens, starting and ending with a letter or digit; no
# IP-address form, no '..' (a dot-separated label cannot be empty).
_BUCKET = re.compile(r"^(?!\d+\.\d+\.\d+\.\d+$)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Key-name characters S3 documents as safe, as '/'-separated segments: no empty, '.' or '..'
# segment, so the prefix names one place and `s3://bucket/prefix` cannot be read two ways.
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9!_.*'()-]+$")
# AWS region names (us-east-1, eu-central-2) and the free-form names other stores use (garage).
_REGION = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
# `mlflow gc --older-than`: days, hours, minutes, seconds, each optional, in that order.
GC_AGE = re.compile(r"^(?=.)([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$")

IMAGE_ACCEPTED = (
    "accepted: an image reference such as 'registry.example.com/postgres:17.11', "
    "pinned to a tag other than 'latest' or to an @sha256 digest"
)
DATABASE_ACCEPTED = (
    "accepted: a lower-case Postgres identifier ([a-z_][a-z0-9_]*) of at most "
    f"{_POSTGRES_NAME_MAX - len(AUTH_DATABASE_SUFFIX)} characters (the auth database is the name plus "
    f"'{AUTH_DATABASE_SUFFIX}'), other than {', '.join(sorted(_RESERVED_DATABASES))}"
)
ROLE_ACCEPTED = (
    f"accepted: a lower-case Postgres identifier ([a-z_][a-z0-9_]*, at most 63 characters) other than "
    f"'{SUPERUSER}' (the cluster's superuser) and not starting with 'pg_'"
)


def mlflow_accepted(releases: tuple[str, ...]) -> str:
    """What `mlflowVersion` accepts: the releases with an image lock, and which others can get one."""
    locked = ", ".join(releases) if releases else "none (mlflow/locks/ has no lock)"
    return (
        f"accepted: an exact MLflow release with an image lock (mlflow/locks/<release>.txt): {locked}; "
        f"another release, {'.'.join(map(str, OLDEST_MLFLOW))} or newer (the oldest with --allowed-hosts, "
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION, graceful SIGTERM handling and the basic-auth "
        "cache (authCacheTtlSeconds)), once locked with `make lock-image MLFLOW_VERSION=<release>`"
    )


BUCKET_ACCEPTED = (
    "accepted: an S3 bucket name (3 to 63 lower-case letters, digits, dots and hyphens, "
    "starting and ending with a letter or digit)"
)
PREFIX_ACCEPTED = (
    "accepted: empty, or key segments separated by '/' (letters, digits and !_.*'()-; "
    "no empty, '.' or '..' segment), at most 512 characters"
)
REGION_ACCEPTED = "accepted: empty, or a region name such as 'us-east-1' (lower-case letters, digits, hyphens)"
ENDPOINT_ACCEPTED = (
    "accepted: empty (AWS S3), or the store's URL, http:// or https:// with a host and an optional port "
    "(no path, query or user info), such as 'https://s3.example.internal:9000'"
)


# libpq's URI schemes; the program adds sslmode and sslrootcert itself.
EXTERNAL_DATABASE_SCHEMES = ("postgresql", "postgres")
EXTERNAL_DATABASE_URL_ACCEPTED = (
    "accepted: empty (Postgres in the stack), or an admin connection URL "
    "postgresql://user:password@host[:port]/database (a host name or IPv4 address), set with --secret, "
    "with no query but an optional sslmode=verify-full (the program always verifies the server "
    "against externalDatabaseCaCertificate)"
)


@dataclass(frozen=True)
class DatabaseUrl:
    """The parts of externalDatabaseUrl the program uses outside the bootstrap (never the password)."""

    user: str
    host: str
    port: int
    database: str


def parse_database_url(value: str) -> DatabaseUrl | None:
    """The parts of an admin URL, or None when it is not one this program accepts."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    user, host, database = unquote(parts.username or ""), parts.hostname or "", unquote(parts.path[1:])
    if (
        parts.scheme not in EXTERNAL_DATABASE_SCHEMES
        or not user
        or not parts.password
        # Written into host:port URIs unbracketed (the entrypoint's, pgpass): no IPv6 literal.
        or not is_host_name(host)
        or ":" in host
        or not database
        or "/" in database
        or parts.fragment
        or parse_qsl(parts.query, keep_blank_values=True) not in ([], [("sslmode", "verify-full")])
        or port == 0
    ):
        return None
    return DatabaseUrl(user=user, host=host.lower(), port=port or 5432, database=database)


_NODE_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?=[A-Za-z0-9._-]+$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._/-][a-z0-9]+)*)?$")


def is_node_label(value: str) -> bool:
    return _NODE_LABEL.match(value) is not None


def is_registry(value: str) -> bool:
    return value == "" or _REGISTRY.match(value) is not None


def is_bucket(value: str) -> bool:
    return _BUCKET.match(value) is not None


def is_artifact_prefix(value: str) -> bool:
    return value == "" or (
        len(value) <= 512 and all(_PREFIX_SEGMENT.match(part) and part not in (".", "..") for part in value.split("/"))
    )


def is_region(value: str) -> bool:
    return value == "" or _REGION.match(value) is not None


def is_store_endpoint(value: str) -> bool:
    """Empty, or scheme://host[:port] and nothing else: MLflow and boto3 append the bucket and key."""
    if value == "":
        return True
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and parts.hostname is not None
        and is_host_name(parts.hostname)
        and parts.username is None
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and (port is None or 1 <= port <= 65535)
    )


def matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda value: pattern.match(value) is not None


def is_pinned_image(reference: str) -> bool:
    match = _IMAGE_REFERENCE.match(reference)
    if match is None:
        return False
    tag, digest = match.group("tag"), match.group("digest")
    return digest is not None or (tag is not None and tag != "latest")


def is_host_name(value: str) -> bool:
    return _HOST_NAME.match(value) is not None or is_ip_address(value)


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_email(value: str) -> bool:
    return _EMAIL.match(value) is not None


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


def is_allowed_host(value: str) -> bool:
    parts = _split_host_port(value)
    if parts is None:
        return False
    host, port = parts
    if value.startswith("[") and ":" not in host:
        return False  # brackets only around IPv6 addresses
    return is_host_name(host) and (not port or _valid_port(port))


def normalise_allowed_host(value: str) -> str:
    parts = _split_host_port(value)
    assert parts is not None  # checked by is_allowed_host
    return host_header(*parts)


def is_origin(value: str) -> bool:
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
    return is_host_name(host) and (port is None or _valid_port(port))


def _mlflow_release(value: str) -> tuple[int, ...] | None:
    match = _MLFLOW_VERSION.match(value)
    return None if match is None else tuple(int(part) for part in match.groups())


def locked_mlflow_releases(locks_dir: Path = IMAGE_LOCKS_DIR) -> tuple[str, ...]:
    """The releases `mlflowVersion` accepts, oldest first: those with an image lock, from OLDEST_MLFLOW on."""
    locked = sorted(
        (release, lock.stem)
        for lock in locks_dir.glob("*.txt")
        if (release := _mlflow_release(lock.stem)) is not None and release >= OLDEST_MLFLOW
    )
    return tuple(name for _, name in locked)


def is_tracking_database(value: str) -> bool:
    return (
        _POSTGRES_IDENTIFIER.match(value) is not None
        and len(value) + len(AUTH_DATABASE_SUFFIX) <= _POSTGRES_NAME_MAX
        and value not in _RESERVED_DATABASES
    )


def is_application_role(value: str) -> bool:
    return _POSTGRES_IDENTIFIER.match(value) is not None and value != SUPERUSER and not value.startswith("pg_")


def host_header(host: str, port: int | str | None = None) -> str:
    """A host as clients write it in the Host header: lower case, IPv6 in brackets."""
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def public_url(host: str, port: int, *, https: bool) -> str:
    """The URL clients reach the stack at: the one place it is built (tracking URI, the proxy's redirect)."""
    bracketed = f"[{host}]" if ":" in host else host
    if https:
        return f"https://{bracketed}" if port == 443 else f"https://{bracketed}:{port}"
    return f"http://{bracketed}:{port}"
