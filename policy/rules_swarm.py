"""The rules on swarm services (engine: swarm), as the container rules judge containers.

A service is judged by its task spec: the same hardening as a container where a swarm can apply
it, its secret files as 0400 swarm secrets of its own uid, and Postgres unpublished. Secrets and
configs themselves are judged by container-env-no-secret-values (rules_secrets.py): a swarm
secret's `data` carries a secret by design, a config's never may.

Not checked, because a 20.10 swarm service cannot have it: `no-new-privileges` (SwarmKit's
Privileges gained NoNewPrivileges in Docker 27, API 1.46, and pulumi-docker's Service has no
input for it). Every capability dropped, a non-root user and images without setuid or
file-capability binaries stand in for it (README "Swarm").
"""

from __future__ import annotations

import re
from typing import Any, Final

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
)

from .identify import SERVICE, is_postgres
from .readers import UNKNOWN, _entries, _field, _number

# Without one of these swarm does not replace a task that exited.
RESTART_CONDITIONS: Final = frozenset({"any", "on-failure"})
SECRET_FILE_MODE: Final = 0o400
# components/swarm.py's task-limit shell: `/bin/sh -c '... ulimit -u N ...; exec "$@"' sh <entrypoint>`.
_TASK_LIMIT = re.compile(r"ulimit -u (\d+)\b.*exec \"\$@\"")


def _spec(props: Any) -> Any:
    return _field(_field(props, "taskSpec"), "containerSpec")


def _hardening_problems(props: Any) -> list[str]:
    """What a service leaves out of the hardening its tasks must have; unknown values are not judged."""
    spec = _spec(props)
    problems: list[str] = []
    user = _field(spec, "user")
    if user is not UNKNOWN and (not isinstance(user, str) or user.split(":", 1)[0] in ("", "0", "root")):
        problems.append("taskSpec.containerSpec.user must be a non-root uid:gid (the task limit binds no root)")
    drops = _field(spec, "capDrops")
    if drops is not UNKNOWN and "ALL" not in [item for _, item in _entries(drops)]:
        problems.append('taskSpec.containerSpec.capDrops must drop "ALL"')
    if _field(spec, "readOnly") is not True and _field(spec, "readOnly") is not UNKNOWN:
        problems.append("taskSpec.containerSpec.readOnly must be true (a read-only root file system)")
    if _field(spec, "healthcheck") is None:
        problems.append("taskSpec.containerSpec.healthcheck is missing: swarm cannot tell a hung task from a live one")
    limits = _field(_field(_field(props, "taskSpec"), "resources"), "limits")
    memory = _field(limits, "memoryBytes")
    if memory is not UNKNOWN and not _number(memory):
        problems.append("taskSpec.resources.limits.memoryBytes is missing: one leaking task can take the node")
    condition = _field(_field(_field(props, "taskSpec"), "restartPolicy"), "condition")
    if condition is not UNKNOWN and condition not in RESTART_CONDITIONS:
        problems.append(f"taskSpec.restartPolicy.condition is {condition!r}; accepted: any, on-failure")
    commands = _field(spec, "commands")
    if commands is not UNKNOWN:
        words = [item for _, item in _entries(commands) if isinstance(item, str)]
        if len(words) < 3 or words[:2] != ["/bin/sh", "-c"] or not _TASK_LIMIT.search(words[2]):
            problems.append(
                "taskSpec.containerSpec.commands must start the entrypoint under the task-limit shell "
                "(`/bin/sh -c 'ulimit -u N ...; exec \"$@\"'`): a service has no ulimits of its own"
            )
    log = _field(_field(props, "taskSpec"), "logDriver")
    if log is not UNKNOWN and not isinstance(_field(_field(log, "options"), "max-size"), str):
        problems.append("taskSpec.logDriver must rotate (json-file with max-size and max-file)")
    uid = user.split(":", 1)[0] if isinstance(user, str) else None
    for index, secret in _entries(_field(spec, "secrets")):
        mode, owner = _number(_field(secret, "fileMode")), _field(secret, "fileUid")
        if mode != SECRET_FILE_MODE:
            problems.append(f"taskSpec.containerSpec.secrets[{index}].fileMode must be 0400 (256), not {mode}")
        if uid is not None and owner is not UNKNOWN and owner != uid:
            problems.append(f"taskSpec.containerSpec.secrets[{index}].fileUid must be the task's uid {uid}: {owner}")
    return problems


def _validate_service_hardening(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != SERVICE:
        return
    for problem in _hardening_problems(args.props):
        report(problem, None)


service_hardening = ResourceValidationPolicy(
    name="service-hardening",
    description=(
        "Every swarm service runs as a non-root user with every capability dropped, a read-only root, a "
        "memory limit, a health check, a restart condition, rotated logs, its entrypoint under the "
        "RLIMIT_NPROC shell, and its secret files 0400 and its own uid's. No-new-privileges cannot be "
        "set on a Docker 20.10 swarm service and is not required."
    ),
    validate=_validate_service_hardening,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    remediation_steps="Declare services through components/swarm.py's SwarmTarget, which applies all of it.",
)


def _validate_postgres_service(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != SERVICE or not is_postgres(args.props):
        return
    ports = [port for _, port in _entries(_field(_field(args.props, "endpointSpec"), "ports"))]
    if ports:
        # A swarm service publishes on every interface of its node: there is no loopback-only here.
        report(
            f"the Postgres service publishes {len(ports)} port(s) on every interface of its node; "
            "clients reach it on the stack's internal database network only.",
            None,
        )


postgres_service_not_published = ResourceValidationPolicy(
    name="postgres-service-not-published",
    description="The Postgres swarm service publishes no port: swarm would open it on every interface of its node.",
    validate=_validate_postgres_service,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
    remediation_steps="Remove endpointSpec.ports from the Postgres service.",
)
