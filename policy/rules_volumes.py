"""The rule that keeps the data of a shared stack: its volumes are protected from destroy and replacement.

A module of its own: the only rule on volumes, judged through the `protect` option alone (the engine hands
a policy no `retainOnDelete`, see readers.py).
"""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
)

from .identify import VOLUME
from .readers import _SHARED_BECAUSE, ENVIRONMENT_KIND_SCHEMA, _field, is_shared, stack_of


def _validate_volume_protected(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != VOLUME or not is_shared(args.get_config()):
        return
    if not args.opts.protect:
        name = _field(args.props, "name")
        report(
            f"volume {name!r} of the shared stack '{stack_of(args.urn)}' is not protected: a destroy or a "
            f"replacement would delete it with the data in it ({_SHARED_BECAUSE}).",
            None,
        )


protected_stack_volumes = ResourceValidationPolicy(
    name="protected-stack-volumes",
    description=(
        "In every shared stack (any stack whose pack config does not set environmentKind: dev) every volume "
        "(the Postgres data and the MLflow artifacts) is protected, so neither `pulumi destroy` nor a "
        "replacement deletes experiment data."
    ),
    validate=_validate_volume_protected,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
    config_schema=ENVIRONMENT_KIND_SCHEMA,
    remediation_steps="Set `protectData: true` in the stack's config file.",
)
