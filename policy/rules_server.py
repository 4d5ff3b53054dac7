"""The rules on the MLflow tracking server as the stack exposes it: authenticated in every shared stack and
wherever it is public, and publishing no port of its own once the stack is shared or anything is public.

Stack policies: whether the server is reachable depends on other resources (the image it runs, a public
front door), so each sees every resource of the stack at once.
"""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from .identify import CONTAINER, _mlflow_servers, mlflow_auth_enabled
from .readers import _SHARED_BECAUSE, ENVIRONMENT_KIND_SCHEMA, _published_ports, is_shared, public_bindings, stack_of


def _validate_shared_stack_auth(args: StackValidationArgs, report: ReportViolation) -> None:
    if not is_shared(args.get_config()):
        return
    for server in _mlflow_servers(args.resources):
        if not mlflow_auth_enabled(server.props):
            report(
                f"the tracking server {server.name} of the shared stack '{stack_of(server.urn)}' runs without "
                f"`--app-name basic-auth`: anyone who reaches it can read and delete experiments ({_SHARED_BECAUSE}).",
                server.urn,
            )


protected_stack_mlflow_auth = StackValidationPolicy(
    name="protected-stack-mlflow-auth",
    description=(
        "In every shared stack (any stack whose pack config does not set environmentKind: dev) the MLflow "
        "tracking server, recognised by the image built from mlflow/, by `mlflow server`'s arguments or by "
        "MLflow's server application under gunicorn or uvicorn, runs with authentication (basic-auth)."
    ),
    validate=_validate_shared_stack_auth,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
    config_schema=ENVIRONMENT_KIND_SCHEMA,
    remediation_steps="Set `authEnabled: true` in the stack's config file.",
)


def _validate_public_needs_auth(args: StackValidationArgs, report: ReportViolation) -> None:
    # A front door that is public forwards to the server: it is reachable through that too.
    front_doors = [
        f"{resource.name} ({'; '.join(public_bindings(resource.props))})"
        for resource in args.resources
        if resource.resource_type == CONTAINER
        and public_bindings(resource.props)
        and resource.urn not in {server.urn for server in _mlflow_servers(args.resources)}
    ]
    for server in _mlflow_servers(args.resources):
        if mlflow_auth_enabled(server.props):
            continue
        bindings = public_bindings(server.props) + front_doors
        if bindings:
            report(
                f"the tracking server {server.name} is reachable beyond this host through {'; '.join(bindings)} "
                "without `--app-name basic-auth`.",
                server.urn,
            )


mlflow_public_needs_auth = StackValidationPolicy(
    name="mlflow-public-needs-auth",
    description=(
        "The MLflow tracking server is not published on a non-loopback address (or the host network) "
        "without authentication."
    ),
    validate=_validate_public_needs_auth,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
    remediation_steps="Set `authEnabled: true`, or keep `bindAddress` on 127.0.0.1.",
)


def _validate_server_behind_proxy(args: StackValidationArgs, report: ReportViolation) -> None:
    public = sorted(
        resource.name
        for resource in args.resources
        if resource.resource_type == CONTAINER and public_bindings(resource.props)
    )
    if not public:
        return
    for server in _mlflow_servers(args.resources):
        published = _published_ports(server.props)
        if published:
            report(
                f"the stack publishes on a non-loopback address ({', '.join(public)}), so the tracking server "
                f"{server.name} must publish no port, but it publishes {', '.join(published)}: the front door "
                "(the TLS proxy) is the only way in.",
                server.urn,
            )


mlflow_behind_proxy = StackValidationPolicy(
    name="mlflow-behind-proxy",
    description=(
        "When a stack publishes anything on a non-loopback address, the MLflow tracking server container "
        "publishes no port at all: the proxy in front of it is the only way in."
    ),
    validate=_validate_server_behind_proxy,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    remediation_steps="Let the front door (the TLS proxy) publish the public port and drop the server's `ports`.",
)


def _validate_shared_stack_tls(args: StackValidationArgs, report: ReportViolation) -> None:
    if not is_shared(args.get_config()):
        return
    for server in _mlflow_servers(args.resources):
        published = _published_ports(server.props)
        if published:
            report(
                f"the tracking server {server.name} of the shared stack '{stack_of(server.urn)}' publishes "
                f"{', '.join(published)}: plain HTTP, where every request carries a password; only the TLS proxy "
                f"may publish a port ({_SHARED_BECAUSE}).",
                server.urn,
            )


shared_stack_tls = StackValidationPolicy(
    name="shared-stack-tls",
    description=(
        "In every shared stack (any stack whose pack config does not set environmentKind: dev) the MLflow "
        "tracking server publishes no port: clients reach it only through the TLS proxy."
    ),
    validate=_validate_shared_stack_tls,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
    config_schema=ENVIRONMENT_KIND_SCHEMA,
    remediation_steps="Set `tlsMode` to internal, acme or provided in the stack's config file.",
)
