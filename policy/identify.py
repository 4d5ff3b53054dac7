"""Which resource is which: the Postgres container, the MLflow tracking server and its authentication,
task containers, and the resources that generate secrets.

Several rules ask the same question (four of them judge the tracking server), so each is answered here,
once, and the rules only decide what to report. The tracking server is recognised by what it runs, never
by a label a program could leave off; Postgres by its role label, its PGDATA or its image.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any, Final

from pulumi_policy import PolicyResource

from .readers import _field, _strings, _words, envs, labels

CONTAINER: Final = "docker:index/container:Container"
VOLUME: Final = "docker:index/volume:Volume"
NETWORK: Final = "docker:index/network:Network"
IMAGE: Final = "docker:index/image:Image"
REMOTE_IMAGE: Final = "docker:index/remoteImage:RemoteImage"
# engine: swarm (rules_swarm.py).
SERVICE: Final = "docker:index/service:Service"
SWARM_SECRET: Final = "docker:index/secret:Secret"  # noqa: S105 - a type token
SERVICE_CONFIG: Final = "docker:index/serviceConfig:ServiceConfig"
RANDOM_PASSWORD: Final = "random:index/randomPassword:RandomPassword"  # noqa: S105 - a type token
RANDOM_BYTES: Final = "random:index/randomBytes:RandomBytes"
TLS_PRIVATE_KEY: Final = "tls:index/privateKey:PrivateKey"


# --- Containers ----------------------------------------------------------------------------

ROLE_LABEL: Final = "org.mlflow-platform.role"
DATABASE_ROLE: Final = "database"


def is_postgres(props: Any) -> bool:
    """The program's database container, or any container running a Postgres image by name."""
    if labels(props).get(ROLE_LABEL) == DATABASE_ROLE:
        return True
    if any(name == "PGDATA" for _, name, _ in envs(props)):
        return True
    image = _field(props, "image")
    # The last path component starts with the image's name; its tag or digest follows it.
    return isinstance(image, str) and image.rsplit("/", 1)[-1].startswith(("postgres", "postgis"))


def is_one_shot(props: Any) -> bool:
    """A task container (`attach` and not `mustRun`): it runs to completion during the
    deployment, so neither a healthcheck nor a restart policy applies to it."""
    return _field(props, "attach") is True and _field(props, "mustRun") is False


# --- The MLflow tracking server ------------------------------------------------------------

# The MLflow server image is the one built from the project's mlflow/ directory.
MLFLOW_BUILD_CONTEXT: Final = "mlflow"
MLFLOW_ENTRYPOINT: Final = "/usr/local/bin/mlflow-entrypoint"
# Arguments that only `mlflow server` takes (not `mlflow gc` or `mlflow db upgrade`, which a maintenance
# container may run): a container running with them is a tracking server.
MLFLOW_SERVER_FLAGS: Final = frozenset(
    {"--serve-artifacts", "--no-serve-artifacts", "--artifacts-destination", "--app-name"}
)
# `mlflow server --app-name basic-auth` is MLflow's built-in authentication; `platform-basic-auth`
# is the same app as the project's image registers it, keyed from a file (mlflow/platform_auth.py).
AUTH_APP_NAMES: Final = frozenset({"basic-auth", "platform-basic-auth"})
# The applications those names stand for (`mlflow.app` entry points): what `mlflow server --app-name
# ...` hands gunicorn, uvicorn or waitress, so serving one directly is authenticated too.
AUTH_APPS: Final = frozenset({"mlflow.server.auth:create_app", "mlflow_platform_auth:create_app"})
# A WSGI/ASGI application in MLflow's server package (`mlflow.server:app`, `mlflow.server.fastapi_app:app`,
# `mlflow.server.auth:create_app()`), or the image's keyed basic-auth app (`mlflow_platform_auth:create_app`),
# as gunicorn, uvicorn or waitress take it: whichever of them serves it, that container is the tracking server.
_MLFLOW_APP = re.compile(r"^((?:mlflow\.server(?:\.\w+)*|mlflow_platform_auth):\w+)(?:\(\))?$")


def _mlflow_apps(words: Sequence[str]) -> list[str]:
    """The MLflow server applications named among the words, without gunicorn's `()` factory call."""
    return [match.group(1) for word in words if (match := _MLFLOW_APP.match(word))]


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


def _mlflow_servers(resources: Sequence[PolicyResource]) -> list[PolicyResource]:
    images = [resource for resource in resources if is_mlflow_image(resource)]
    return [
        resource for resource in resources if resource.resource_type == CONTAINER and is_mlflow_server(resource, images)
    ]


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


# --- Generated secrets ---------------------------------------------------------------------

# Packages whose resources live only in the Pulumi state (encrypted there) and take generated secrets
# as inputs by design (a certificate signed with a private key): the secret-value rule skips them.
SECRET_HANDLING_PACKAGES: Final = frozenset({"random", "tls"})
# Outputs that hold a generated secret, per resource type.
SECRET_OUTPUTS: Final[Mapping[str, tuple[str, ...]]] = {
    RANDOM_PASSWORD: ("result", "bcryptHash"),
    RANDOM_BYTES: ("base64", "hex"),
    TLS_PRIVATE_KEY: ("privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh"),
}
# Shorter values would match by accident (a port, a flag); every generated secret here is 24+ characters.
MIN_SECRET_LENGTH: Final = 8


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


def _package(type_token: str) -> str:
    return type_token.split(":", 1)[0]


def _handles_secrets_by_design(resource: PolicyResource) -> bool:
    """A generator or consumer of generated secrets (random, tls) whose inputs are not read.

    Marking an output secret (`additional_secret_outputs`) exempts nothing: any resource can set that
    option, and a container that does still shows its environment in `docker inspect`.
    """
    return _package(resource.resource_type) in SECRET_HANDLING_PACKAGES
