"""The rules on each container and image by itself: Postgres unpublished, a healthcheck, a restart policy,
pinned image references, a task limit, and in a shared stack images pinned by digest.

Resource policies: the engine calls each once per resource, and they judge that resource alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
)

from .identify import CONTAINER, IMAGE, REMOTE_IMAGE, is_one_shot, is_postgres
from .readers import _SHARED_BECAUSE, ENVIRONMENT_KIND_SCHEMA, UNKNOWN, _entries, _field, _number, is_shared, stack_of

POSTGRES_PORT: Final = 5432
# Without one of these Docker never restarts the container after a crash or a reboot.
RESTART_POLICIES: Final = frozenset({"always", "unless-stopped", "on-failure"})
_IMAGE_ID = re.compile(r"^sha256:[a-f0-9]{64}$")
_DIGEST_SUFFIX = re.compile(r"@sha256:[a-f0-9]{64}$")
# The stack config key each image input comes from (components/settings/), so a refusal names what to change.
# The pack cannot read the stack's config; these are the program's only pulled image and build arguments.
IMAGE_CONFIG_KEYS: Final = {
    "name": "postgresImage",
    "build.args.BASE_IMAGE": "baseImage",
    "build.args.CADDY_IMAGE": "proxyImage",
}


def image_pin_problem(reference: str) -> str | None:
    """None when the reference names one immutable image or a pinned tag; otherwise what is wrong with it."""
    reference = reference.strip()
    if not reference:
        return "is empty"
    if _IMAGE_ID.match(reference) or _DIGEST_SUFFIX.search(reference):
        return None
    # The tag follows the last ':' of the last path component ("registry:5000/postgres" has no tag).
    last_component = reference.rsplit("/", 1)[-1]
    if ":" not in last_component:
        return "has no tag, so Docker resolves it to 'latest'"
    tag = last_component.rsplit(":", 1)[1]
    if tag == "latest":
        return "uses the moving 'latest' tag"
    if not tag:
        return "has an empty tag"
    return None


def is_digest_pinned(reference: str) -> bool:
    """The reference names one immutable image: an image ID, or any reference ending in @sha256:<digest>."""
    reference = reference.strip()
    return bool(_IMAGE_ID.match(reference) or _DIGEST_SUFFIX.search(reference))


def _image_references(args: ResourceValidationArgs) -> list[tuple[str, Any]]:
    """(input, reference) of every image a resource runs, pulls or builds from."""
    props = args.props
    references: list[tuple[str, Any]] = []
    if args.resource_type == CONTAINER:
        # Usually an image ID or digest taken from an image resource; while that resource is still
        # to be created the value is unknown, and the image resource's own reference is checked instead.
        references.append(("image", _field(props, "image")))
    elif args.resource_type == REMOTE_IMAGE:
        references.append(("name", _field(props, "name")))
    elif args.resource_type == IMAGE:
        references.append(("imageName", _field(props, "imageName")))
        build_args = _field(_field(props, "build"), "args")
        if isinstance(build_args, Mapping):
            # Base images come in as build arguments (BASE_IMAGE): a moving base moves the built image too.
            references += [(f"build.args.{key}", _field(build_args, key)) for key in build_args if "IMAGE" in key]
    return [(where, reference) for where, reference in references if reference is not None and reference is not UNKNOWN]


def _validate_postgres_not_published(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER:
        return
    props = args.props
    postgres = is_postgres(props)
    for index, port in _entries(_field(props, "ports")):
        if port is UNKNOWN:
            if postgres:
                report(f"ports[{index}] of the Postgres container publishes a port not known during preview.", None)
            continue
        internal, external = _number(_field(port, "internal")), _number(_field(port, "external"))
        if POSTGRES_PORT in (internal, external):
            report(f"ports[{index}] publishes port {POSTGRES_PORT} (internal {internal}, external {external}).", None)
        elif postgres:
            report(f"ports[{index}] publishes port {internal} of the Postgres container on the host.", None)
    if postgres and _field(props, "networkMode") == "host":
        report("the Postgres container runs on the host network, which exposes port 5432 on the host.", None)
    if postgres and _field(props, "publishAllPorts") is True:
        report("publishAllPorts publishes the port the Postgres image exposes (5432) on every interface.", None)


postgres_not_published = ResourceValidationPolicy(
    name="postgres-not-published",
    description=(
        "No container publishes the Postgres port (5432) on the Docker host, and the Postgres container publishes "
        "no port at all: the database is reachable only on the stack's own network."
    ),
    validate=_validate_postgres_not_published,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
    remediation_steps="Remove the `ports` entry; other containers reach Postgres by its alias on the stack network.",
)


def _validate_healthcheck(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER or is_one_shot(args.props):
        return
    healthcheck = _field(args.props, "healthcheck")
    if healthcheck is UNKNOWN:
        return
    tests = [item for _, item in _entries(_field(healthcheck, "tests"))]
    if not tests:
        report("the container declares no healthcheck (`healthcheck.tests` is empty).", None)
    elif tests[0] == "NONE":
        report("the healthcheck is disabled (`healthcheck.tests` starts with NONE).", None)


container_healthcheck = ResourceValidationPolicy(
    name="container-healthcheck",
    description=(
        "Every container declares a healthcheck, so `pulumi up` waits until it actually serves and Docker "
        "reports it unhealthy when it stops doing so."
    ),
    validate=_validate_healthcheck,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
    remediation_steps="Add `healthcheck=ContainerHealthcheckArgs(tests=[...])` with a probe of the service.",
)


def _validate_restart_policy(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER or is_one_shot(args.props):
        return
    restart = _field(args.props, "restart")
    if restart is UNKNOWN:
        return
    if restart not in RESTART_POLICIES:
        shown = "absent (Docker's default, 'no')" if restart is None else repr(restart)
        report(f"`restart` is {shown}; accepted: {', '.join(sorted(RESTART_POLICIES))}.", None)


container_restart_policy = ResourceValidationPolicy(
    name="container-restart-policy",
    description=(
        "Every container has a restart policy (unless-stopped, always or on-failure), so a crash or a reboot "
        "of the Docker host does not leave the service down."
    ),
    validate=_validate_restart_policy,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
    remediation_steps="Set `restart='unless-stopped'` on the container.",
)


# pulumi-docker's Container has no pids limit (a pids cgroup); RLIMIT_NPROC, set through `ulimits`, is the one
# limit on processes and threads it can declare (components/task_limits.py).
TASK_ULIMIT: Final = "nproc"
_ROOT_USERS: Final = frozenset({"", "0", "root"})


def _validate_task_limit(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER:
        return
    props = args.props
    accepted = "accepted: `ulimits` [{name: nproc, soft: N, hard: N}] with 0 < soft <= hard, run as a non-root user"
    ulimits = _field(props, "ulimits")
    if ulimits is UNKNOWN:
        return
    limits = [item for _, item in _entries(ulimits) if item is UNKNOWN or _field(item, "name") == TASK_ULIMIT]
    if UNKNOWN in limits:
        return
    if not limits:
        report(f"the container declares no task limit (no `ulimits` entry named {TASK_ULIMIT}); {accepted}.", None)
        return
    for limit in limits:
        soft, hard = _number(_field(limit, "soft")), _number(_field(limit, "hard"))
        if soft is None or hard is None or not 0 < soft <= hard:
            # Docker reads -1 as unlimited; a process may raise its soft limit up to the hard one.
            report(f"the {TASK_ULIMIT} limit (soft {soft}, hard {hard}) bounds nothing; {accepted}.", None)
    user = _field(props, "user")
    if user is UNKNOWN:
        return
    if user is None or str(user).split(":", 1)[0] in _ROOT_USERS:
        shown = "no `user` (the image's default, root in the official images)" if user is None else f"`user` {user!r}"
        # The kernel never applies RLIMIT_NPROC to root.
        report(f"the container runs as root ({shown}), which the {TASK_ULIMIT} limit does not bind; {accepted}.", None)


container_task_limit = ResourceValidationPolicy(
    name="container-task-limit",
    description=(
        "Every container limits the processes and threads it may run (ulimit nproc, as a non-root user), so a fork "
        "bomb or a thread leak stops there instead of exhausting the Docker host's PIDs."
    ),
    validate=_validate_task_limit,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
    remediation_steps=(
        "Give the workload `max_tasks` from components/task_limits.py (the standalone target turns it into "
        "`ulimits=[nproc]`), and a non-root `user`."
    ),
)


def _validate_image_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for where, reference in _image_references(args):
        problem = image_pin_problem(str(reference))
        if problem:
            report(f"`{where}` = {reference!r} {problem}; pin a version tag or an @sha256 digest.", None)


image_pinned = ResourceValidationPolicy(
    name="image-pinned",
    description=(
        "No image reference is 'latest' or untagged: containers, pulled images, built images and their base "
        "images name a version tag or an @sha256 digest, so a deploy runs exactly what the preview showed."
    ),
    validate=_validate_image_pinned,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    remediation_steps=(
        "Pin the reference in the stack config (postgresImage, proxyImage, baseImage), e.g. postgres:17.11; "
        "in a shared stack with its digest (shared-stack-image-digests)."
    ),
)


def _validate_shared_stack_image_digests(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_shared(args.get_config()):
        return
    for where, reference in _image_references(args):
        # A built image's own name is local to the engine that built it (never pushed): it has no
        # registry digest to pin, and containers run it by its image ID, which this rule checks.
        if where == "imageName" or is_digest_pinned(str(reference)):
            continue
        key = IMAGE_CONFIG_KEYS.get(where)
        source = f" (config key {key})" if key else ""
        report(
            f"`{where}` = {reference!r}{source} in the shared stack '{stack_of(args.urn)}' is not pinned by digest: "
            "the tag can be moved to other contents. Accepted: a reference with its digest, "
            "'name:tag@sha256:<64 hex digits>' such as 'postgres:17.11@sha256:...', or an image ID "
            f"({_SHARED_BECAUSE}).",
            None,
        )


shared_stack_image_digests = ResourceValidationPolicy(
    name="shared-stack-image-digests",
    description=(
        "In every shared stack (any stack whose pack config does not set environmentKind: dev) every image "
        "reference is pinned by digest (@sha256:...): the pulled Postgres image, the base images the MLflow and "
        "proxy images are built from, and what each container runs. A tag, even a version tag, can be re-pushed."
    ),
    validate=_validate_shared_stack_image_digests,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=ENVIRONMENT_KIND_SCHEMA,
    remediation_steps=(
        "Pin postgresImage, proxyImage and baseImage in the stack's config file as name:tag@sha256:<digest> "
        "(README: Updates and audits); Renovate keeps the digest current."
    ),
)
