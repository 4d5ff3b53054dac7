"""StackNetwork: the stack's front network and its internal database network, alone and in every stack."""

from __future__ import annotations

import pytest

from components.network import StackNetwork
from tests.conftest import NETWORK
from tests.expected import STACKS, UNIT, built, children, labels, network_name, registered_outputs, unit_context
from tests.harness import declaration


def _front(stack: str) -> dict[str, object]:
    # Named after the stack, so two stacks on one engine never share a network; the inputs it
    # always had (no `internal`), so an existing stack keeps it.
    return {"name": network_name(stack), "driver": "bridge", "labels": labels(stack, "network")}


def _database(stack: str) -> dict[str, object]:
    # Internal: no gateway, nothing leaves its subnet; Postgres is on it alone with its clients.
    return {
        "name": f"{network_name(stack)}-db",
        "driver": "bridge",
        "internal": True,
        "labels": labels(stack, "network"),
    }


def test_the_networks_alone() -> None:
    mocks, _ = built(lambda: StackNetwork("mlflow-network", {"stack": unit_context()}))
    assert children(mocks, "mlflow-network") == {"mlflow-network-network": NETWORK, "mlflow-network-database": NETWORK}
    assert mocks.one(NETWORK, "mlflow-network-network").inputs == _front(UNIT)
    assert mocks.one(NETWORK, "mlflow-network-database").inputs == _database(UNIT)
    assert registered_outputs(mocks, "mlflow-network") == {
        "name": "mlflow-platform-unit",
        "database_name": "mlflow-platform-unit-db",
    }


@pytest.mark.parametrize("stack", STACKS)
def test_the_networks_of_every_stack(stack: str) -> None:
    mocks = declaration(stack).mocks
    assert {r.name: r.inputs for r in mocks.of_type(NETWORK)} == {
        "mlflow-network-network": _front(stack),
        "mlflow-network-database": _database(stack),
    }
