"""Bad configuration is refused with the key, the value and what is accepted, before any resource."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.settings import SettingsError, load_settings
from tests.harness import EngineMocks, install, run_program
from tests.stack_config import STACKS, project_file, runtime_config, stack_config

# (stack, overrides, key named in the error, value shown in the error, words from what is accepted)
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
    ("dev", {"mlflowVersion": "2.22.0"}, "mlflowVersion", "'2.22.0'", "an exact MLflow 3.x release"),
    ("dev", {"mlflowVersion": "3.17"}, "mlflowVersion", "'3.17'", "an exact MLflow 3.x release"),
    ("dev", {"postgresDatabase": "ml-flow"}, "postgresDatabase", "'ml-flow'", "a lower-case Postgres identifier"),
    ("dev", {"postgresUser": "Admin"}, "postgresUser", "'Admin'", "a lower-case Postgres identifier"),
    ("dev", {"postgresPasswordLength": 16}, "postgresPasswordLength", "16", "an integer from 24 to 128"),
    ("dev", {"adminPasswordLength": 12}, "adminPasswordLength", "12", "an integer from 24 to 128"),
    ("dev", {"postgresMemoryMb": 64}, "postgresMemoryMb", "64", "an integer from 128"),
    ("dev", {"mlflowMemoryMb": -1}, "mlflowMemoryMb", "-1", "an integer from 256"),
    ("dev", {"useWheelhouse": "yes"}, "useWheelhouse", "'yes'", "true or false"),
    ("dev", {"allowedHosts": "mlflow.example.com"}, "allowedHosts", "'mlflow.example.com'", "a list of"),
    ("dev", {"allowedHosts": ["ok.example.com", "bad host"]}, "allowedHosts", "'bad host'", "a host name"),
    ("dev", {"corsAllowedOrigins": ["ml.example.com"]}, "corsAllowedOrigins", "'ml.example.com'", "an origin"),
    ("dev", {"logMaxSize": "10MB"}, "logMaxSize", "'10MB'", "a size such as '10m'"),
    ("dev", {"logMaxFiles": 0}, "logMaxFiles", "0", "an integer from 1 to 100"),
    ("dev", {"startupTimeoutSeconds": 5}, "startupTimeoutSeconds", "5", "an integer from 30 to 3600"),
    ("prod", {"authEnabled": False}, "authEnabled", "False", "the 'prod' stack holds shared data: accepted: true"),
    ("staging", {"protectData": False}, "protectData", "False", "the 'staging' stack holds shared data"),
    ("dev", {"authEnabled": "maybe"}, "authEnabled", "'maybe'", "true or false"),
]


@pytest.mark.parametrize(
    ("stack", "overrides", "key", "shown", "accepted"),
    BAD_SETTINGS,
    ids=[f"{row[0]}-{row[2]}={row[1][row[2]]!r}" for row in BAD_SETTINGS],
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
    assert raised.value.key == key
    assert mocks.registrations == {}


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


@settings(max_examples=40, deadline=None)
@given(port=st.integers(min_value=-100_000, max_value=200_000))
def test_host_port_range(port: int) -> None:
    install(EngineMocks(), "dev", {"hostPort": port})
    if 1 <= port <= 65535:
        assert load_settings().host_port == port
    else:
        with pytest.raises(SettingsError, match=f"'hostPort' has the value {port};"):
            load_settings()


# Every bounded integer key and its accepted range, written out here (not imported
# from the code under test): a changed bound must change this table too.
INTEGER_BOUNDS: dict[str, tuple[int, int]] = {
    "postgresPasswordLength": (24, 128),
    "postgresMemoryMb": (128, 1_048_576),
    "hostPort": (1, 65535),
    "workers": (1, 32),
    "mlflowMemoryMb": (256, 1_048_576),
    "adminPasswordLength": (24, 128),
    "logMaxFiles": (1, 100),
    "startupTimeoutSeconds": (30, 3600),
}
_FIELD = {  # config key -> StackSettings attribute
    "postgresPasswordLength": "postgres_password_length",
    "postgresMemoryMb": "postgres_memory_mb",
    "hostPort": "host_port",
    "workers": "workers",
    "mlflowMemoryMb": "mlflow_memory_mb",
    "adminPasswordLength": "admin_password_length",
    "logMaxFiles": "log_max_files",
    "startupTimeoutSeconds": "startup_timeout_seconds",
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
    install(EngineMocks(), "dev", {key: value})
    if accepted:
        assert getattr(load_settings(), _FIELD[key]) == value
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
    ("hosts", "accepted"),
    [
        (["::1"], False),  # a Host header brackets IPv6: a bare address never matches
        (["2001:db8::5"], False),
        (["[::1]:5000"], True),
        (["[2001:db8::5]"], True),
        (["10.0.0.5:8080"], True),
        (["mlflow.example.com:65535"], True),
        (["mlflow.example.com:1", "[::1]:1"], True),
        (["mlflow.example.com:0"], False),
        (["mlflow.example.com:65536"], False),
        (["[::1]:0"], False),
        (["[::1"], False),
        (["[mlflow.example.com]:5000"], False),
        (["2001:db8::zz"], False),
    ],
)
def test_allowed_hosts_ipv6_forms(hosts: list[str], accepted: bool) -> None:
    install(EngineMocks(), "dev", {"allowedHosts": hosts})
    if accepted:
        assert load_settings().allowed_hosts == tuple(hosts)
    else:
        with pytest.raises(SettingsError, match=r"config key 'allowedHosts' has the value .*; each item must be"):
            load_settings()


def test_an_ipv6_loopback_bind_address_needs_no_auth() -> None:
    install(EngineMocks(), "dev", {"bindAddress": "::1"})
    assert load_settings().bind_address == "::1"
    install(EngineMocks(), "dev", {"bindAddress": "::"})
    with pytest.raises(SettingsError, match="config key 'bindAddress' has the value '::'"):
        load_settings()


# One bad value per distinct refusal, with the whole message a person reads, literally.
FULL_MESSAGES: list[tuple[str, dict[str, Any], str]] = [
    (
        "dev",
        {"postgresImage": "postgres:latest"},
        "config key 'postgresImage' has the value 'postgres:latest'; accepted: an image reference such as "
        "'registry.example.com/postgres:17.6', pinned to a tag other than 'latest' or to an @sha256 digest",
    ),
    (
        "dev",
        {"baseImage": "python"},
        "config key 'baseImage' has the value 'python'; accepted: an image reference such as "
        "'registry.example.com/postgres:17.6', pinned to a tag other than 'latest' or to an @sha256 digest",
    ),
    (
        "dev",
        {"postgresDatabase": "ml-flow"},
        "config key 'postgresDatabase' has the value 'ml-flow'; accepted: a lower-case Postgres identifier "
        "([a-z_][a-z0-9_]*, at most 63 characters)",
    ),
    (
        "dev",
        {"postgresUser": "Admin"},
        "config key 'postgresUser' has the value 'Admin'; accepted: a lower-case Postgres identifier "
        "([a-z_][a-z0-9_]*, at most 63 characters)",
    ),
    (
        "dev",
        {"mlflowVersion": "3.17"},
        "config key 'mlflowVersion' has the value '3.17'; accepted: an exact MLflow 3.x release such as '3.17.2'",
    ),
    (
        "dev",
        {"publicHost": "bad host"},
        "config key 'publicHost' has the value 'bad host'; accepted: a DNS host name or an IP address",
    ),
    (
        "dev",
        {"bindAddress": "localhost"},
        "config key 'bindAddress' has the value 'localhost'; accepted: an IPv4 or IPv6 address such as "
        "127.0.0.1 or 0.0.0.0",
    ),
    (
        "dev",
        {"bindAddress": "0.0.0.0"},
        "config key 'bindAddress' has the value '0.0.0.0'; a non-loopback address publishes the server beyond "
        "this host; accepted while authEnabled is false: a loopback address (127.0.0.1 or ::1)",
    ),
    (
        "dev",
        {"allowedHosts": "mlflow.example.com"},
        "config key 'allowedHosts' has the value 'mlflow.example.com'; accepted: a list of a host name or IP "
        "address as a Host header carries it (IPv6 in brackets), optionally with ':port'",
    ),
    (
        "dev",
        {"allowedHosts": {"host": "x"}},
        "config key 'allowedHosts' has the value {'host': 'x'}; accepted: a list of a host name or IP "
        "address as a Host header carries it (IPv6 in brackets), optionally with ':port'",
    ),
    (
        "dev",
        {"allowedHosts": ["ok.example.com", "bad host"]},
        "config key 'allowedHosts' has the value 'bad host'; each item must be a host name or IP address as a "
        "Host header carries it (IPv6 in brackets), optionally with ':port'",
    ),
    (
        "dev",
        {"corsAllowedOrigins": ["ml.example.com"]},
        "config key 'corsAllowedOrigins' has the value 'ml.example.com'; each item must be an origin such as "
        "'https://ml.example.com' (no path)",
    ),
    (
        "dev",
        {"logMaxSize": "10MB"},
        "config key 'logMaxSize' has the value '10MB'; accepted: a size such as '10m' (a whole number, then k, m or g)",
    ),
    ("dev", {"useWheelhouse": "yes"}, "config key 'useWheelhouse' has the value 'yes'; accepted: true or false"),
    ("dev", {"workers": "two"}, "config key 'workers' has the value 'two'; accepted: an integer from 1 to 32"),
    (
        "prod",
        {"authEnabled": False},
        "config key 'authEnabled' has the value False; the 'prod' stack holds shared data: accepted: true",
    ),
    (
        "staging",
        {"protectData": False},
        "config key 'protectData' has the value False; the 'staging' stack holds shared data: accepted: true",
    ),
]


@pytest.mark.parametrize(("stack", "overrides", "message"), FULL_MESSAGES, ids=[m[2][12:40] for m in FULL_MESSAGES])
def test_the_whole_refusal_message(stack: str, overrides: dict[str, Any], message: str) -> None:
    install(EngineMocks(), stack, overrides)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == message
    key = message.split("'")[1]
    assert (raised.value.key, raised.value.value) == (key, raised.value.value)


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
        assert load_settings().use_wheelhouse is expected


@pytest.mark.parametrize("value", ["  mlflow.example.com ", "mlflow.example.com\n"])
def test_strings_are_trimmed(value: str) -> None:
    install(EngineMocks(), "dev", {"publicHost": value})
    assert load_settings().public_host == "mlflow.example.com"


def test_the_stack_and_project_come_from_pulumi() -> None:
    install(EngineMocks(), "staging", {})
    settings = load_settings()
    assert (settings.stack, settings.project) == ("staging", "mlflow-platform")
