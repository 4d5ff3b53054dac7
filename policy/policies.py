"""The rules of the mlflow-platform policy pack, importable without starting a policy server.

`__main__.py` hands `POLICIES` to a `PolicyPack`, which starts a gRPC server as soon
as it is constructed; the tests import this module instead and call each policy's
`validate` directly.

What the engine hands a policy, as read from pulumi-policy 1.21.0's source:

- Properties come with the provider's camelCase names (`ports[].internal`,
  `healthcheck.tests`, `networksAdvanced`, ...), numbers as floats, wrapped in
  proxies that raise `UnknownValueError` on a value `pulumi preview` cannot know
  yet (one computed from a resource still to be created). The rules read such
  values through `_field`/`_entries`, so an unknown value is skipped or judged
  explicitly, never a crash that the SDK would downgrade to an advisory note.
- Secrets arrive unwrapped: a policy cannot tell that a value was secret. The rule
  on generated secrets therefore compares values against the outputs of the
  resources that generate secrets, and follows the property dependencies the
  engine records (which name those resources even while their values are unknown).
- Resource options carry `protect` but not `retainOnDelete` (`PolicyResourceOptions`
  has no such field), so volume protection is checked through `protect` alone.
- The stack name is not an argument; it is the third field of every URN
  (`urn:pulumi:<stack>::<project>::<type>::<name>`). It decides nothing: every stack
  is shared (authentication and protected volumes required) unless the pack's config
  says `environmentKind: dev`, which `make deploy` and the workflows pass from
  policy/config/<stack>.json, the counterpart of the stack's own `environmentKind`
  (components/settings.py). A stack named `production`, `prod-eu` or `Prod` is shared.
- The stack config is not visible either; the pack config is (`args.get_config()`,
  set with `--policy-pack-config`), per policy: each policy that depends on the
  environment kind declares `environmentKind` in its config schema.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any, Final

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

CONTAINER: Final = "docker:index/container:Container"
VOLUME: Final = "docker:index/volume:Volume"
IMAGE: Final = "docker:index/image:Image"
REMOTE_IMAGE: Final = "docker:index/remoteImage:RemoteImage"
RANDOM_PASSWORD: Final = "random:index/randomPassword:RandomPassword"  # noqa: S105 - a type token
RANDOM_BYTES: Final = "random:index/randomBytes:RandomBytes"
TLS_PRIVATE_KEY: Final = "tls:index/privateKey:PrivateKey"

# The pack config key that marks one person's dev stack (components/settings.py's `environmentKind`;
# the pack runs in its own virtualenv and cannot import the program). Absent means shared.
ENVIRONMENT_KIND: Final = "environmentKind"
ENVIRONMENT_KIND_SCHEMA: Final = PolicyConfigSchema(
    properties={ENVIRONMENT_KIND: {"type": "string", "enum": ["dev", "shared"], "default": "shared"}}
)
# Packages whose resources live only in the Pulumi state (encrypted there) and take generated secrets
# as inputs by design (a certificate signed with a private key): the secret-value rule skips them.
SECRET_HANDLING_PACKAGES: Final = frozenset({"random", "tls"})
# Container inputs that carry secrets on purpose: file uploads into /run/secrets.
SECRET_CARRYING_INPUTS: Final = frozenset({"uploads"})
# The MLflow server image is the one built from the project's mlflow/ directory.
MLFLOW_BUILD_CONTEXT: Final = "mlflow"
MLFLOW_ENTRYPOINT: Final = "/usr/local/bin/mlflow-entrypoint"
POSTGRES_PORT: Final = 5432
ROLE_LABEL: Final = "org.mlflow-platform.role"
DATABASE_ROLE: Final = "database"
# `mlflow server --app-name basic-auth` is MLflow's built-in authentication.
AUTH_APP_NAMES: Final = frozenset({"basic-auth"})
# Without one of these Docker never restarts the container after a crash or a reboot.
RESTART_POLICIES: Final = frozenset({"always", "unless-stopped", "on-failure"})
# Environment variable names that announce a credential.
SECRET_NAME_MARKERS: Final = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "PRIVATE_KEY")
# Outputs that hold a generated secret, per resource type.
SECRET_OUTPUTS: Final[Mapping[str, tuple[str, ...]]] = {
    RANDOM_PASSWORD: ("result", "bcryptHash"),
    RANDOM_BYTES: ("base64", "hex"),
    TLS_PRIVATE_KEY: ("privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh"),
}
# Shorter values would match by accident (a port, a flag); every generated secret here is 24+ characters.
MIN_SECRET_LENGTH: Final = 8
# Arguments that only `mlflow server` takes (not `mlflow gc` or `mlflow db upgrade`, which a maintenance
# container may run): a container running with them is a tracking server.
MLFLOW_SERVER_FLAGS: Final = frozenset(
    {"--serve-artifacts", "--no-serve-artifacts", "--artifacts-destination", "--app-name"}
)
# Shells whose `-c` script is a command line of its own: `sh -c "exec mlflow server ..."` runs the server.
SHELLS: Final = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh"})
# The application basic-auth names (MLflow's `mlflow.app` entry point): what `mlflow server --app-name
# basic-auth` hands gunicorn, uvicorn or waitress, so serving it directly is authenticated too.
AUTH_APPS: Final = frozenset({"mlflow.server.auth:create_app"})

_IMAGE_ID = re.compile(r"^sha256:[a-f0-9]{64}$")
_DIGEST_SUFFIX = re.compile(r"@sha256:[a-f0-9]{64}$")
# A WSGI/ASGI application in MLflow's server package (`mlflow.server:app`, `mlflow.server.fastapi_app:app`,
# `mlflow.server.auth:create_app()`), as gunicorn, uvicorn or waitress take it: whichever of them serves
# it, that container is the tracking server.
_MLFLOW_APP = re.compile(r"^(mlflow\.server(?:\.\w+)*:\w+)(?:\(\))?$")


class _Unknown:
    """A value `pulumi preview` cannot know yet."""

    def __repr__(self) -> str:
        return "<unknown during preview>"


UNKNOWN: Final = _Unknown()


# --- Reading engine properties -------------------------------------------------------------


def _field(props: Any, key: str) -> Any:
    """`props[key]`; None when absent or when `props` is not a mapping; UNKNOWN when not known yet."""
    if not isinstance(props, Mapping):
        return None
    try:
        return props.get(key)
    except UnknownValueError:
        return UNKNOWN


def _entries(value: Any) -> Iterator[tuple[int, Any]]:
    """(index, item) of a list property, an unknown item as UNKNOWN; nothing for absent or non-list values."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return
    for index in range(len(value)):
        try:
            yield index, value[index]
        except UnknownValueError:
            yield index, UNKNOWN


def _strings(props: Any, key: str) -> list[str]:
    """The known string items of a list property."""
    return [item for _, item in _entries(_field(props, key)) if isinstance(item, str)]


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def labels(props: Any) -> dict[str, str]:
    """A container's, volume's or network's `labels` list as a dict (unknown entries left out)."""
    found: dict[str, str] = {}
    for _, item in _entries(_field(props, "labels")):
        label, value = _field(item, "label"), _field(item, "value")
        if isinstance(label, str) and isinstance(value, str):
            found[label] = value
    return found


def envs(props: Any) -> list[tuple[int, str, str]]:
    """(index, name, value) of every known `NAME=value` entry of a container's `envs`."""
    parsed = []
    for index, entry in _entries(_field(props, "envs")):
        if isinstance(entry, str):
            name, _, value = entry.partition("=")
            parsed.append((index, name, value))
    return parsed


def stack_of(urn: str) -> str:
    """The stack of a URN: `urn:pulumi:<stack>::<project>::<type>::<name>`."""
    prefix = "urn:pulumi:"
    return urn[len(prefix) :].split("::", 1)[0] if urn.startswith(prefix) else ""


def is_shared(config: Mapping[str, Any]) -> bool:
    """Every stack holds shared data unless the pack config explicitly marks a personal dev stack."""
    return bool(config.get(ENVIRONMENT_KIND, "shared") != "dev")


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


def _arguments(props: Any) -> list[str]:
    return _strings(props, "entrypoints") + _strings(props, "command")


def _script_words(script: str) -> list[str]:
    try:
        return shlex.split(script)
    except ValueError:  # unbalanced quotes: the shell would refuse it too, but the words still tell
        return script.split()


def _words(props: Any) -> list[str]:
    """The container's arguments, with every argument after a shell's `-c` read as the words of its script."""
    words: list[str] = []
    shell = False
    script_follows = False
    for argument in _arguments(props):
        if script_follows:
            words += _script_words(argument)
            continue
        words.append(argument)
        if posixpath.basename(argument) in SHELLS:
            shell = True
        # -c alone or in a cluster of short options (`-ec`, `-euc`); what follows is the script and its $0, $1...
        elif shell and re.fullmatch(r"-[a-z]*c[a-z]*", argument):
            script_follows = True
    return words


def _mlflow_apps(words: Sequence[str]) -> list[str]:
    """The MLflow server applications named among the words, without gunicorn's `()` factory call."""
    return [match.group(1) for word in words if (match := _MLFLOW_APP.match(word))]


def is_postgres(props: Any) -> bool:
    """The program's database container, or any container running a Postgres image by name."""
    if labels(props).get(ROLE_LABEL) == DATABASE_ROLE:
        return True
    if any(name == "PGDATA" for _, name, _ in envs(props)):
        return True
    image = _field(props, "image")
    # The last path component starts with the image's name; its tag or digest follows it.
    return isinstance(image, str) and image.rsplit("/", 1)[-1].startswith(("postgres", "postgis"))


def runs_mlflow_server_arguments(props: Any) -> bool:
    """A container whose arguments are `mlflow server`'s, or serve its application, whatever image it runs."""
    words = _words(props)
    # `/opt/mlflow/bin/mlflow server` as well as `mlflow server` and `python -m mlflow server`.
    if any(posixpath.basename(program) == "mlflow" and verb == "server" for program, verb in pairwise(words)):
        return True
    if _mlflow_apps(words):
        return True
    return any(word.split("=", 1)[0] in MLFLOW_SERVER_FLAGS for word in words)


def keeps_server_entrypoint(props: Any) -> bool:
    """The image's own entrypoint (which starts `mlflow server`) is kept, not replaced by another program."""
    entrypoints = _strings(props, "entrypoints")
    return not entrypoints or entrypoints[0] in (MLFLOW_ENTRYPOINT, "mlflow-entrypoint")


def is_mlflow_image(image: PolicyResource) -> bool:
    """A docker:Image built from the project's mlflow/ directory (the server's Dockerfile).

    The context may be written relative (`./mlflow/`) or absolute (a program that resolves its paths),
    with either separator: any directory named mlflow, once normalised, is taken for the project's.
    """
    if image.resource_type != IMAGE:
        return False
    context = _field(_field(image.props, "build"), "context")
    if not isinstance(context, str):
        return False
    return posixpath.basename(posixpath.normpath(context.replace("\\", "/"))) == MLFLOW_BUILD_CONTEXT


def is_mlflow_server(container: PolicyResource, mlflow_images: Sequence[PolicyResource]) -> bool:
    """The tracking server, recognised by what it runs, never by a label.

    Either its arguments are `mlflow server`'s, or it runs the image built from mlflow/ (its `image`
    input comes from that image resource, or equals that image's ID or name) without replacing the
    entrypoint by another program (`mlflow gc` in a maintenance container is no server).
    """
    props = container.props
    if runs_mlflow_server_arguments(props):
        return True
    if not keeps_server_entrypoint(props):
        return False
    built = {image.urn for image in mlflow_images}
    if any(dependency.urn in built for dependency in container.property_dependencies.get("image", [])):
        return True
    image = _field(props, "image")
    if not isinstance(image, str):
        return False
    references = {
        value
        for candidate in mlflow_images
        for value in (_field(candidate.props, "repoDigest"), _field(candidate.props, "imageName"))
        if isinstance(value, str) and value
    }
    return image in references


def mlflow_auth_enabled(props: Any) -> bool:
    """`--app-name basic-auth` (or `--app-name=basic-auth`) among the container's arguments, or basic-auth's
    application served directly."""
    arguments = _words(props)
    if any(app in AUTH_APPS for app in _mlflow_apps(arguments)):
        return True
    for index, argument in enumerate(arguments):
        if argument == "--app-name" and index + 1 < len(arguments) and arguments[index + 1] in AUTH_APP_NAMES:
            return True
        if argument.startswith("--app-name=") and argument.split("=", 1)[1] in AUTH_APP_NAMES:
            return True
    return False


def _is_loopback(address: Any) -> bool:
    """Only a known loopback address is; an absent address is Docker's default, every interface."""
    if not isinstance(address, str) or not address:
        return False
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def public_bindings(props: Any) -> list[str]:
    """Where a container is reachable from beyond the Docker host: published ports and host networking."""
    found = []
    for index, port in _entries(_field(props, "ports")):
        if port is UNKNOWN:
            found.append(f"ports[{index}] (not known during preview)")
            continue
        address = _field(port, "ip")
        if not _is_loopback(address):
            shown = address if isinstance(address, str) and address else "0.0.0.0 (Docker's default)"
            found.append(f"{shown}:{_number(_field(port, 'external'))} -> {_number(_field(port, 'internal'))}")
    if _field(props, "networkMode") == "host":
        found.append("the host network (every port it listens on)")
    if _field(props, "publishAllPorts") is True:
        found.append("publishAllPorts (every port the image exposes, on every interface)")
    return found


# --- Resource policies ---------------------------------------------------------------------


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


def is_one_shot(props: Any) -> bool:
    """A task container (`attach` and not `mustRun`): it runs to completion during the
    deployment, so neither a healthcheck nor a restart policy applies to it."""
    return _field(props, "attach") is True and _field(props, "mustRun") is False


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


def _validate_restart_policy(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER or is_one_shot(args.props):
        return
    restart = _field(args.props, "restart")
    if restart is UNKNOWN:
        return
    if restart not in RESTART_POLICIES:
        shown = "absent (Docker's default, 'no')" if restart is None else repr(restart)
        report(f"`restart` is {shown}; accepted: {', '.join(sorted(RESTART_POLICIES))}.", None)


def _validate_image_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
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
    for where, reference in references:
        if reference is None or reference is UNKNOWN:
            continue
        problem = image_pin_problem(str(reference))
        if problem:
            report(f"`{where}` = {reference!r} {problem}; pin a version tag or an @sha256 digest.", None)


def _validate_env_secret_names(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER:
        return
    for index, name, value in envs(args.props):
        upper = name.upper()
        if not any(marker in upper for marker in SECRET_NAME_MARKERS) or not value:
            continue
        if upper.endswith("_FILE"):
            if not value.startswith("/"):
                report(f"envs[{index}] {name} must be the absolute path of an uploaded file, not a value.", None)
        else:
            report(
                f"envs[{index}] {name} carries a credential in the environment, where `docker inspect` shows it; "
                f"upload it as a file and pass {name}_FILE instead.",
                None,
            )


_SHARED_BECAUSE = (
    "every stack is shared unless the policy pack config sets environmentKind: dev (policy/config/<stack>.json)"
)


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


# --- Stack policies ------------------------------------------------------------------------


def _mlflow_servers(resources: Sequence[PolicyResource]) -> list[PolicyResource]:
    images = [resource for resource in resources if is_mlflow_image(resource)]
    return [
        resource for resource in resources if resource.resource_type == CONTAINER and is_mlflow_server(resource, images)
    ]


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


def _published_ports(props: Any) -> list[str]:
    """Everything a container publishes on the Docker host, loopback included."""
    found = [f"ports[{index}]" for index, _ in _entries(_field(props, "ports"))]
    if _field(props, "networkMode") == "host":
        found.append("the host network")
    if _field(props, "publishAllPorts") is True:
        found.append("publishAllPorts")
    return found


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


def _secret_sources(resources: Sequence[PolicyResource]) -> dict[str, PolicyResource]:
    """Resources whose outputs are generated secrets, by URN."""
    return {
        resource.urn: resource
        for resource in resources
        if resource.resource_type in SECRET_OUTPUTS or resource.opts.additional_secret_outputs
    }


def _secret_values(sources: Mapping[str, PolicyResource]) -> list[tuple[str, PolicyResource]]:
    """(value, the resource that generated it) of every known generated secret."""
    values = []
    for resource in sources.values():
        keys = [*SECRET_OUTPUTS.get(resource.resource_type, ()), *resource.opts.additional_secret_outputs]
        for key in keys:
            value = _field(resource.props, key)
            if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
                values.append((value, resource))
    return values


def _strings_within(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, string) of every known string anywhere in a property value: lists, maps, nested.

    `path` starts as the input's name, so it is never empty.
    """
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key in value:
            yield from _strings_within(_field(value, key), f"{path}.{key}")
    else:
        for index, item in _entries(value):
            yield from _strings_within(item, f"{path}[{index}]")


def _package(type_token: str) -> str:
    return type_token.split(":", 1)[0]


def _handles_secrets_by_design(resource: PolicyResource) -> bool:
    """A generator or consumer of generated secrets (random, tls) whose inputs are not read.

    Marking an output secret (`additional_secret_outputs`) exempts nothing: any resource can set that
    option, and a container that does still shows its environment in `docker inspect`.
    """
    return _package(resource.resource_type) in SECRET_HANDLING_PACKAGES


def _validate_no_secret_values(args: StackValidationArgs, report: ReportViolation) -> None:
    sources = _secret_sources(args.resources)
    values = _secret_values(sources)
    for resource in args.resources:
        if _handles_secrets_by_design(resource):
            continue
        exempt = SECRET_CARRYING_INPUTS if resource.resource_type == CONTAINER else frozenset()
        for key, dependencies in sorted(resource.property_dependencies.items()):
            # Known even in preview, when the secret itself is not: the input is computed from its output.
            derived = sorted({dep.name for dep in dependencies if dep.urn in sources})
            if derived and key not in exempt:
                report(
                    f"`{key}` of {resource.name} is computed from the secret output of "
                    f"{', '.join(derived)}; pass it as an uploaded file instead.",
                    resource.urn,
                )
        for key in resource.props:
            if key in exempt:
                continue
            for path, item in _strings_within(_field(resource.props, key), key):
                for value, source in values:
                    # A resource's own secret output is no leak of it (its input may well be the same value).
                    if value in item and source.urn != resource.urn:
                        shown = f"{path} ({item.partition('=')[0]})" if key == "envs" else path
                        report(
                            f"{shown} of {resource.name} contains the secret generated by {source.name}; "
                            "pass it as an uploaded file instead.",
                            resource.urn,
                        )


# --- The policies --------------------------------------------------------------------------

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

image_pinned = ResourceValidationPolicy(
    name="image-pinned",
    description=(
        "No image reference is 'latest' or untagged: containers, pulled images, built images and their base "
        "images name a version tag or an @sha256 digest, so a deploy runs exactly what the preview showed."
    ),
    validate=_validate_image_pinned,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    remediation_steps="Pin the reference in the stack config (postgresImage, baseImage), e.g. postgres:17.6.",
)

container_env_secret_names = ResourceValidationPolicy(
    name="container-env-secret-names",
    description=(
        "No container environment variable named like a credential (*PASSWORD*, *SECRET*, *TOKEN*, ...) holds "
        "a value; only *_FILE variables pointing at an uploaded file are allowed. Environment values show in "
        "`docker inspect` and in the stack state."
    ),
    validate=_validate_env_secret_names,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    remediation_steps="Upload the secret into /run/secrets with `uploads` and pass NAME_FILE=/run/secrets/<file>.",
)

container_env_no_secret_values = StackValidationPolicy(
    name="container-env-no-secret-values",
    description=(
        "No input of any resource carries a generated secret (a RandomPassword result, a private key or any "
        "other secret output), whatever it is called: environment, command, entrypoint, health check, labels, "
        "build arguments and every other string, except the file uploads into /run/secrets."
    ),
    validate=_validate_no_secret_values,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.CRITICAL,
    remediation_steps="Upload the secret into /run/secrets with `uploads` and pass NAME_FILE=/run/secrets/<file>.",
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

POLICIES: Final[list[ResourceValidationPolicy | StackValidationPolicy]] = [
    postgres_not_published,
    container_healthcheck,
    container_restart_policy,
    image_pinned,
    container_env_secret_names,
    container_env_no_secret_values,
    protected_stack_volumes,
    protected_stack_mlflow_auth,
    mlflow_public_needs_auth,
    mlflow_behind_proxy,
    shared_stack_tls,
]
