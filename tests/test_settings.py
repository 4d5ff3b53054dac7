"""Bad configuration is refused with the key, the value and what is accepted, before any resource."""

from __future__ import annotations

import datetime
from operator import attrgetter
from pathlib import Path
from typing import Any

import pulumi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pulumi.runtime.proto import resource_pb2

from components.settings import SettingsError, load_settings
from tests.certs import other_key, self_signed
from tests.harness import EngineMocks, install, run_program
from tools import mocks as tools_mocks
from tools.stack_config import PROJECT_DIR, STACKS, project_file, runtime_config, stack_config

_GOOD = self_signed(["mlflow.example.com"])
_OTHER_HOST = self_signed(["other.example.com"])
_EXPIRED = self_signed(["mlflow.example.com"], valid_from=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), days=30)
_PROVIDED = {"tlsMode": "provided", "publicHost": "mlflow.example.com"}
_ACME = {"tlsMode": "acme", "publicHost": "mlflow.example.com", "acmeEmail": "ops@example.com"}
_S3 = {"artifactStore": "s3", "artifactBucket": "ml-artifacts"}
_OFFSITE = {"backupBucket": "ml-backups"}
_DB_CA = self_signed(["Database CA"], ca=True).certificate
_DB_URL = "postgresql://dbadmin:Admin0Password0123456789@db.example.internal:5432/postgres"
_EXTERNAL = {"externalDatabaseUrl": _DB_URL, "externalDatabaseCaCertificate": _DB_CA}
_URL_KEY, _CA_KEY, _HIDDEN = "externalDatabaseUrl", "externalDatabaseCaCertificate", "'<hidden>'"


def _url(url: str) -> dict[str, str]:
    return {**_EXTERNAL, _URL_KEY: url}


# (stack, overrides, key named in the error, value shown in the error, words from what is accepted)
# Prod on one swarm server task: volume artifacts are still allowed.
_SWARM_ONE: dict[str, Any] = {"engine": "swarm", "mlflowReplicas": 1}
BAD_SETTINGS: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("dev", {"hostPort": 0}, "hostPort", "0", "an integer from 1 to 65535"),
    ("dev", {"hostPort": 70000}, "hostPort", "70000", "an integer from 1 to 65535"),
    ("dev", {"hostPort": "http"}, "hostPort", "'http'", "an integer from 1 to 65535"),
    ("dev", {"workers": 0}, "workers", "0", "an integer from 1 to 32"),
    ("dev", {"postgresImage": "postgres"}, "postgresImage", "'postgres'", "pinned to a tag"),
    ("dev", {"postgresImage": "postgres:latest"}, "postgresImage", "'postgres:latest'", "other than 'latest'"),
    ("dev", {"postgresImage": "Postgres:17 6"}, "postgresImage", "'Postgres:17 6'", "an image reference"),
    ("dev", {"baseImage": "python:"}, "baseImage", "'python:'", "an image reference"),
    ("dev", {"bindAddress": "localhost"}, "bindAddress", "'localhost'", "an IPv4 or IPv6 address"),
    ("dev", {"bindAddress": "0.0.0.0"}, "bindAddress", "'0.0.0.0'", "a loopback address"),
    ("dev", {"publicHost": ""}, "publicHost", "''", "a DNS host name or an IP address"),
    ("dev", {"publicHost": "mlflow_server!"}, "publicHost", "'mlflow_server!'", "a DNS host name"),
    ("dev", {"mlflowVersion": "2.22.0"}, "mlflowVersion", "'2.22.0'", "3.12.0 or newer"),
    ("dev", {"mlflowVersion": "3.17"}, "mlflowVersion", "'3.17'", "an exact MLflow release"),
    # 3.9.0 has --allowed-hosts and the job switch, but its CLI kills uvicorn on SIGTERM.
    ("dev", {"mlflowVersion": "3.9.0"}, "mlflowVersion", "'3.9.0'", "3.12.0 or newer"),
    # 3.11.1 stops gracefully, but ignores auth_cache_ttl_seconds (authCacheTtlSeconds).
    ("dev", {"mlflowVersion": "3.11.1"}, "mlflowVersion", "'3.11.1'", "3.12.0 or newer"),
    ("dev", {"mlflowVersion": "3.10.1"}, "mlflowVersion", "'3.10.1'", "the basic-auth cache (authCacheTtlSeconds)"),
    ("dev", {"mlflowVersion": "3.4.0"}, "mlflowVersion", "'3.4.0'", "--allowed-hosts"),
    # A release new enough but with no image lock: refused here, not at image build.
    ("dev", {"mlflowVersion": "3.17.1"}, "mlflowVersion", "'3.17.1'", "with an image lock (mlflow/locks/"),
    ("dev", {"mlflowVersion": "3.71.2"}, "mlflowVersion", "'3.71.2'", "`make lock-image MLFLOW_VERSION=<release>`"),
    ("dev", {"postgresDatabase": "ml-flow"}, "postgresDatabase", "'ml-flow'", "a lower-case Postgres identifier"),
    # 59 characters: the auth database (plus '_auth') would pass Postgres's 63.
    ("dev", {"postgresDatabase": "m" * 59}, "postgresDatabase", repr("m" * 59), "at most 58 characters"),
    ("dev", {"postgresDatabase": "postgres"}, "postgresDatabase", "'postgres'", "other than postgres"),
    ("dev", {"postgresDatabase": "template0"}, "postgresDatabase", "'template0'", "template0, template1"),
    ("dev", {"postgresDatabase": "template1"}, "postgresDatabase", "'template1'", "template0, template1"),
    ("dev", {"postgresUser": "postgres"}, "postgresUser", "'postgres'", "the cluster's superuser"),
    ("dev", {"postgresUser": "pg_monitor"}, "postgresUser", "'pg_monitor'", "not starting with 'pg_'"),
    ("dev", {"postgresUser": "Admin"}, "postgresUser", "'Admin'", "a lower-case Postgres identifier"),
    ("dev", {"postgresPasswordLength": 16}, "postgresPasswordLength", "16", "an integer from 24 to 128"),
    ("dev", {"adminPasswordLength": 12}, "adminPasswordLength", "12", "an integer from 24 to 128"),
    ("dev", {"postgresMemoryMb": 64}, "postgresMemoryMb", "64", "an integer from 128"),
    ("dev", {"mlflowMemoryMb": -1}, "mlflowMemoryMb", "-1", "an integer from 512"),
    ("dev", {"mlflowMemoryMb": 256}, "mlflowMemoryMb", "256", "an integer from 512"),
    ("dev", {"workers": 4, "mlflowMemoryMb": 1024}, "mlflowMemoryMb", "1024", "at least 1280 MiB"),
    ("dev", {"useWheelhouse": "yes"}, "useWheelhouse", "'yes'", "true or false"),
    ("dev", {"allowedHosts": "mlflow.example.com"}, "allowedHosts", "'mlflow.example.com'", "a list of"),
    ("dev", {"allowedHosts": ["ok.example.com", "bad host"]}, "allowedHosts", "'bad host'", "a host name"),
    ("dev", {"corsAllowedOrigins": ["ml.example.com"]}, "corsAllowedOrigins", "'ml.example.com'", "one origin"),
    # MLflow splits the flag on commas: this entry would allow every origin.
    ("dev", {"corsAllowedOrigins": ["https://a.com,*"]}, "corsAllowedOrigins", "'https://a.com,*'", "no comma"),
    ("dev", {"corsAllowedOrigins": ["https://a.com/x"]}, "corsAllowedOrigins", "'https://a.com/x'", "no path"),
    ("dev", {"allowedHosts": ["[mlflow.example.com]"]}, "allowedHosts", "'[mlflow.example.com]'", "in brackets"),
    ("dev", {"secretsRotation": "x" * 257}, "secretsRotation", repr("x" * 257), "at most 256 characters"),
    ("dev", {"backupIntervalHours": 0}, "backupIntervalHours", "0", "an integer from 1 to 720"),
    ("dev", {"backupIntervalHours": 721}, "backupIntervalHours", "721", "an integer from 1 to 720"),
    ("dev", {"backupIntervalHours": "1.5"}, "backupIntervalHours", "'1.5'", "an integer from 1 to 720"),
    ("dev", {"backupIntervalMinutes": 60}, "backupIntervalMinutes", "60", "an integer from 0 to 59"),
    ("dev", {"backupIntervalMinutes": -1}, "backupIntervalMinutes", "-1", "an integer from 0 to 59"),
    ("dev", {"backupKeep": 0}, "backupKeep", "0", "an integer from 1 to 1000"),
    ("dev", {"backupKeep": 1001}, "backupKeep", "1001", "an integer from 1 to 1000"),
    ("dev", {"gcOlderThan": "30 days"}, "gcOlderThan", "'30 days'", "an age such as '30d'"),
    ("dev", {"gcOlderThan": "12h30d"}, "gcOlderThan", "'12h30d'", "in that order"),
    ("dev", {"gcOlderThan": ""}, "gcOlderThan", "''", "an age such as '30d'"),
    ("dev", {"gcIntervalHours": 0}, "gcIntervalHours", "0", "an integer from 1 to 720"),
    ("dev", {"metricsEnabled": "on"}, "metricsEnabled", "'on'", "true or false"),
    ("dev", {"telemetryEnabled": 1}, "telemetryEnabled", "'1'", "true or false"),
    ("dev", {"logMaxSize": "10MB"}, "logMaxSize", "'10MB'", "a size such as '10m'"),
    ("dev", {"logMaxFiles": 0}, "logMaxFiles", "0", "an integer from 1 to 100"),
    ("dev", {"startupTimeoutSeconds": 5}, "startupTimeoutSeconds", "5", "an integer from 30 to 3600"),
    ("prod", {"authEnabled": False}, "authEnabled", "False", "the 'prod' stack holds shared data"),
    ("staging", {"protectData": False}, "protectData", "False", "the 'staging' stack holds shared data"),
    ("dev", {"environmentKind": "personal"}, "environmentKind", "'personal'", "'shared' (the default"),
    ("dev", {"environmentKind": "Dev"}, "environmentKind", "'Dev'", "or 'dev' (a personal stack)"),
    # Former bypasses: only stacks named exactly 'staging' or 'prod' required auth and protection.
    ("production", {}, "authEnabled", "False", "the 'production' stack holds shared data (environmentKind is not"),
    ("prod-eu", {"authEnabled": True}, "protectData", "False", "the 'prod-eu' stack holds shared data"),
    ("Prod", {}, "authEnabled", "False", "the 'Prod' stack holds shared data"),
    # Not even a stack called dev is exempt without the explicit kind.
    ("dev", {"environmentKind": "shared"}, "authEnabled", "False", "the 'dev' stack holds shared data"),
    ("dev", {"authEnabled": "maybe"}, "authEnabled", "'maybe'", "true or false"),
    # The HTTPS front door.
    ("dev", {"tlsMode": "on"}, "tlsMode", "'on'", "one of off, internal, acme, provided"),
    (
        "prod",
        {"tlsMode": "off"},
        "tlsMode",
        "'off'",
        "the 'prod' stack holds shared data and is reached over a network",
    ),
    ("staging", {"tlsMode": "off", "bindAddress": "127.0.0.1"}, "tlsMode", "'off'", "accepted: internal, acme"),
    ("dev", {"authEnabled": True, "bindAddress": "0.0.0.0"}, "bindAddress", "'0.0.0.0'", "while tlsMode is off"),
    ("dev", {"tlsMode": "internal", "bindAddress": "0.0.0.0"}, "bindAddress", "'0.0.0.0'", "authEnabled is false"),
    ("dev", {"proxyImage": "caddy:latest"}, "proxyImage", "'caddy:latest'", "other than 'latest'"),
    ("dev", {"httpsPort": 0}, "httpsPort", "0", "an integer from 1 to 65535"),
    ("dev", {"httpsPort": 65536}, "httpsPort", "65536", "an integer from 1 to 65535"),
    ("dev", {"httpPort": 65536}, "httpPort", "65536", "an integer from 1 to 65535"),
    ("prod", {"httpPort": 443}, "httpPort", "443", "a port other than httpsPort (443)"),
    ("dev", {"maxUploadMb": 0}, "maxUploadMb", "0", "an integer from 1 to 1048576"),
    ("dev", {"proxyMemoryMb": 63}, "proxyMemoryMb", "63", "an integer from 64"),
    ("prod", {**_ACME, "publicHost": "10.0.0.5"}, "publicHost", "'10.0.0.5'", "a public DNS name"),
    ("prod", {**_ACME, "publicHost": "localhost"}, "publicHost", "'localhost'", "not an IP address or localhost"),
    ("prod", {**_ACME, "acmeEmail": ""}, "acmeEmail", "''", "an e-mail address"),
    ("prod", {**_ACME, "acmeEmail": "ops"}, "acmeEmail", "'ops'", "an e-mail address"),
    (
        "prod",
        {**_ACME, "acmeDirectoryUrl": "http://ca.example.com/dir"},
        "acmeDirectoryUrl",
        "'http://ca.example.com/dir'",
        "an https:// ACME directory URL",
    ),
    ("prod", {**_ACME, "acmeCaCertificate": "not a pem"}, "acmeCaCertificate", "'<PEM>'", "PEM certificates"),
    ("prod", {**_PROVIDED, "tlsPrivateKey": _GOOD.key}, "tlsCertificate", "''", "the PEM certificate chain"),
    ("prod", {**_PROVIDED, "tlsCertificate": _GOOD.certificate}, "tlsPrivateKey", "''", "the PEM private key"),
    (
        "prod",
        {**_PROVIDED, "tlsCertificate": "junk", "tlsPrivateKey": _GOOD.key},
        "tlsCertificate",
        "'<not PEM>'",
        "PEM certificates",
    ),
    (
        "prod",
        {**_PROVIDED, "tlsCertificate": _GOOD.certificate, "tlsPrivateKey": "junk"},
        "tlsPrivateKey",
        "'<hidden>'",
        "it does not parse",
    ),
    (
        "prod",
        {**_PROVIDED, "tlsCertificate": _GOOD.certificate, "tlsPrivateKey": other_key()},
        "tlsPrivateKey",
        "'<hidden>'",
        "the private key of tlsCertificate",
    ),
    (
        "prod",
        {**_PROVIDED, "tlsCertificate": _EXPIRED.certificate, "tlsPrivateKey": _EXPIRED.key},
        "tlsCertificate",
        "'<certificate for mlflow.example.com> expired 2020-01-31 00:00 UTC'",
        "a certificate valid now",
    ),
    (
        "prod",
        {**_PROVIDED, "tlsCertificate": _OTHER_HOST.certificate, "tlsPrivateKey": _OTHER_HOST.key},
        "tlsCertificate",
        "'<certificate for other.example.com>'",
        "cover publicHost 'mlflow.example.com'",
    ),
    ("prod", {"authCacheTtlSeconds": -1}, "authCacheTtlSeconds", "-1", "an integer from 0 to 300"),
    ("prod", {"authCacheTtlSeconds": 301}, "authCacheTtlSeconds", "301", "an integer from 0 to 300"),
    ("prod", {"authCacheTtlSeconds": "1m"}, "authCacheTtlSeconds", "'1m'", "an integer from 0 to 300"),
    ("dev", {"artifactStore": "gcs"}, "artifactStore", "'gcs'", "'volume' (the stack's artifacts volume) or 's3'"),
    ("dev", {"artifactStore": "s3"}, "artifactBucket", "''", "artifactStore s3 needs it"),
    ("dev", {**_S3, "artifactBucket": "My_Bucket"}, "artifactBucket", "'My_Bucket'", "an S3 bucket name"),
    ("dev", {**_S3, "artifactBucket": "ab"}, "artifactBucket", "'ab'", "3 to 63 lower-case"),
    ("dev", {**_S3, "artifactBucket": "a..b"}, "artifactBucket", "'a..b'", "an S3 bucket name"),
    ("dev", {**_S3, "artifactBucket": "10.0.0.1"}, "artifactBucket", "'10.0.0.1'", "an S3 bucket name"),
    ("dev", {"artifactBucket": "artifacts"}, "artifactBucket", "'artifacts'", "artifactStore is 'volume'"),
    ("dev", {**_S3, "artifactPrefix": "a//b"}, "artifactPrefix", "'a//b'", "no empty, '.' or '..' segment"),
    ("dev", {**_S3, "artifactPrefix": "a/../b"}, "artifactPrefix", "'a/../b'", "no empty, '.' or '..' segment"),
    ("dev", {**_S3, "artifactPrefix": "a b"}, "artifactPrefix", "'a b'", "key segments separated by '/'"),
    ("dev", {"artifactPrefix": "team"}, "artifactPrefix", "'team'", "artifactStore is 'volume'"),
    ("dev", {**_S3, "artifactEndpoint": "s3.example.com"}, "artifactEndpoint", "'s3.example.com'", "http://"),
    (
        "dev",
        {**_S3, "artifactEndpoint": "https://s3.example.com/bucket"},
        "artifactEndpoint",
        "'https://s3.example.com/bucket'",
        "no path, query or user info",
    ),
    (
        "dev",
        {**_S3, "artifactEndpoint": "https://key:secret@s3.example.com"},
        "artifactEndpoint",
        "'https://key:secret@s3.example.com'",
        "no path, query or user info",
    ),
    ("dev", {**_S3, "artifactEndpoint": "http://s3:99999"}, "artifactEndpoint", "'http://s3:99999'", "optional port"),
    ("dev", {**_S3, "artifactRegion": "EU West"}, "artifactRegion", "'EU West'", "a region name such as 'us-east-1'"),
    ("dev", {**_S3, "artifactPathStyle": "yes"}, "artifactPathStyle", "'yes'", "true or false"),
    ("dev", {"artifactPathStyle": True}, "artifactPathStyle", "True", "artifactStore is 'volume'"),
    ("dev", {**_S3, "artifactAccessKeyId": "AKIA1"}, "artifactSecretAccessKey", "''", "both artifactAccessKeyId"),
    ("dev", {**_S3, "artifactSecretAccessKey": "x" * 40}, "artifactAccessKeyId", "''", "or neither"),
    ("dev", {"artifactAccessKeyId": "AKIA1"}, "artifactAccessKeyId", "'AKIA1'", "artifactStore is 'volume'"),
    (
        "dev",
        {"artifactSecretAccessKey": "x" * 40},
        "artifactSecretAccessKey",
        "'<hidden>'",
        "artifactStore is 'volume'",
    ),
    (
        "dev",
        {**_S3, "artifactEndpoint": "https://s3.example.com", "artifactCaCertificate": "junk"},
        "artifactCaCertificate",
        "'<PEM>'",
        "accepted: PEM certificates",
    ),
    (
        "dev",
        {**_S3, "artifactEndpoint": "http://s3.example.com", "artifactCaCertificate": _GOOD.certificate},
        "artifactCaCertificate",
        "'<PEM>'",
        "only to verify an https:// artifactEndpoint",
    ),
    # The backup bucket's keys: the same grammar, and none of them without backupBucket.
    ("prod", {"backupBucket": "Backups"}, "backupBucket", "'Backups'", "an S3 bucket name"),
    ("prod", {"backupPrefix": "team"}, "backupPrefix", "'team'", "backupBucket is empty (no off-host copy)"),
    ("prod", {**_OFFSITE, "backupPrefix": "a/./b"}, "backupPrefix", "'a/./b'", "no empty, '.' or '..' segment"),
    ("prod", {**_OFFSITE, "backupEndpoint": "ftp://s3"}, "backupEndpoint", "'ftp://s3'", "http://"),
    (
        "prod",
        {"backupEndpoint": "https://s3.example.com"},
        "backupEndpoint",
        "'https://s3.example.com'",
        "a backupBucket",
    ),
    ("prod", {**_OFFSITE, "backupRegion": "Mars"}, "backupRegion", "'Mars'", "a region name"),
    ("prod", {**_OFFSITE, "backupPathStyle": "1"}, "backupPathStyle", "'1'", "true or false"),
    ("prod", {"backupPathStyle": True}, "backupPathStyle", "True", "backupBucket is empty"),
    ("prod", {**_OFFSITE, "backupAccessKeyId": "AKIA2"}, "backupSecretAccessKey", "''", "both backupAccessKeyId"),
    ("prod", {**_OFFSITE, "backupSecretAccessKey": "y" * 40}, "backupAccessKeyId", "''", "or neither"),
    ("prod", {"backupSecretAccessKey": "y" * 40}, "backupSecretAccessKey", "'<hidden>'", "backupBucket is empty"),
    (
        "prod",
        {**_OFFSITE, "backupEndpoint": "http://s3.example.com", "backupCaCertificate": _GOOD.certificate},
        "backupCaCertificate",
        "'<PEM>'",
        "only to verify an https:// backupEndpoint",
    ),
    ("prod", {"backupCaCertificate": "junk"}, "backupCaCertificate", "'<PEM>'", "backupBucket is empty"),
    # Where the stack runs (issue 21).
    ("dev", {"engine": "kubernetes"}, "engine", "'kubernetes'", "'standalone' (containers on one Docker host)"),
    ("dev", {"mlflowReplicas": 2}, "mlflowReplicas", "2", "engine standalone runs one server container"),
    ("dev", {"engine": "swarm", "mlflowReplicas": 3}, "artifactStore", "'volume'", "needs artifacts no single node"),
    ("dev", {"postgresNodeLabel": "postgres"}, "postgresNodeLabel", "'postgres'", "a node label as key=value"),
    ("dev", {"imageRegistry": "https://r.example"}, "imageRegistry", "'https://r.example'", "(no scheme)"),
    ("prod", {**_SWARM_ONE, "imageRegistryUsername": "ci"}, "imageRegistryPassword", "''", "both, or neither"),
    # Unset, mlflowReplicas is 2 on swarm: artifacts must then be in a bucket.
    ("dev", {"engine": "swarm"}, "artifactStore", "'volume'", "mlflowReplicas 2 (the swarm default) needs artifacts"),
    ("prod", {**_SWARM_ONE, "imageRegistryPassword": "p" * 30}, "imageRegistryUsername", "''", "or neither"),
    ("prod", {**_SWARM_ONE, "imageRegistryCaCertificate": "junk"}, "imageRegistryCaCertificate", "'<PEM>'", "PEM"),
    # A swarm service publishes on every interface of its node: only the front door, and no bind address.
    ("dev", {"engine": "swarm", "mlflowReplicas": 1}, "tlsMode", "'off'", "only the TLS front door may publish"),
    (
        "prod",
        {**_SWARM_ONE, "bindAddress": "10.0.0.5"},
        "bindAddress",
        "'10.0.0.5'",
        "with no bind address: accepted: 0.0.0.0 or ::",
    ),
    ("dev", {"imageRegistry": "registry.local:5000"}, "imageRegistry", "'registry.local:5000'", "builds on the host"),
    # An external database: the URL is a secret, so never shown; it needs its CA, and the CA needs it.
    ("dev", _url("mysql://a:b@db/x"), _URL_KEY, _HIDDEN, "its scheme is 'mysql', not postgresql"),
    ("dev", _url("postgresql://dbadmin@db/postgres"), _URL_KEY, _HIDDEN, "postgresql://user:password@host"),
    ("dev", _url("postgresql://a:b@db/postgres?sslmode=require"), _URL_KEY, _HIDDEN, "optional sslmode=verify-full"),
    ("dev", _url("postgresql://a:b@db/"), _URL_KEY, _HIDDEN, "host[:port]/database"),
    ("dev", _url("postgresql://a:b@db/mlflow"), _URL_KEY, _HIDDEN, "its database 'mlflow' is one MLflow's role owns"),
    ("dev", _url("postgresql://mlflow:b@db/postgres"), "postgresUser", "'mlflow'", "logs in as 'mlflow'"),
    ("dev", {_URL_KEY: _DB_URL}, _CA_KEY, "''", "externalDatabaseUrl needs it"),
    ("dev", {**_EXTERNAL, _CA_KEY: "not a certificate"}, _CA_KEY, "'<PEM>'", "accepted: PEM certificates"),
    ("dev", {_CA_KEY: _DB_CA}, _CA_KEY, "'<PEM>'", "externalDatabaseUrl is empty"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stack", "overrides", "key", "shown", "accepted"),
    BAD_SETTINGS,
    ids=[f"{row[0]}-{row[2]}={row[3][:40]}" for row in BAD_SETTINGS],
)
def test_bad_setting_is_refused_before_any_resource(
    stack: str, overrides: dict[str, Any], key: str, shown: str, accepted: str
) -> None:
    mocks = EngineMocks()
    with pytest.raises(SettingsError) as raised:
        run_program(stack, overrides, mocks)
    message = str(raised.value)
    assert f"config key '{key}'" in message
    assert f"has the value {shown};" in message
    assert accepted in message
    assert (raised.value.key, repr(raised.value.value)) == (key, shown)
    assert mocks.registrations == {}


def test_swarm_needs_a_cli_with_replacement_triggers_and_standalone_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI older than 3.208 does not list the feature: it would silently roll an upgrade instead of stopping."""
    recording_monitor = tools_mocks.RecordingMonitor
    with_it = recording_monitor.GetDeploymentInfo

    def without_it(self: Any, request: Any) -> Any:
        info = with_it(self, request)
        features = [f for f in info.supportedFeatures if f != resource_pb2.RESOURCE_MONITOR_FEATURE_REPLACEMENT_TRIGGER]
        return resource_pb2.DeploymentInfo(supportedFeatures=features)

    monkeypatch.setattr(recording_monitor, "GetDeploymentInfo", without_it)
    mocks = EngineMocks()
    with pytest.raises(SettingsError) as raised:
        run_program("prod", {**_SWARM_ONE}, mocks)
    assert (raised.value.key, raised.value.value) == ("engine", "swarm")
    assert "supports the replacementTrigger resource option (3.208.0 or newer" in str(raised.value)
    assert mocks.registrations == {}
    # The standalone engine never replaces on a trigger: any CLI will do.
    run_program("prod", {}, EngineMocks())


def test_the_table_covers_every_config_key() -> None:
    declared = set(project_file()["config"])
    covered = {row[2] for row in BAD_SETTINGS}
    assert declared <= covered, f"no bad value tried for {sorted(declared - covered)}"


@pytest.mark.parametrize("stack", STACKS)
def test_every_committed_stack_file_is_valid_and_complete(stack: str) -> None:
    config = stack_config(stack)
    declared = project_file()["config"]
    assert set(config) == set(declared), "a stack file sets a key Pulumi.yaml does not declare"
    for key, declaration in declared.items():
        assert {"type", "default", "description"} <= set(declaration), key


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # Clients send the Host header in lower case; MLflow compares it exactly.
        ({"publicHost": "MLflow.Example.COM"}, {"server.public_host": "mlflow.example.com"}),
        ({"allowedHosts": ["ML.example.com:8080"]}, {"server.allowed_hosts": ("ml.example.com:8080",)}),
        # IPv6 as clients write it in the Host header: in brackets.
        ({"allowedHosts": ["fd00::5", "[FD00::6]:8080"]}, {"server.allowed_hosts": ("[fd00::5]", "[fd00::6]:8080")}),
        (
            {"corsAllowedOrigins": ["https://UI.example.com"]},
            {"server.cors_allowed_origins": ("https://ui.example.com",)},
        ),
        ({"postgresDatabase": "m" * 58}, {"database.name": "m" * 58}),
        ({"mlflowVersion": "3.12.0"}, {"server.mlflow_version": "3.12.0"}),
        ({"secretsRotation": " 2026-11 "}, {"secrets_rotation": "2026-11"}),
    ],
)
def test_accepted_values_are_normalised(overrides: dict[str, Any], expected: dict[str, Any]) -> None:
    install(EngineMocks(), "dev", overrides)
    settings = load_settings()
    assert {key: attrgetter(key)(settings) for key in expected} == expected


def test_mlflow_version_accepts_the_locked_releases_from_the_floor_on(tmp_path: Path) -> None:
    from components.settings.grammar import IMAGE_LOCKS_DIR, locked_mlflow_releases

    assert IMAGE_LOCKS_DIR == PROJECT_DIR / "mlflow" / "locks"
    # Only <release>.txt counts: an input, a README or a stray name is no lock; older than the
    # floor is refused even locked; releases sort by number (3.100.0 after 3.17.2).
    for name in ("3.11.1.txt", "3.12.0.txt", "3.100.0.txt", "3.17.2.txt", "3.18.0.in", "README.md", "latest.txt"):
        (tmp_path / name).write_text("", encoding="utf-8")
    assert locked_mlflow_releases(tmp_path) == ("3.12.0", "3.17.2", "3.100.0")
    assert locked_mlflow_releases(tmp_path / "missing") == ()
    # The repository's locks are what the stacks accept.
    assert locked_mlflow_releases() == ("3.12.0", "3.17.2")


def test_an_ipv6_public_host_is_bracketed_in_allowed_hosts_and_uri() -> None:
    from components.mlflow_server import allowed_hosts

    install(EngineMocks(), "dev", {"publicHost": "FD00::1"})
    settings = load_settings()
    assert settings.tracking_uri == "http://[fd00::1]:5000"
    hosts = allowed_hosts(settings.server.public_host, 5000, "127.0.0.1", "mlflow", settings.server.allowed_hosts)
    assert hosts[:2] == ["[fd00::1]", "[fd00::1]:5000"]


@settings(max_examples=40, deadline=None)
@given(port=st.integers(min_value=-100_000, max_value=200_000))
def test_host_port_range(port: int) -> None:
    install(EngineMocks(), "dev", {"hostPort": port})
    if 1 <= port <= 65535:
        assert load_settings().server.host_port == port
    else:
        with pytest.raises(SettingsError, match=f"'hostPort' has the value {port};"):
            load_settings()


def test_a_store_secret_key_set_in_the_clear_is_refused_in_one_line_without_showing_it() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    overrides = {**_S3, "artifactAccessKeyId": "AKIAEXAMPLE", "artifactSecretAccessKey": secret}
    install(EngineMocks(), "dev", overrides, secret_keys=())
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "config key 'artifactSecretAccessKey' has the value '<hidden>'; accepted: a secret value "
        "(`pulumi config set --secret artifactSecretAccessKey ...`)"
    )


def test_an_external_database_url_set_in_the_clear_is_refused_without_showing_it() -> None:
    install(EngineMocks(), "dev", _EXTERNAL, secret_keys=())
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "config key 'externalDatabaseUrl' has the value '<hidden>'; accepted: a secret value "
        "(`pulumi config set --secret externalDatabaseUrl ...`)"
    )
    assert "Admin0Password" not in repr(raised.value.value)


def test_an_external_database_reads_back_without_its_password_in_repr() -> None:
    install(
        EngineMocks(),
        "dev",
        {**_EXTERNAL, "externalDatabaseUrl": _DB_URL.replace(":5432", "") + "?sslmode=verify-full"},
    )
    external = load_settings().external_database
    assert external.enabled
    assert external.location is not None
    assert (external.location.user, external.location.host, external.location.port, external.location.database) == (
        "dbadmin",
        "db.example.internal",
        5432,
        "postgres",
    )
    assert external.ca_certificate == _DB_CA.strip()
    assert "Admin0Password" not in repr(external)


def test_a_bucket_with_every_setting_reads_back_normalised() -> None:
    overrides = {
        **_S3,
        "artifactPrefix": "/teams/prod/",
        "artifactEndpoint": "https://s3.example.com:9000/",
        "artifactRegion": "eu-central-1",
        "artifactPathStyle": True,
        "artifactAccessKeyId": "AKIAEXAMPLE",
        "artifactSecretAccessKey": "x" * 40,
        "artifactCaCertificate": _GOOD.certificate,
    }
    install(EngineMocks(), "dev", overrides)
    artifacts = load_settings().artifacts
    assert (artifacts.store, artifacts.bucket, artifacts.prefix, artifacts.endpoint, artifacts.region) == (
        "s3",
        "ml-artifacts",
        "teams/prod",
        "https://s3.example.com:9000",
        "eu-central-1",
    )
    assert (artifacts.path_style, artifacts.access_key_id, artifacts.secret_access_key) == (
        True,
        "AKIAEXAMPLE",
        "x" * 40,
    )
    assert artifacts.destination == "s3://ml-artifacts/teams/prod"
    assert "x" * 40 not in repr(artifacts)
    install(EngineMocks(), "dev", _S3)
    assert load_settings().artifacts.destination == "s3://ml-artifacts"


def test_a_backup_bucket_reads_back_normalised_and_its_secret_must_be_a_secret() -> None:
    overrides = {
        **_OFFSITE,
        "backupPrefix": "/prod/",
        "backupEndpoint": "https://backup.example.com/",
        "backupRegion": "eu-west-1",
        "backupPathStyle": True,
        "backupAccessKeyId": "AKIABACKUP",
        "backupSecretAccessKey": "y" * 40,
    }
    install(EngineMocks(), "prod", overrides)
    backups = load_settings().backups
    assert backups.copied_offsite
    offsite = backups.offsite
    assert (offsite.bucket, offsite.prefix, offsite.endpoint, offsite.region, offsite.path_style) == (
        "ml-backups",
        "prod",
        "https://backup.example.com",
        "eu-west-1",
        True,
    )
    assert (offsite.access_key_id, offsite.secret_access_key) == ("AKIABACKUP", "y" * 40)
    assert "y" * 40 not in repr(backups)
    install(EngineMocks(), "prod", {})
    assert not load_settings().backups.copied_offsite
    install(EngineMocks(), "prod", overrides, secret_keys=())
    with pytest.raises(SettingsError, match=r"^config key 'backupSecretAccessKey' has the value '<hidden>'; "):
        load_settings()


def test_a_private_key_set_in_the_clear_is_refused_without_showing_it() -> None:
    good = self_signed(["mlflow.example.com"])
    overrides = {**_PROVIDED, "tlsCertificate": good.certificate, "tlsPrivateKey": good.key}
    install(EngineMocks(), "prod", overrides, secret_keys=())
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert (raised.value.key, raised.value.value) == ("tlsPrivateKey", "<hidden>")
    assert str(raised.value) == (
        "config key 'tlsPrivateKey' has the value '<hidden>'; accepted: a secret value "
        "(`pulumi config set --secret tlsPrivateKey ...`)"
    )


@pytest.mark.parametrize(
    ("names", "host"),
    [
        (["mlflow.example.com"], "mlflow.example.com"),
        (["*.example.com"], "mlflow.example.com"),
        (["MLflow.Example.com"], "mlflow.example.com"),
        (["10.1.2.3"], "10.1.2.3"),
        (["2001:db8::5"], "2001:db8::5"),
    ],
)
def test_a_provided_certificate_covering_the_host_is_accepted(names: list[str], host: str) -> None:
    pair = self_signed(names)
    install(
        EngineMocks(),
        "prod",
        {**_PROVIDED, "publicHost": host, "tlsCertificate": pair.certificate, "tlsPrivateKey": pair.key},
    )
    settings_ = load_settings()
    assert (settings_.tls.mode, settings_.server.public_host) == ("provided", host)
    assert "PRIVATE KEY" not in repr(settings_)


@pytest.mark.parametrize(
    ("names", "host"),
    [(["*.example.com"], "a.b.example.com"), (["*.example.com"], "example.com"), (["10.1.2.3"], "10.1.2.4")],
)
def test_a_provided_certificate_for_another_name_is_refused(names: list[str], host: str) -> None:
    pair = self_signed(names)
    install(
        EngineMocks(),
        "prod",
        {**_PROVIDED, "publicHost": host, "tlsCertificate": pair.certificate, "tlsPrivateKey": pair.key},
    )
    with pytest.raises(SettingsError, match="cover publicHost"):
        load_settings()


@pytest.mark.parametrize(
    ("stack", "overrides", "uri"),
    [
        ("dev", {}, "http://localhost:5000"),
        ("prod", {}, "https://mlflow.example.internal"),
        ("prod", {"httpsPort": 8443}, "https://mlflow.example.internal:8443"),
        ("prod", {"publicHost": "2001:db8::5"}, "https://[2001:db8::5]"),
        ("prod", {"publicHost": "2001:db8::5", "httpsPort": 8443}, "https://[2001:db8::5]:8443"),
        ("dev", {"publicHost": "::1", "bindAddress": "::1"}, "http://[::1]:5000"),
    ],
)
def test_tracking_uri(stack: str, overrides: dict[str, Any], uri: str) -> None:
    install(EngineMocks(), stack, overrides)
    assert load_settings().tracking_uri == uri


@pytest.mark.parametrize(
    ("stack", "overrides", "shared"),
    [
        ("dev", {}, False),
        ("staging", {}, True),
        ("prod", {}, True),
        # Any other name is shared by default; only the explicit kind makes a personal stack.
        ("alice", {"environmentKind": "dev"}, False),
        ("production", {"authEnabled": True, "protectData": True}, True),
    ],
)
def test_environment_kind_decides_what_is_shared(stack: str, overrides: dict[str, Any], shared: bool) -> None:
    install(EngineMocks(), stack, overrides)
    settings_ = load_settings()
    assert settings_.shared is shared
    assert settings_.environment_kind == ("shared" if shared else "dev")
    # A personal stack may still turn both on; a shared one must.
    if shared:
        assert (settings_.server.auth_enabled, settings_.protect_data) == (True, True)


@pytest.mark.parametrize(
    ("overrides", "expected"), [({}, 30), ({"authCacheTtlSeconds": 0}, 0), ({"authCacheTtlSeconds": 300}, 300)]
)
def test_auth_cache_ttl_default_and_bounds(overrides: dict[str, Any], expected: int) -> None:
    install(EngineMocks(), "prod", overrides)
    assert load_settings().server.auth_cache_ttl_seconds == expected


# Every bounded integer key and its accepted range, written out here (not imported
# from the code under test): a changed bound must change this table too.
INTEGER_BOUNDS: dict[str, tuple[int, int]] = {
    "postgresPasswordLength": (24, 128),
    "postgresMemoryMb": (128, 1_048_576),
    "hostPort": (1, 65535),
    "workers": (1, 32),
    "mlflowMemoryMb": (512, 1_048_576),
    "adminPasswordLength": (24, 128),
    "logMaxFiles": (1, 100),
    "startupTimeoutSeconds": (30, 3600),
    "httpsPort": (1, 65535),
    "httpPort": (1, 65535),
    "maxUploadMb": (1, 1_048_576),
    "proxyMemoryMb": (64, 1_048_576),
    "authCacheTtlSeconds": (0, 300),
    "backupIntervalHours": (1, 720),
    "backupIntervalMinutes": (0, 59),
    "backupKeep": (1, 1000),
    "gcIntervalHours": (1, 720),
    "mlflowReplicas": (0, 16),
}
_FIELD = {  # config key -> dotted path of its StackSettings attribute
    "postgresPasswordLength": "database.password_length",
    "postgresMemoryMb": "database.memory_mb",
    "hostPort": "server.host_port",
    "workers": "server.workers",
    "mlflowMemoryMb": "server.memory_mb",
    "adminPasswordLength": "server.admin_password_length",
    "logMaxFiles": "log_rotation.max_files",
    "startupTimeoutSeconds": "startup_timeout_seconds",
    "httpsPort": "tls.https_port",
    "httpPort": "tls.http_port",
    "maxUploadMb": "tls.max_upload_mb",
    "proxyMemoryMb": "tls.proxy_memory_mb",
    "authCacheTtlSeconds": "server.auth_cache_ttl_seconds",
    "backupIntervalHours": "backups.interval_hours",
    "backupIntervalMinutes": "backups.interval_minutes",
    "backupKeep": "backups.keep",
    "gcIntervalHours": "gc.interval_hours",
    "mlflowReplicas": "cluster.mlflow_replicas",
}
# Bounds are checked on dev; where another key must make room for a bound (32 workers need the
# memory for 32 workers), it is given here.
_ROOM_FOR: dict[str, dict[str, object]] = {
    "workers": {"mlflowMemoryMb": 1_048_576},
    "mlflowMemoryMb": {"workers": 1},
    # Replicas need the swarm engine and artifacts in a bucket.
    "mlflowReplicas": {
        "engine": "swarm",
        "artifactStore": "s3",
        "artifactBucket": "ml-artifacts",
        # A swarm publishes only the front door, on every address.
        "tlsMode": "internal",
        "bindAddress": "0.0.0.0",
        "authEnabled": True,
    },
}


def test_the_bounds_table_covers_every_integer_key() -> None:
    integers = {key for key, declaration in project_file()["config"].items() if declaration["type"] == "integer"}
    assert integers == set(INTEGER_BOUNDS)


_BOUND_CASES = [
    (key, value, accepted)
    for key, (low, high) in INTEGER_BOUNDS.items()
    for value, accepted in ((low - 1, False), (low, True), (high, True), (high + 1, False))
]


@pytest.mark.parametrize(("key", "value", "accepted"), _BOUND_CASES, ids=[f"{k}={v}" for k, v, _ in _BOUND_CASES])
def test_integer_bounds_at_both_ends(key: str, value: int, accepted: bool) -> None:
    low, high = INTEGER_BOUNDS[key]
    install(EngineMocks(), "dev", {**_ROOM_FOR.get(key, {}), key: value})
    if accepted:
        assert attrgetter(_FIELD[key])(load_settings()) == value
    else:
        with pytest.raises(SettingsError) as raised:
            load_settings()
        assert str(raised.value) == (
            f"config key '{key}' has the value {value}; accepted: an integer from {low} to {high}"
        )


@pytest.mark.parametrize(
    ("public_host", "port", "expected"),
    [
        ("::1", 5000, "http://[::1]:5000"),
        ("2001:db8::5", 8443, "http://[2001:db8::5]:8443"),
        ("192.0.2.10", 5000, "http://192.0.2.10:5000"),
        ("mlflow.example.com", 80, "http://mlflow.example.com:80"),
    ],
)
def test_tracking_uri_brackets_ipv6_hosts(public_host: str, port: int, expected: str) -> None:
    install(EngineMocks(), "dev", {"publicHost": public_host, "hostPort": port})
    assert load_settings().tracking_uri == expected


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        # A Host header brackets IPv6: a bare address is written as clients send it.
        (["::1"], ("[::1]",)),
        (["2001:db8::5"], ("[2001:db8::5]",)),
        (["[::1]:5000"], ("[::1]:5000",)),
        (["[2001:db8::5]"], ("[2001:db8::5]",)),
        (["10.0.0.5:8080"], ("10.0.0.5:8080",)),
        (["mlflow.example.com:65535"], ("mlflow.example.com:65535",)),
        (["MLflow.Example.com:1", "[::1]:1"], ("mlflow.example.com:1", "[::1]:1")),
        (["mlflow.example.com:0"], None),
        (["mlflow.example.com:65536"], None),
        (["[::1]:0"], None),
        (["[::1"], None),
        (["[mlflow.example.com]:5000"], None),
        (["2001:db8::zz"], None),
    ],
)
def test_allowed_hosts_ipv6_forms(hosts: list[str], expected: tuple[str, ...] | None) -> None:
    install(EngineMocks(), "dev", {"allowedHosts": hosts})
    if expected is not None:
        assert load_settings().server.allowed_hosts == expected
    else:
        with pytest.raises(SettingsError, match=r"config key 'allowedHosts' has the value .*; each item must be"):
            load_settings()


def test_an_ipv6_loopback_bind_address_needs_no_auth() -> None:
    install(EngineMocks(), "dev", {"bindAddress": "::1"})
    assert load_settings().server.bind_address == "::1"
    install(EngineMocks(), "dev", {"bindAddress": "::"})
    with pytest.raises(SettingsError, match="config key 'bindAddress' has the value '::'"):
        load_settings()


# One bad value per distinct refusal, with the whole message a person reads, literally.
FULL_MESSAGES: list[tuple[str, dict[str, Any], str]] = [
    (
        "dev",
        {"postgresImage": "postgres:latest"},
        "config key 'postgresImage' has the value 'postgres:latest'; accepted: an image "
        "reference such as 'registry.example.com/postgres:17.11', pinned to a tag other than "
        "'latest' or to an @sha256 digest",
    ),
    (
        "dev",
        {"baseImage": "python"},
        "config key 'baseImage' has the value 'python'; accepted: an image reference such as "
        "'registry.example.com/postgres:17.11', pinned to a tag other than 'latest' or to an "
        "@sha256 digest",
    ),
    (
        "dev",
        {"postgresDatabase": "ml-flow"},
        "config key 'postgresDatabase' has the value 'ml-flow'; accepted: a lower-case Postgres "
        "identifier ([a-z_][a-z0-9_]*) of at most 58 characters (the auth database is the name "
        "plus '_auth'), other than postgres, template0, template1",
    ),
    (
        "dev",
        {"postgresUser": "Admin"},
        "config key 'postgresUser' has the value 'Admin'; accepted: a lower-case Postgres "
        "identifier ([a-z_][a-z0-9_]*, at most 63 characters) other than 'postgres' (the "
        "cluster's superuser) and not starting with 'pg_'",
    ),
    (
        "dev",
        {"mlflowVersion": "3.17"},
        "config key 'mlflowVersion' has the value '3.17'; accepted: an exact MLflow release with an "
        "image lock (mlflow/locks/<release>.txt): 3.12.0, 3.17.2; another release, 3.12.0 or newer "
        "(the oldest with --allowed-hosts, MLFLOW_SERVER_ENABLE_JOB_EXECUTION, graceful SIGTERM "
        "handling and the basic-auth cache (authCacheTtlSeconds)), once locked with "
        "`make lock-image MLFLOW_VERSION=<release>`",
    ),
    (
        "dev",
        {"mlflowVersion": "3.17.1"},
        "config key 'mlflowVersion' has the value '3.17.1'; accepted: an exact MLflow release with an "
        "image lock (mlflow/locks/<release>.txt): 3.12.0, 3.17.2; another release, 3.12.0 or newer "
        "(the oldest with --allowed-hosts, MLFLOW_SERVER_ENABLE_JOB_EXECUTION, graceful SIGTERM "
        "handling and the basic-auth cache (authCacheTtlSeconds)), once locked with "
        "`make lock-image MLFLOW_VERSION=<release>`",
    ),
    (
        "dev",
        {"publicHost": "bad host"},
        "config key 'publicHost' has the value 'bad host'; accepted: a DNS host name or an IP address",
    ),
    (
        "dev",
        {"bindAddress": "localhost"},
        "config key 'bindAddress' has the value 'localhost'; accepted: an IPv4 or IPv6 address "
        "such as 127.0.0.1 or 0.0.0.0",
    ),
    (
        "dev",
        {"bindAddress": "0.0.0.0"},
        "config key 'bindAddress' has the value '0.0.0.0'; a non-loopback address publishes the "
        "server beyond this host; accepted while authEnabled is false: a loopback address "
        "(127.0.0.1 or ::1)",
    ),
    (
        "dev",
        {"allowedHosts": "mlflow.example.com"},
        "config key 'allowedHosts' has the value 'mlflow.example.com'; accepted: a list of a "
        "host name or IP address, optionally with ':port' (an IPv6 address with a port in "
        "brackets)",
    ),
    (
        "dev",
        {"allowedHosts": {"host": "x"}},
        "config key 'allowedHosts' has the value {'host': 'x'}; accepted: a list of a host name "
        "or IP address, optionally with ':port' (an IPv6 address with a port in brackets)",
    ),
    (
        "dev",
        {"allowedHosts": ["ok.example.com", "bad host"]},
        "config key 'allowedHosts' has the value 'bad host'; each item must be a host name or IP "
        "address, optionally with ':port' (an IPv6 address with a port in brackets)",
    ),
    (
        "dev",
        {"corsAllowedOrigins": ["ml.example.com"]},
        "config key 'corsAllowedOrigins' has the value 'ml.example.com'; each item must be one "
        "origin such as 'https://ml.example.com' (scheme://host[:port]: no path, no comma)",
    ),
    (
        "dev",
        {"logMaxSize": "10MB"},
        "config key 'logMaxSize' has the value '10MB'; accepted: a size such as '10m' (a whole number, then k, m or g)",
    ),
    (
        "dev",
        {"useWheelhouse": "yes"},
        "config key 'useWheelhouse' has the value 'yes'; accepted: true or false",
    ),
    (
        "dev",
        {"workers": "two"},
        "config key 'workers' has the value 'two'; accepted: an integer from 1 to 32",
    ),
    (
        "prod",
        {"authEnabled": False},
        "config key 'authEnabled' has the value False; the 'prod' stack holds shared data "
        "(environmentKind is not 'dev'): accepted: true",
    ),
    (
        "staging",
        {"protectData": False},
        "config key 'protectData' has the value False; the 'staging' stack holds shared data "
        "(environmentKind is not 'dev'): accepted: true",
    ),
    (
        "prod",
        {"tlsMode": "off"},
        "config key 'tlsMode' has the value 'off'; the 'prod' stack holds shared data and is "
        "reached over a network (environmentKind is not 'dev'): accepted: internal, acme, "
        "provided",
    ),
    (
        "dev",
        {"authEnabled": True, "bindAddress": "0.0.0.0"},
        "config key 'bindAddress' has the value '0.0.0.0'; a non-loopback address sends "
        "passwords across the network; accepted while tlsMode is off: a loopback address "
        "(127.0.0.1 or ::1)",
    ),
    (
        "prod",
        {"httpPort": 443},
        "config key 'httpPort' has the value 443; accepted: a port other than httpsPort (443)",
    ),
    (
        "prod",
        {"tlsMode": "acme", "publicHost": "localhost", "acmeEmail": "ops@example.com"},
        "config key 'publicHost' has the value 'localhost'; tlsMode acme needs a public DNS name "
        "that resolves to this host (not an IP address or localhost); accepted otherwise: "
        "tlsMode internal or provided",
    ),
    (
        "prod",
        {
            "tlsMode": "acme",
            "publicHost": "mlflow.example.com",
            "acmeEmail": "ops@example.com",
            "acmeDirectoryUrl": "http://acme.example.com/directory",
        },
        "config key 'acmeDirectoryUrl' has the value 'http://acme.example.com/directory'; accepted: empty "
        "(Let's Encrypt) or an https:// ACME directory URL",
    ),
    (
        "dev",
        {"workers": 4, "mlflowMemoryMb": 1024},
        "config key 'mlflowMemoryMb' has the value 1024; with workers = 4 the server needs at least 1280 MiB "
        "(256 plus 256 per worker); accepted: that much or more, or fewer workers",
    ),
    (
        "prod",
        {"tlsMode": "acme", "publicHost": "mlflow.localhost", "acmeEmail": "ops@example.com"},
        "config key 'publicHost' has the value 'mlflow.localhost'; tlsMode acme needs a public DNS name "
        "that resolves to this host (not an IP address or localhost); accepted otherwise: "
        "tlsMode internal or provided",
    ),
    (
        "prod",
        {"tlsMode": "acme", "publicHost": "mlflow.example.com", "acmeEmail": "ops"},
        "config key 'acmeEmail' has the value 'ops'; tlsMode acme needs a contact address for "
        "the ACME account: accepted: an e-mail address",
    ),
]


@pytest.mark.parametrize(("stack", "overrides", "message"), FULL_MESSAGES, ids=[m[2][12:40] for m in FULL_MESSAGES])
def test_the_whole_refusal_message(stack: str, overrides: dict[str, Any], message: str) -> None:
    install(EngineMocks(), stack, overrides)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == message
    # The error carries the key and the refused value, as typed, for a caller to act on.
    key = message.split("'")[1]
    assert message.startswith(f"config key '{raised.value.key}' has the value {raised.value.value!r}; ")
    assert raised.value.key == key


def test_a_key_missing_from_the_configuration_is_named() -> None:
    install(EngineMocks(), "dev", {})
    config = {key: value for key, value in stack_config("dev").items() if key != "workers"}
    pulumi.runtime.set_all_config(runtime_config(config))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "config key 'workers' has the value None; it is missing; declare it in Pulumi.yaml with a default"
    )
    assert (raised.value.key, raised.value.value) == ("workers", None)


@pytest.mark.parametrize(("raw", "expected"), [("TRUE", True), ("False", False), (" true", None)])
def test_booleans_ignore_case_only(raw: str, expected: bool | None) -> None:
    install(EngineMocks(), "dev", {"useWheelhouse": raw})
    if expected is None:
        with pytest.raises(SettingsError):
            load_settings()
    else:
        assert load_settings().server.use_wheelhouse is expected


@pytest.mark.parametrize("value", ["  mlflow.example.com ", "mlflow.example.com\n"])
def test_strings_are_trimmed(value: str) -> None:
    install(EngineMocks(), "dev", {"publicHost": value})
    assert load_settings().server.public_host == "mlflow.example.com"


def test_the_stack_and_project_come_from_pulumi() -> None:
    install(EngineMocks(), "staging", {})
    settings = load_settings()
    assert (settings.stack, settings.project) == ("staging", "mlflow-platform")


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("https://ui.example.com", True),
        ("http://ui.example.com:8080", True),
        ("https://ui.example.com:1", True),
        ("https://ui.example.com:65535", True),
        ("https://ui.example.com:0", False),
        ("https://ui.example.com:65536", False),
        ("https://*.example.com", True),  # MLflow's subdomain wildcard
        ("https://*.a.example.com", True),
        ("https://*.", False),
        ("http://[fd00::1]:5000", True),
        ("http://[::1]", True),
        ("http://[fd00::1:2]", True),
        ("http://[1.2.3.4]", False),  # brackets hold an IPv6 address only
        ("http://[fd00::zz]", False),
        ("https://bad_host.example.com", False),
        ("ftp://ui.example.com", False),
    ],
)
def test_each_cors_origin_is_one_origin(origin: str, accepted: bool) -> None:
    install(EngineMocks(), "dev", {"corsAllowedOrigins": [origin]})
    if accepted:
        assert load_settings().server.cors_allowed_origins == (origin,)
        return
    with pytest.raises(SettingsError, match="config key 'corsAllowedOrigins' has the value"):
        load_settings()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"tlsPrivateKey": "set"},
            "config key 'tlsCertificate' has the value ''; tlsMode provided needs it: "
            "accepted: the PEM certificate chain, leaf first",
        ),
        (
            {"tlsCertificate": "set"},
            "config key 'tlsPrivateKey' has the value ''; tlsMode provided needs it: "
            "accepted: the PEM private key, set with --secret",
        ),
    ],
)
def test_provided_mode_names_the_missing_half_in_full(given: dict[str, str], message: str) -> None:
    install(EngineMocks(), "staging", {"tlsMode": "provided", **given})
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == message


def test_an_acme_ca_certificate_that_is_no_pem_is_named_twice() -> None:
    install(EngineMocks(), "prod", {**_ACME, "acmeCaCertificate": "not a pem"})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    # The parser's own reason follows in brackets, in cryptography's words.
    assert str(raised.value).startswith(
        "config key 'acmeCaCertificate' has the value '<PEM>'; accepted: PEM certificates; "
        "acmeCaCertificate: <not PEM>; accepted: PEM certificates ("
    )


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        ({"secretsRotation": "r" * 257}, "accepted: any string of at most 256 characters"),
        (
            {"environmentKind": "prod"},
            "accepted: 'shared' (the default: auth and volume protection required) or 'dev' (a personal stack)",
        ),
        (
            {"gcOlderThan": "30 days"},
            "accepted: an age such as '30d', '12h' or '1d12h30m' (whole days, hours, minutes, seconds, in that order)",
        ),
    ],
)
def test_free_form_settings_are_refused_saying_what_is_accepted(overrides: dict[str, str], accepted: str) -> None:
    [(key, value)] = overrides.items()
    install(EngineMocks(), "dev", overrides)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == f"config key '{key}' has the value {value!r}; {accepted}"


def test_a_rotation_label_of_256_characters_is_accepted() -> None:
    install(EngineMocks(), "dev", {"secretsRotation": "r" * 256})
    assert load_settings().secrets_rotation == "r" * 256


@pytest.mark.parametrize(
    ("engine", "overrides", "expected"),
    [("standalone", {}, 1), ("swarm", {}, 2), ("swarm", {"mlflowReplicas": 3}, 3), ("swarm", {"mlflowReplicas": 1}, 1)],
)
def test_mlflow_replicas_default_by_engine(engine: str, overrides: dict[str, Any], expected: int) -> None:
    swarm = {"engine": "swarm", "artifactStore": "s3", "artifactBucket": "ml-artifacts"} if engine == "swarm" else {}
    install(EngineMocks(), "prod", {**swarm, **overrides})
    settings = load_settings()
    assert settings.cluster.replicas == expected
    assert settings.context().engine == engine
    assert settings.context().data_node_label == ("mlflow-platform.postgres=true" if engine == "swarm" else "")


def test_a_swarm_context_carries_the_registry_login() -> None:
    install(
        EngineMocks(),
        "prod",
        {
            **_SWARM_ONE,
            "imageRegistry": "registry.example:5000/ml",
            "imageRegistryUsername": "ci",
            "imageRegistryPassword": "p" * 30,
        },
    )
    registry = load_settings().context().registry
    assert registry is not None
    assert (registry.server, registry.host, registry.username, registry.password) == (
        "registry.example:5000/ml",
        "registry.example:5000",
        "ci",
        "p" * 30,
    )
    # Kept out of repr, like every secret setting.
    assert "p" * 30 not in repr(registry)
