"""Which resources and inputs the local deployer implements, and how it reads their values.

It follows pulumi-docker's documented semantics for the inputs it handles, and refuses
loudly any input it does not handle: a silently ignored input would make the
deployment look tested when it is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tools.local_deploy.common import UnsupportedInputError, UnsupportedResourceError

RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_STRING = "random:index/randomString:RandomString"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
IMAGE = "docker:index/image:Image"
CONTAINER = "docker:index/container:Container"
SERVICE = "docker:index/service:Service"
SECRET = "docker:index/secret:Secret"
SERVICE_CONFIG = "docker:index/serviceConfig:ServiceConfig"
TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
TLS_SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
TLS_CERT_REQUEST = "tls:index/certRequest:CertRequest"
TLS_LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
# The program's own ComponentResources: nothing to create, they only group children.
COMPONENT_PREFIX = "mlflow-platform:"

# keepers only matter through the comparison of inputs: changed inputs, new value.
_RANDOM_INPUTS = frozenset(
    {"length", "special", "overrideSpecial", "upper", "lower", "numeric"}
    | {"minLower", "minUpper", "minNumeric", "minSpecial", "keepers"}
)
# Top-level inputs each resource type handles. Anything else that is set fails the deployment.
HANDLED_INPUTS: dict[str, frozenset[str]] = {
    RANDOM_PASSWORD: _RANDOM_INPUTS,
    RANDOM_STRING: _RANDOM_INPUTS,
    NETWORK: frozenset({"name", "driver", "internal", "attachable", "labels"}),
    VOLUME: frozenset({"name", "labels"}),
    REMOTE_IMAGE: frozenset({"name", "keepLocally"}),
    # buildOnPreview only matters to `pulumi preview`, which this never runs.
    IMAGE: frozenset({"build", "imageName", "skipPush", "buildOnPreview", "registry"}),
    CONTAINER: frozenset({"image", "name", "command", "entrypoints", "envs", "user", "labels", "restart"})
    | {"ports", "networksAdvanced", "volumes", "mounts", "uploads", "tmpfs", "readOnly"}
    | {"capabilities", "securityOpts", "memory", "memorySwap", "shmSize", "logDriver", "logOpts", "ulimits"}
    | {"healthcheck", "wait", "waitTimeout"}
    | {"stopSignal", "stopTimeout", "destroyGraceSeconds", "networkMode", "mustRun", "attach", "logs"},
    SERVICE: frozenset(
        {"name", "labels", "mode", "convergeConfig", "updateConfig", "rollbackConfig", "endpointSpec", "taskSpec"}
    )
    | {"auth"},
    SECRET: frozenset({"name", "data", "labels"}),
    SERVICE_CONFIG: frozenset({"name", "data", "labels"}),
    TLS_PRIVATE_KEY: frozenset({"algorithm", "ecdsaCurve", "rsaBits"}),
    TLS_SELF_SIGNED_CERT: frozenset({"privateKeyPem", "subject", "isCaCertificate", "maxPathLength"})
    | {"validityPeriodHours", "allowedUses", "setSubjectKeyId", "dnsNames", "ipAddresses"},
    TLS_CERT_REQUEST: frozenset({"privateKeyPem", "subject", "dnsNames", "ipAddresses"}),
    TLS_LOCALLY_SIGNED_CERT: frozenset({"certRequestPem", "caPrivateKeyPem", "caCertPem", "isCaCertificate"})
    | {"maxPathLength", "validityPeriodHours", "earlyRenewalHours", "allowedUses", "setSubjectKeyId"},
}
# Keys handled inside structured inputs (objects, or lists of objects). Free-form
# maps (build.args, logOpts, tmpfs) are not listed: every key of those is handled.
HANDLED_NESTED: dict[tuple[str, str], frozenset[str]] = {
    (NETWORK, "labels"): frozenset({"label", "value"}),
    (VOLUME, "labels"): frozenset({"label", "value"}),
    (IMAGE, "build"): frozenset({"context", "dockerfile", "args", "target"}),
    (IMAGE, "registry"): frozenset({"server", "username", "password"}),
    (CONTAINER, "labels"): frozenset({"label", "value"}),
    (CONTAINER, "ports"): frozenset({"internal", "external", "ip", "protocol"}),
    (CONTAINER, "networksAdvanced"): frozenset({"name", "aliases"}),
    (CONTAINER, "volumes"): frozenset({"volumeName", "containerPath", "readOnly"}),
    (CONTAINER, "mounts"): frozenset({"target", "type", "source", "readOnly"}),
    (CONTAINER, "uploads"): frozenset(
        {"file", "content", "contentBase64", "owner", "group", "permissions", "executable"}
    ),
    (CONTAINER, "healthcheck"): frozenset({"tests", "interval", "timeout", "retries", "startPeriod"}),
    (CONTAINER, "capabilities"): frozenset({"adds", "drops"}),
    (CONTAINER, "ulimits"): frozenset({"name", "soft", "hard"}),
    (SECRET, "labels"): frozenset({"label", "value"}),
    (SERVICE_CONFIG, "labels"): frozenset({"label", "value"}),
    (TLS_SELF_SIGNED_CERT, "subject"): frozenset({"commonName", "organization"}),
    (TLS_CERT_REQUEST, "subject"): frozenset({"commonName", "organization"}),
}

# A service's inputs nest several levels deep: each level maps a handled key to the keys
# handled under it (objects, or lists of objects), or to None for a value taken whole
# (a scalar, a list of strings, or a free-form map such as `env` or `logDriver.options`).
InputTree = Mapping[str, "InputTree | None"]
_LABELS: InputTree = {"label": None, "value": None}
# pulumi-docker's update and rollback configs have the same shape.
_UPDATE: InputTree = dict.fromkeys(("parallelism", "delay", "failureAction", "monitor", "maxFailureRatio", "order"))
_FILE_REFERENCE: InputTree = dict.fromkeys(("fileName", "fileUid", "fileGid", "fileMode"))
SERVICE_TREE: InputTree = {
    "name": None,
    "labels": _LABELS,
    # No `global` mode: every service the program declares is replicated.
    "mode": {"replicated": {"replicas": None}},
    "convergeConfig": {"delay": None, "timeout": None},
    # The login the nodes pull the image with (service_spec.RegistryLogin).
    "auth": dict.fromkeys(("serverAddress", "username", "password")),
    "updateConfig": _UPDATE,
    "rollbackConfig": _UPDATE,
    "endpointSpec": {"mode": None, "ports": dict.fromkeys(("targetPort", "publishedPort", "protocol", "publishMode"))},
    "taskSpec": {
        "containerSpec": {
            **dict.fromkeys(("image", "commands", "args", "env", "user", "readOnly", "capDrops", "capAdds")),
            **dict.fromkeys(("stopSignal", "stopGracePeriod", "init", "hostname")),
            "labels": _LABELS,
            "mounts": {
                **dict.fromkeys(("type", "source", "target", "readOnly")),
                "volumeOptions": {"labels": _LABELS},
                "tmpfsOptions": {"sizeBytes": None, "mode": None},
            },
            "secrets": {"secretId": None, "secretName": None, **_FILE_REFERENCE},
            "configs": {"configId": None, "configName": None, **_FILE_REFERENCE},
            "healthcheck": dict.fromkeys(("tests", "interval", "timeout", "retries", "startPeriod")),
        },
        "resources": {"limits": {"memoryBytes": None, "nanoCpus": None}},
        "restartPolicy": dict.fromkeys(("condition", "delay", "maxAttempts", "window")),
        "placement": dict.fromkeys(("constraints", "prefs", "maxReplicas")),
        "logDriver": {"name": None, "options": None},
        "networksAdvanceds": {"id": None, "name": None, "aliases": None},
    },
}
HANDLED_TREES: dict[str, InputTree] = {SERVICE: SERVICE_TREE}


def _check_tree(type_token: str, name: str, where: str, value: object, tree: InputTree) -> None:
    """Refuses any set key of `value` (an object or a list of objects) that `tree` does not handle."""
    items = value if isinstance(value, list) else [value]
    for index, item in enumerate(items):
        at = f"{where}[{index}]" if isinstance(value, list) else where
        if not isinstance(item, Mapping):
            raise UnsupportedInputError(f"resource '{name}' ({type_token}): input '{at}' is not an object: {item!r}")
        for key, sub_value in item.items():
            if _is_unset(sub_value):
                continue
            if key not in tree:
                raise UnsupportedInputError(
                    f"resource '{name}' ({type_token}) sets the input '{at}.{key}', "
                    "which the local deployer does not implement"
                )
            subtree = tree[key]
            if subtree is not None:
                _check_tree(type_token, name, f"{at}.{key}", sub_value, subtree)


def _is_unset(value: object) -> bool:
    return value is None or value == "" or value == [] or value == {}


def check_inputs(type_token: str, name: str, inputs: Mapping[str, Any]) -> None:
    """Raises unless every set input of the resource is one this deployer implements."""
    if type_token not in HANDLED_INPUTS:
        raise UnsupportedResourceError(
            f"resource '{name}' has the type {type_token}, which the local deployer does not implement"
        )
    handled = HANDLED_INPUTS[type_token]
    for key, value in inputs.items():
        if key not in handled and not _is_unset(value):
            raise UnsupportedInputError(
                f"resource '{name}' ({type_token}) sets the input '{key}' = {value!r}, "
                "which the local deployer does not implement"
            )
        subtree = HANDLED_TREES.get(type_token, {}).get(key)
        if subtree is not None and not _is_unset(value):
            _check_tree(type_token, name, key, value, subtree)
            continue
        nested = HANDLED_NESTED.get((type_token, key))
        if nested is None or _is_unset(value):
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            where = f"{key}[{index}]" if isinstance(value, list) else key
            if not isinstance(item, Mapping):
                raise UnsupportedInputError(
                    f"resource '{name}' ({type_token}): input '{where}' is not an object: {item!r}"
                )
            for sub_key, sub_value in item.items():
                if sub_key not in nested and not _is_unset(sub_value):
                    # Values of unknown nested keys may be secret (uploads): name the key only.
                    raise UnsupportedInputError(
                        f"resource '{name}' ({type_token}) sets the input '{where}.{sub_key}', "
                        "which the local deployer does not implement"
                    )


def whole(inputs: Mapping[str, Any], key: str, default: int) -> int:
    """Numbers arrive from the Pulumi wire format as floats."""
    value = inputs.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or float(value) != int(value):
        raise ValueError(f"'{key}' must be a whole number, got {value!r}")
    return int(value)


def label_map(labels: list[Mapping[str, str]] | None) -> dict[str, str]:
    """pulumi-docker's `[{label, value}]` as Docker's label map."""
    return {item["label"]: item["value"] for item in labels or []}


def check_options(type_token: str, name: str, options: Mapping[str, Any]) -> None:
    """Raises unless the resource's replacement options are ones this deployer implements: a
    replacement_trigger on a service (swarm.py replaces it); no replace_on_changes anywhere."""
    if options.get("replace_on_changes"):
        raise UnsupportedInputError(
            f"resource '{name}' ({type_token}) sets the option replace_on_changes = "
            f"{options['replace_on_changes']!r}, which the local deployer does not implement"
        )
    if options.get("replacement_trigger") is not None and type_token != SERVICE:
        raise UnsupportedInputError(
            f"resource '{name}' ({type_token}) sets the option replacement_trigger, which the local deployer "
            f"implements for {SERVICE} only"
        )
