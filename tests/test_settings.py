"""Bad configuration is refused with the key, the value and what is accepted, before any resource."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.settings import SettingsError, load_settings
from tests.harness import EngineMocks, install, run_program
from tests.stack_config import STACKS, project_file, stack_config

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
