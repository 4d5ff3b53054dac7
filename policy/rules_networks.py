"""The rule on where Postgres is reachable from inside the Docker host: in a shared stack, only on internal networks.

A stack policy: whether a network is internal is an input of the network resource, not of the container, so the
rule reads the container's `networksAdvanced` (and `networkMode`) against the networks the stack declares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ReportViolation,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from .identify import CONTAINER, NETWORK, is_postgres
from .readers import _SHARED_BECAUSE, ENVIRONMENT_KIND_SCHEMA, UNKNOWN, _entries, _field, is_shared, stack_of

# What an internal network is not: Docker routes it out, and anything else on it reaches port 5432.
_NOT_INTERNAL: Final = "which is not `internal` (Docker routes it out, and every container on it reaches port 5432)"


def _is_internal(network: PolicyResource) -> bool:
    return _field(network.props, "internal") is True


def postgres_network_problems(container: PolicyResource, networks: Sequence[PolicyResource]) -> list[str]:
    """What puts a Postgres container on a network that is not one of the stack's internal networks."""
    props = container.props
    mode = _field(props, "networkMode")
    attached = [item for _, item in _entries(_field(props, "networksAdvanced"))]
    if mode == "none" and not attached:
        return []
    problems: list[str] = []
    if mode is UNKNOWN:
        problems.append("has a `networkMode` not known during preview")
    elif isinstance(mode, str) and mode and mode != "none":
        problems.append(f"has `networkMode` {mode!r}, {_NOT_INTERNAL}")
    if not attached and not mode:
        problems.append(f"joins no network of the stack, so Docker puts it on its default bridge, {_NOT_INTERNAL}")
    by_name: Mapping[str, PolicyResource] = {
        name: network for network in networks if isinstance(name := _field(network.props, "name"), str)
    }
    # The networks the entries' values come from: what an entry not known yet during preview is judged by.
    linked = [
        dependency
        for dependency in container.property_dependencies.get("networksAdvanced", [])
        if dependency.resource_type == NETWORK
    ]
    for index, entry in enumerate(attached):
        name = _field(entry, "name") if entry is not UNKNOWN else UNKNOWN
        if name is UNKNOWN:
            if not linked or not all(_is_internal(network) for network in linked):
                problems.append(
                    f"joins networksAdvanced[{index}], a network not known during preview and not one of the "
                    "stack's internal networks"
                )
        elif not isinstance(name, str) or name not in by_name:
            problems.append(f"joins the network {name!r}, which the stack does not declare, so it may not be internal")
        elif not _is_internal(by_name[name]):
            problems.append(f"joins the network {name!r}, {_NOT_INTERNAL}")
    return problems


def _validate_postgres_internal_networks(args: StackValidationArgs, report: ReportViolation) -> None:
    if not is_shared(args.get_config()):
        return
    networks = [resource for resource in args.resources if resource.resource_type == NETWORK]
    for container in args.resources:
        if container.resource_type != CONTAINER or not is_postgres(container.props):
            continue
        for problem in postgres_network_problems(container, networks):
            report(
                f"the Postgres container {container.name} of the shared stack '{stack_of(container.urn)}' {problem}; "
                f"Postgres belongs on the stack's internal database network alone ({_SHARED_BECAUSE}).",
                container.urn,
            )


postgres_internal_networks = StackValidationPolicy(
    name="postgres-internal-networks",
    description=(
        "In every shared stack (any stack whose pack config does not set environmentKind: dev) every network the "
        "Postgres container is on is a network of the stack declared `internal`: no route out, and only the "
        "workloads that talk to Postgres are on it (not the internet-facing proxy)."
    ),
    validate=_validate_postgres_internal_networks,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=ENVIRONMENT_KIND_SCHEMA,
    remediation_steps=(
        "Attach the Postgres container only to the stack's database network (`internal=True`); the workloads that "
        "connect to Postgres join that network too."
    ),
)
