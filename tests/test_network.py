"""StackNetwork: the stack's own bridge network, alone and in every stack."""

from __future__ import annotations

import pytest

from components.network import StackNetwork
from tests.conftest import NETWORK
from tests.expected import STACKS, UNIT, built, children, labels, network_name, registered_outputs, unit_context
from tests.harness import declaration


def _network(stack: str) -> dict[str, object]:
    # Named after the stack, so two stacks on one engine never share a network.
    return {"name": network_name(stack), "driver": "bridge", "labels": labels(stack, "network")}


def test_the_network_alone() -> None:
    mocks, _ = built(lambda: StackNetwork("mlflow-network", {"stack": unit_context()}))
    assert children(mocks, "mlflow-network") == {"mlflow-network-network": NETWORK}
    assert mocks.one(NETWORK).inputs == _network(UNIT)
    assert registered_outputs(mocks, "mlflow-network") == {"name": "mlflow-platform-unit"}


@pytest.mark.parametrize("stack", STACKS)
def test_the_network_of_every_stack(stack: str) -> None:
    mocks = declaration(stack).mocks
    assert mocks.one(NETWORK).inputs == _network(stack)
