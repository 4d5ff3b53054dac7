"""Realises the Pulumi program's resources on the local Docker engine, for end-to-end tests.

The Pulumi CLI and its provider plugins cannot be installed here, so `LocalDeployer`
stands in for the `docker` and `random` providers: Pulumi's mocks call it once a
resource's inputs are resolved (as the engine would call the provider), and it
creates the resource for real with the Docker SDK. It is a test double, not an
engine: no diffs, no updates. `up` replaces containers, reuses this stack's
network and volumes, and remembers generated passwords in a small state file (the
part of Pulumi's state that must survive between runs).

It follows pulumi-docker's documented semantics for the inputs it handles, and
refuses loudly any input it does not handle: a silently ignored input would make
the deployment look tested when it is not.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import io
import ipaddress
import json
import os
import re
import runpy
import secrets
import string
import sys
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
import docker.models.containers
import docker.types
import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from tests.harness import EngineMocks, _working_directory, install, secret
from tests.stack_config import PROJECT_DIR, project_name

PROJECT_LABEL = "com.pulumi.project"
STACK_LABEL = "com.pulumi.stack"
# Marks what this deployer made. `down` removes only marked resources, so it never
# touches a stack of the same name that a real `pulumi up` created on this engine.
MANAGED_LABEL = "org.mlflow-platform.local-deploy"
# Gitignored (.build/): generated passwords and what `down` must remove.
STATE_DIR = PROJECT_DIR / ".build" / "local-deploy"

RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_STRING = "random:index/randomString:RandomString"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
IMAGE = "docker:index/image:Image"
CONTAINER = "docker:index/container:Container"
TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
TLS_SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
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
    NETWORK: frozenset({"name", "driver", "internal", "labels"}),
    VOLUME: frozenset({"name", "labels"}),
    REMOTE_IMAGE: frozenset({"name", "keepLocally"}),
    # buildOnPreview only matters to `pulumi preview`, which this never runs.
    IMAGE: frozenset({"build", "imageName", "skipPush", "buildOnPreview"}),
    CONTAINER: frozenset({"image", "name", "command", "entrypoints", "envs", "user", "labels", "restart"})
    | {"ports", "networksAdvanced", "volumes", "mounts", "uploads", "tmpfs", "readOnly"}
    | {"capabilities", "securityOpts", "memory", "memorySwap", "shmSize", "logDriver", "logOpts"}
    | {"healthcheck", "wait", "waitTimeout"}
    | {"stopSignal", "stopTimeout", "destroyGraceSeconds", "networkMode", "mustRun", "attach"},
    TLS_PRIVATE_KEY: frozenset({"algorithm", "ecdsaCurve", "rsaBits"}),
    TLS_SELF_SIGNED_CERT: frozenset({"privateKeyPem", "subject", "isCaCertificate", "maxPathLength"})
    | {"validityPeriodHours", "allowedUses", "setSubjectKeyId", "dnsNames", "ipAddresses"},
}
# Keys handled inside structured inputs (objects, or lists of objects). Free-form
# maps (build.args, logOpts, tmpfs) are not listed: every key of those is handled.
HANDLED_NESTED: dict[tuple[str, str], frozenset[str]] = {
    (NETWORK, "labels"): frozenset({"label", "value"}),
    (VOLUME, "labels"): frozenset({"label", "value"}),
    (IMAGE, "build"): frozenset({"context", "dockerfile", "args", "target"}),
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
    (TLS_SELF_SIGNED_CERT, "subject"): frozenset({"commonName", "organization"}),
}

# terraform-provider-random's character classes (random_password / random_string).
_NUMERIC = string.digits
_LOWER = string.ascii_lowercase
_UPPER = string.ascii_uppercase
_DEFAULT_SPECIAL = "!@#$%&*()-_=+[]{}<>:?"

_BUILD_LOG_TAIL = 30
_CONTAINER_LOG_TAIL = 40
# pulumi-docker's defaults.
_DEFAULT_WAIT_TIMEOUT = 60
# pulumi-docker stops a container with `destroy_grace_seconds` as the timeout
# before it removes it (on replace and destroy); unset, the timeout is 0: SIGKILL.
_DEFAULT_DESTROY_GRACE_SECONDS = 0
# How long an attached (one-shot) container may run; the provider waits forever.
_ATTACH_TIMEOUT = 600
# What `down --keep-volumes` keeps of the state file: the volume records. Not the
# generated values: a destroy drops the random resources from Pulumi's state, so
# the next `up` generates new ones for the kept data, as the real engine does.
# Protected TLS resources (the internal CA) are kept: `pulumi destroy` refuses to
# delete a protected resource, so its state survives.
_KEPT_WITH_VOLUMES = ("project", "stack", "volumes", "retainedVolumes")


class DeployError(RuntimeError):
    """The local deployment failed; the message names the resource and the reason."""


class UnsupportedInputError(DeployError):
    """The program set an input this test double does not implement."""


class UnsupportedResourceError(DeployError):
    """The program declared a resource type this test double does not implement."""


class AbortedError(DeployError):
    """A create stopped because another one failed; that other failure is the one to report."""


_LOG_LOCK = threading.Lock()


def log(message: str) -> None:
    """Progress goes to stderr: stdout's last line is the stack outputs as JSON.

    Creates run in several threads; the lock keeps their lines whole.
    """
    with _LOG_LOCK:
        print(f"local-deploy: {message}", file=sys.stderr, flush=True)


# --- Refusal logic --------------------------------------------------------------------------


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


# --- Random values --------------------------------------------------------------------------


def _whole(inputs: Mapping[str, Any], key: str, default: int) -> int:
    """Numbers arrive from the Pulumi wire format as floats."""
    value = inputs.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or float(value) != int(value):
        raise ValueError(f"'{key}' must be a whole number, got {value!r}")
    return int(value)


def _flag(inputs: Mapping[str, Any], key: str) -> bool:
    value = inputs.get(key)
    return True if value is None else bool(value)


def generate_random(inputs: Mapping[str, Any]) -> str:
    """A value as terraform-provider-random generates it, from the `secrets` module.

    As in the provider, the min_* characters are drawn first from their own class
    (whether or not that class is otherwise enabled), the rest from every enabled
    class, then the whole is shuffled.
    """
    if inputs.get("length") is None:
        raise ValueError("'length' is required")
    length = _whole(inputs, "length", 0)
    special = inputs.get("overrideSpecial") or _DEFAULT_SPECIAL
    minimums = {
        _NUMERIC: _whole(inputs, "minNumeric", 0),
        _LOWER: _whole(inputs, "minLower", 0),
        _UPPER: _whole(inputs, "minUpper", 0),
        special: _whole(inputs, "minSpecial", 0),
    }
    if length < 1 or any(count < 0 for count in minimums.values()):
        raise ValueError(f"'length' must be at least 1 and every min_* at least 0, got {dict(inputs)!r}")
    if sum(minimums.values()) > length:
        raise ValueError(f"'length' ({length}) is less than the sum of the min_* values ({sum(minimums.values())})")
    alphabet = "".join(
        chars
        for chars, enabled in (
            (_UPPER, _flag(inputs, "upper")),
            (_LOWER, _flag(inputs, "lower")),
            (_NUMERIC, _flag(inputs, "numeric")),
            (special, _flag(inputs, "special")),
        )
        if enabled
    )
    chosen = [secrets.choice(chars) for chars, count in minimums.items() for _ in range(count)]
    remaining = length - len(chosen)
    if remaining and not alphabet:
        raise ValueError("every character class is disabled, so nothing can fill the remaining length")
    chosen += [secrets.choice(alphabet) for _ in range(remaining)]
    secrets.SystemRandom().shuffle(chosen)
    return "".join(chosen)


# --- TLS keys and certificates -------------------------------------------------------------

# pulumi-tls's usage names -> cryptography's KeyUsage arguments.
_KEY_USAGES = {
    "digital_signature": "digital_signature", "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment", "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement", "cert_signing": "key_cert_sign", "crl_signing": "crl_sign",
    "encipher_only": "encipher_only", "decipher_only": "decipher_only",
}  # fmt: skip
_EXTENDED_USAGES = {"server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH}
_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1}


def tls_private_key(inputs: Mapping[str, Any]) -> dict[str, str]:
    """pulumi-tls PrivateKey: ECDSA (ecdsaCurve, default P224) or RSA (rsaBits, default 2048)."""
    algorithm = inputs.get("algorithm")
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ECDSA":
        curve = _CURVES.get(inputs.get("ecdsaCurve") or "P224")
        if curve is None:
            raise ValueError(f"ecdsaCurve {inputs.get('ecdsaCurve')!r} is not one of {sorted(_CURVES)}")
        key = ec.generate_private_key(curve())
        traditional = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    elif algorithm == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=_whole(inputs, "rsaBits", 2048))
        traditional = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    else:
        raise ValueError(f"algorithm {algorithm!r} is not implemented here (ECDSA, RSA)")
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "privateKeyPem": traditional.decode(),
        "privateKeyPemPkcs8": pkcs8.decode(),
        "publicKeyPem": public.decode(),
    }


def tls_self_signed_cert(inputs: Mapping[str, Any]) -> dict[str, str]:
    """pulumi-tls SelfSignedCert: the subject, usages, CA flags and validity it declares."""
    key = serialization.load_pem_private_key(str(inputs["privateKeyPem"]).encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("privateKeyPem must be an ECDSA or RSA key")
    subject = inputs.get("subject") or {}
    attributes = [
        x509.NameAttribute(oid, str(subject[name]))
        for name, oid in (("organization", NameOID.ORGANIZATION_NAME), ("commonName", NameOID.COMMON_NAME))
        if subject.get(name)
    ]
    name = x509.Name(attributes)
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(hours=_whole(inputs, "validityPeriodHours", 0))
    uses = set(inputs.get("allowedUses") or [])
    unknown = uses - set(_KEY_USAGES) - set(_EXTENDED_USAGES)
    if unknown:
        raise ValueError(f"allowedUses {sorted(unknown)} are not implemented here")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(end)
    )
    is_ca = bool(inputs.get("isCaCertificate"))
    path_length = _whole(inputs, "maxPathLength", 0) if is_ca and inputs.get("maxPathLength") is not None else None
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
    if uses & set(_KEY_USAGES):
        flags = {argument: usage in uses for usage, argument in _KEY_USAGES.items()}
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    if uses & set(_EXTENDED_USAGES):
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([oid for usage, oid in _EXTENDED_USAGES.items() if usage in uses]), critical=False
        )
    names: list[x509.GeneralName] = [x509.DNSName(str(dns)) for dns in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(str(ip))) for ip in inputs.get("ipAddresses") or []]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    return {
        "certPem": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "validityStartTime": now.isoformat(),
        "validityEndTime": end.isoformat(),
    }


# --- Small conversions ----------------------------------------------------------------------


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def duration_ns(value: str) -> int:
    """A Go duration ("5s", "1m30s"), as healthcheck inputs take, in nanoseconds (Docker's unit)."""
    if value in ("0", ""):
        return 0
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return int(sum(float(number) * _DURATION_UNITS_NS[unit] for number, unit in parts))


def label_map(labels: list[Mapping[str, str]] | None) -> dict[str, str]:
    """pulumi-docker's `[{label, value}]` as Docker's label map."""
    return {item["label"]: item["value"] for item in labels or []}


def _mib(value: object) -> int:
    """pulumi-docker takes memory, swap and shm sizes in MB (MiB); Docker wants bytes."""
    return int(float(value)) * 1024 * 1024  # type: ignore[arg-type]


def upload_archive(upload: Mapping[str, Any]) -> tuple[str, bytes]:
    """(directory, tar) for one `uploads` entry: the file's content, owner, group and mode.

    pulumi-docker writes the file with `docker cp` semantics into its parent
    directory, before the container starts; mode 0644 (0744 if `executable`)
    unless `permissions` says otherwise.
    """
    path = PurePosixPath(upload["file"])
    if not path.is_absolute() or path.name in ("", ".", ".."):
        raise ValueError(f"upload file {upload['file']!r} is not an absolute file path")
    if upload.get("contentBase64"):
        data = base64.b64decode(upload["contentBase64"])
    elif upload.get("content") is not None:
        data = str(upload["content"]).encode()
    else:
        raise ValueError(f"upload {upload['file']!r} has neither content nor contentBase64")
    mode = 0o744 if upload.get("executable") else 0o644
    if upload.get("permissions"):
        mode = int(str(upload["permissions"]), 8)
    info = tarfile.TarInfo(path.name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    for attribute, key in (("uid", "owner"), ("gid", "group")):
        owner = str(upload.get(key) or "0")
        if not owner.isdigit():
            # The provider resolves names on the host running Pulumi, which says
            # nothing about the image's users: only numeric ids are meaningful.
            raise ValueError(f"upload {upload['file']!r}: {key} {owner!r} is not a numeric id")
        setattr(info, attribute, int(owner))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(data))
    return str(path.parent), buffer.getvalue()


# --- State ----------------------------------------------------------------------------------


def state_path(stack: str) -> Path:
    return STATE_DIR / f"{stack}.json"


def load_state(stack: str) -> dict[str, Any]:
    path = state_path(stack)
    if not path.exists():
        return {"random": {}}
    state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    state.setdefault("random", {})
    return state


def save_state(stack: str, state: Mapping[str, Any]) -> None:
    """Written 0600 in a 0700 directory: it holds the stack's passwords."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_DIR.chmod(0o700)
    path = state_path(stack)
    partial = path.with_suffix(".json.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
    partial.replace(path)


# --- The deployer ---------------------------------------------------------------------------


class LocalDeployer(EngineMocks):
    """Mocks whose `create` makes each resource on the local Docker engine."""

    def __init__(self, project: str, stack: str) -> None:
        super().__init__()
        self.project = project
        self.stack = stack
        self._state = load_state(stack)
        self._state_lock = threading.Lock()
        self._local = threading.local()
        # Set by the first failure: creates still running in other threads (a build,
        # a health wait) stop early instead of holding the process for minutes.
        self.aborted = threading.Event()
        self.first_error: DeployError | None = None
        # Creates still running: after a failure `up` waits for them, so a `down`
        # that follows never races a container being created behind its back.
        self._in_flight = 0
        self._idle = threading.Condition()
        self.started = time.monotonic()
        # (seconds since start, event, resource name): the order things happened in.
        self.events: list[tuple[float, str, str]] = []

    # -- plumbing --

    @property
    def client(self) -> docker.DockerClient:
        """One client per thread: the mocks call `create` from the SDK's thread pool."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = docker.from_env(timeout=300)
            self._local.client = client
        return client

    def _event(self, event: str, name: str) -> None:
        elapsed = time.monotonic() - self.started
        self.events.append((elapsed, event, name))
        log(f"[{elapsed:6.1f}s] {event} {name}")

    def _update_state(self, change: Callable[[dict[str, Any]], None]) -> None:
        with self._state_lock:
            change(self._state)
            self._state.update(project=self.project, stack=self.stack)
            save_state(self.stack, self._state)

    def _record(self, kind: str, name: str) -> None:
        """Remembers what `up` made or took over, for `down` (besides finding it by label)."""

        def add(state: dict[str, Any]) -> None:
            state[kind] = sorted({*state.get(kind, []), name})

        self._update_state(add)

    def _labels(self, inputs: Mapping[str, Any]) -> dict[str, str]:
        """The declared labels, plus the stack's own so `down` finds the resource from any process."""
        labels = label_map(inputs.get("labels"))
        labels.setdefault(PROJECT_LABEL, self.project)
        labels.setdefault(STACK_LABEL, self.stack)
        labels[MANAGED_LABEL] = "true"
        return labels

    def _options(self, args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
        return self.pending_options.get((args.typ, args.name), {})

    def _check_aborted(self, name: str) -> None:
        if self.aborted.is_set():
            raise AbortedError(f"'{name}': stopped because another resource failed")

    # -- entry point --

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no create is running; False if some still are after `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def create(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if args.typ.startswith(COMPONENT_PREFIX):
            return "", {}
        with self._idle:
            self._in_flight += 1
        try:
            return self._create(args, inputs)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _create(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        try:
            self._check_aborted(args.name)
            check_inputs(args.typ, args.name, inputs)
            handler = {
                RANDOM_PASSWORD: self._random,
                RANDOM_STRING: self._random,
                NETWORK: self._network,
                VOLUME: self._volume,
                REMOTE_IMAGE: self._remote_image,
                IMAGE: self._image,
                CONTAINER: self._container,
                TLS_PRIVATE_KEY: self._tls,
                TLS_SELF_SIGNED_CERT: self._tls,
            }[args.typ]
            return handler(args, inputs)
        except Exception as error:
            failure = (
                error
                if isinstance(error, DeployError)
                else DeployError(f"'{args.name}' ({args.typ}) failed: {type(error).__name__}: {error}")
            )
            with self._state_lock:
                if self.first_error is None and not isinstance(failure, AbortedError):
                    self.first_error = failure
            self.aborted.set()
            if failure is error:
                raise
            raise failure from error

    # -- random --

    def _random(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key = self._options(args).get("urn") or f"{args.typ}::{args.name}"
        recorded = self._state["random"].get(key)
        # As in Pulumi state: the same inputs keep the value; changed inputs replace it.
        if recorded is not None and recorded.get("inputs") == inputs:
            value = recorded["result"]
        else:
            value = generate_random(inputs)
            self._update_state(lambda state: state["random"].__setitem__(key, {"inputs": inputs, "result": value}))
            self._event("generated", args.name)
        return "none", {"result": secret(value)}

    # -- tls --

    def _tls(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """pulumi-tls's PrivateKey and SelfSignedCert, made with `cryptography`; kept while the inputs stay."""
        options = self._options(args)
        key = options.get("urn") or f"{args.typ}::{args.name}"
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        recorded = self._state.setdefault("tls", {}).get(key)
        if recorded is not None and recorded.get("inputs") == digest:
            outputs = recorded["outputs"]
        else:
            outputs = tls_private_key(inputs) if args.typ == TLS_PRIVATE_KEY else tls_self_signed_cert(inputs)
            entry = {"inputs": digest, "outputs": outputs, "protected": bool(options.get("protect"))}
            self._update_state(lambda state: state.setdefault("tls", {}).__setitem__(key, entry))
            self._event("generated", args.name)
        # As pulumi-tls's schema: private keys are secret outputs.
        return digest[:16], {
            name: secret(value) if name.startswith("privateKey") else value for name, value in outputs.items()
        }

    # -- network --

    def _network(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        name = inputs.get("name") or args.name
        driver = inputs.get("driver") or "bridge"
        internal = bool(inputs.get("internal"))
        labels = self._labels(inputs)
        existing = [network for network in self.client.networks.list(names=[name]) if network.name == name]
        if existing:
            # Left by an earlier `up` of this stack (its containers are replaced, the
            # network is not): reuse it when it is the same network, as the engine would.
            attrs = existing[0].attrs
            same = attrs.get("Driver") == driver and bool(attrs.get("Internal")) == internal
            if not same or (attrs.get("Labels") or {}) != labels:
                raise DeployError(
                    f"'{args.name}': a different network named {name} already exists; "
                    f"run `python -m tests.local_deploy down --stack {self.stack}` or remove it"
                )
            network = existing[0]
            self._event("reused network", name)
        else:
            network = self.client.networks.create(
                name, driver=driver, internal=internal, labels=labels, check_duplicate=True
            )
            self._event("created network", name)
        self._record("networks", name)
        return str(network.id), {"name": name, "driver": driver, "internal": internal, "scope": "local"}

    # -- volume --

    def _volume(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        name = inputs.get("name") or args.name
        try:
            # `down --keep-volumes` left it: the data of the previous `up` is found again.
            volume = self.client.volumes.get(name)
            self._event("reused volume", name)
        except docker.errors.NotFound:
            volume = self.client.volumes.create(name, labels=self._labels(inputs))
            self._event("created volume", name)
            self._record("volumes", name)
        if self._options(args).get("retain_on_delete"):
            self._record("retainedVolumes", name)
        return name, {"name": name, "driver": volume.attrs.get("Driver"), "mountpoint": volume.attrs.get("Mountpoint")}

    # -- images --

    def _remote_image(
        self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        reference = inputs["name"]
        try:
            image = self.client.images.get(reference)
            self._event("found local image", reference)
        except docker.errors.ImageNotFound:
            log(f"{reference} is not local; pulling it")
            try:
                image = self.client.images.pull(reference)
            except docker.errors.DockerException as error:
                raise DeployError(
                    f"'{args.name}': image {reference} is not on this engine and cannot be pulled: {error}"
                ) from error
            self._event("pulled image", reference)
        if not inputs.get("keepLocally"):
            self._record("removeImages", reference)
        digests = image.attrs.get("RepoDigests") or []
        outputs = {"name": reference, "imageId": image.id, "repoDigest": digests[0] if digests else ""}
        return f"{image.id}{reference}", outputs

    def _image(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if inputs.get("skipPush") is not True:
            raise UnsupportedInputError(
                f"resource '{args.name}' ({IMAGE}) would push its image: the local deployer needs skipPush = true"
            )
        image_name = inputs["imageName"]
        build = inputs.get("build") or {}
        # pulumi-docker resolves both paths against the program's directory, and the
        # Dockerfile defaults to the one in the context.
        context = (PROJECT_DIR / (build.get("context") or ".")).resolve()
        dockerfile = context / "Dockerfile"
        if build.get("dockerfile"):
            dockerfile = (PROJECT_DIR / build["dockerfile"]).resolve()
        self._record("builtImages", image_name)
        self._event("building image", image_name)
        tail: deque[str] = deque(maxlen=_BUILD_LOG_TAIL)
        stream = self.client.api.build(
            path=str(context),
            dockerfile=str(dockerfile),
            buildargs=dict(build.get("args") or {}),
            target=build.get("target") or None,
            tag=image_name,
            labels={PROJECT_LABEL: self.project, STACK_LABEL: self.stack, MANAGED_LABEL: "true"},
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if self.aborted.is_set():
                stream.close()
                self._check_aborted(args.name)
            text = str(chunk.get("stream") or chunk.get("status") or "").rstrip()
            for line in text.splitlines():
                tail.append(line)
                if line.startswith("Step "):
                    log(f"  {image_name}: {line[:110]}")
            if chunk.get("error"):
                tail.append(str(chunk["error"]))
                raise DeployError(
                    f"'{args.name}': building {image_name} from {context} failed; last lines of the build:\n"
                    + "\n".join(tail)
                )
        image = self.client.images.get(image_name)
        size_mb = (image.attrs.get("Size") or 0) / 1e6
        self._event(f"built image ({size_mb:.0f} MB, {image.id[:19]})", image_name)
        # For a local build pulumi-docker's repoDigest is the image ID.
        return str(image.id), {
            "imageName": image_name,
            "repoDigest": image.id,
            "baseImageName": image_name,
            "context": build.get("context"),
            "dockerfile": build.get("dockerfile"),
        }

    # -- container --

    def _remove_container(self, name: str) -> None:
        """An earlier `up` left it: the engine would replace it, so it goes first,
        stopped the way the provider's delete stops it."""
        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        stop_container(old, grace_seconds(self._state, name))
        old.remove(v=True, force=True)
        self._event("removed old container", name)

    def _container_config(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> dict[str, Any]:
        """Docker SDK `containers.create` arguments for everything but networks and uploads."""
        config: dict[str, Any] = {
            "image": inputs["image"],
            "name": inputs.get("name") or args.name,
            "labels": self._labels(inputs),
            "detach": True,
        }
        if inputs.get("command"):
            config["command"] = list(inputs["command"])
        if inputs.get("entrypoints"):
            config["entrypoint"] = list(inputs["entrypoints"])
        if inputs.get("envs"):
            config["environment"] = list(inputs["envs"])
        if inputs.get("user"):
            config["user"] = inputs["user"]
        ports: dict[str, list[tuple[str, ...] | tuple[str, int]]] = {}
        for port in inputs.get("ports") or []:
            key = f"{int(port['internal'])}/{port.get('protocol') or 'tcp'}"
            ip = port.get("ip") or "0.0.0.0"
            binding = (ip, int(port["external"])) if port.get("external") else (ip,)
            ports.setdefault(key, []).append(binding)
        if ports:
            config["ports"] = ports
        mounts = []
        for volume in inputs.get("volumes") or []:
            # No volumeName: an anonymous volume, removed with the container.
            mounts.append(
                docker.types.Mount(
                    target=volume["containerPath"],
                    source=volume.get("volumeName") or None,
                    type="volume",
                    read_only=bool(volume.get("readOnly")),
                )
            )
        for mount in inputs.get("mounts") or []:
            mounts.append(
                docker.types.Mount(
                    target=mount["target"],
                    source=mount.get("source") or None,
                    type=mount.get("type") or "volume",
                    read_only=bool(mount.get("readOnly")),
                )
            )
        if mounts:
            config["mounts"] = mounts
        if inputs.get("healthcheck"):
            check = inputs["healthcheck"]
            config["healthcheck"] = {
                "test": list(check.get("tests") or []),
                "interval": duration_ns(check.get("interval") or "0s"),
                "timeout": duration_ns(check.get("timeout") or "0s"),
                "retries": int(check.get("retries") or 0),
                "start_period": duration_ns(check.get("startPeriod") or "0s"),
            }
        if inputs.get("restart"):
            config["restart_policy"] = {"Name": inputs["restart"]}
        if inputs.get("readOnly"):
            config["read_only"] = True
        if inputs.get("tmpfs"):
            config["tmpfs"] = dict(inputs["tmpfs"])
        capabilities = inputs.get("capabilities") or {}
        if capabilities.get("adds"):
            config["cap_add"] = list(capabilities["adds"])
        if capabilities.get("drops"):
            config["cap_drop"] = list(capabilities["drops"])
        if inputs.get("securityOpts"):
            config["security_opt"] = list(inputs["securityOpts"])
        if inputs.get("memory"):
            config["mem_limit"] = _mib(inputs["memory"])
        if inputs.get("memorySwap"):
            config["memswap_limit"] = _mib(inputs["memorySwap"])
        if inputs.get("shmSize"):
            config["shm_size"] = _mib(inputs["shmSize"])
        if inputs.get("logDriver") or inputs.get("logOpts"):
            config["log_config"] = docker.types.LogConfig(
                type=inputs.get("logDriver") or "json-file", config=dict(inputs.get("logOpts") or {})
            )
        if inputs.get("stopSignal"):
            config["stop_signal"] = inputs["stopSignal"]
        if inputs.get("networkMode"):
            config["network_mode"] = inputs["networkMode"]
        return config

    def _create_container(self, config: dict[str, Any], stop_timeout: int | None) -> docker.models.containers.Container:
        """`containers.create`, plus StopTimeout, which the SDK's high-level API does not pass on."""
        create_kwargs = docker.models.containers._create_container_args({**config, "version": self.client.api._version})
        if stop_timeout is not None:
            create_kwargs["stop_timeout"] = stop_timeout
        response = self.client.api.create_container(**create_kwargs)
        return self.client.containers.get(response["Id"])

    def _container(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        config = self._container_config(args, inputs)
        name = config["name"]
        self._remove_container(name)
        networks = inputs.get("networksAdvanced") or []
        if networks and inputs.get("networkMode"):
            raise UnsupportedInputError(f"'{args.name}': networkMode and networksAdvanced together")
        if networks:
            first = networks[0]
            config["network"] = first["name"]
            config["networking_config"] = {
                first["name"]: self.client.api.create_endpoint_config(aliases=list(first.get("aliases") or []) or None)
            }
        stop_timeout = _whole(inputs, "stopTimeout", -1) if inputs.get("stopTimeout") is not None else None
        container = self._create_container(config, stop_timeout)
        self._record("containers", name)
        grace = _whole(inputs, "destroyGraceSeconds", _DEFAULT_DESTROY_GRACE_SECONDS)
        self._update_state(lambda state: state.setdefault("destroyGraceSeconds", {}).__setitem__(name, grace))
        try:
            # Every network joined before start, so the process never sees a partial set.
            for network in networks[1:]:
                self.client.networks.get(network["name"]).connect(
                    container, aliases=list(network.get("aliases") or []) or None
                )
            for upload in inputs.get("uploads") or []:
                directory, archive = upload_archive(upload)
                if not container.put_archive(directory, archive):
                    raise DeployError(f"'{args.name}': uploading {upload['file']} into {name} failed")
            container.start()
            self._event("started container", name)
            if inputs.get("wait"):
                timeout = float(inputs.get("waitTimeout") or _DEFAULT_WAIT_TIMEOUT)
                self._wait_healthy(args.name, container, timeout)
            if inputs.get("attach"):
                self._wait_exited(args.name, container)
        except Exception:
            # What the engine does with a failed create: nothing half-made stays behind
            # except the logs printed in the error.
            with suppress(docker.errors.DockerException):
                container.remove(v=True, force=True)
            raise
        container.reload()
        network_datas = [
            {"networkName": net, "ipAddress": data.get("IPAddress"), "gateway": data.get("Gateway")}
            for net, data in (container.attrs["NetworkSettings"].get("Networks") or {}).items()
        ]
        state = container.attrs["State"]
        # As the provider's read: the exit code of a container that is not running.
        exit_code = None if state.get("Running") else state.get("ExitCode")
        # mustRun only decides what a later refresh does with a stopped container;
        # an `up` from nothing, all this deployer does, never reads it.
        return str(container.id), {"name": name, "networkDatas": network_datas, "exitCode": exit_code}

    def _wait_exited(self, resource: str, container: docker.models.containers.Container) -> None:
        """pulumi-docker's `attach`: the create returns once the container has exited,
        whatever its exit code (the provider records it as `exitCode` and does not fail)."""
        deadline = time.monotonic() + _ATTACH_TIMEOUT
        while True:
            self._check_aborted(resource)
            container.reload()
            if container.attrs["State"].get("Status") in ("exited", "dead"):
                code = container.attrs["State"].get("ExitCode")
                self._event(f"exited with code {code}:", str(container.name))
                return
            if time.monotonic() > deadline:
                raise DeployError(f"'{resource}': container {container.name} still runs after {_ATTACH_TIMEOUT}s")
            time.sleep(0.5)

    def _wait_healthy(self, resource: str, container: docker.models.containers.Container, timeout: float) -> None:
        """pulumi-docker's `wait`: the create succeeds only once Docker reports the container healthy."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            self._check_aborted(resource)
            container.reload()
            state = container.attrs["State"]
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy" or (health is None and state.get("Running")):
                self._event(f"healthy after {time.monotonic() - started:.1f}s:", container.name)
                return
            problem = None
            restarts = container.attrs.get("RestartCount") or 0
            # The engine would wait out the timeout; a crash on first start will not heal.
            if restarts:
                # Already running again, so State.ExitCode no longer holds the crash's code.
                problem = f"crashed and was restarted {restarts} times"
            elif state.get("Status") in ("exited", "dead"):
                problem = f"exited with code {state.get('ExitCode')}"
            elif health == "unhealthy":
                problem = "is unhealthy"
            elif time.monotonic() > deadline:
                problem = f"is not healthy after {timeout:.0f}s (health: {health})"
            if problem:
                logs = container.logs(tail=_CONTAINER_LOG_TAIL).decode(errors="replace")
                probe = (state.get("Health") or {}).get("Log") or []
                # A probe's output can be a whole traceback: its last line says what failed.
                probe_output = (probe[-1].get("Output") or "").strip().splitlines() if probe else []
                last_probe = f"\nlast health probe: {probe_output[-1]}" if probe_output else ""
                raise DeployError(
                    f"'{resource}': container {container.name} {problem}; its last {_CONTAINER_LOG_TAIL} log lines:\n"
                    f"{logs}{last_probe}"
                )
            time.sleep(1)


# --- down -----------------------------------------------------------------------------------


def grace_seconds(state: Mapping[str, Any], name: str) -> int:
    """The destroyGraceSeconds the container was created with (0 if unknown, as the provider)."""
    return int((state.get("destroyGraceSeconds") or {}).get(name, _DEFAULT_DESTROY_GRACE_SECONDS))


def stop_container(container: docker.models.containers.Container, grace: int) -> None:
    """The provider's delete: stop with the grace period as timeout, then remove.

    Docker sends the container's stop signal, waits `grace` seconds, then SIGKILLs.
    """
    container.reload()
    if container.attrs["State"].get("Running"):
        container.stop(timeout=grace)


def _remove_volume(client: docker.DockerClient, name: str) -> None:
    client.volumes.get(name).remove()


def destroy(project: str, stack: str, keep_volumes: bool = False, purge: bool = False) -> None:
    """Removes what `up` made for the stack: found by label (the stack's and this
    deployer's marker), so any process can do it, and by the names the state file
    recorded. A real `pulumi up` of the same stack on this engine is left alone.

    Kept: the volumes with `keep_volumes` (not the generated passwords: as in
    Pulumi, a destroy drops the random resources, so the next `up` generates new
    ones and must put them in force on the kept data), volumes declared
    retainOnDelete, and images declared keepLocally (the stand-ins among them).

    `purge` (for tests) also removes the retainOnDelete volumes, and with them the
    state file: nothing of the stack stays, so the next `up` starts from nothing
    instead of finding data initialised with a password it no longer knows.

    One resource that cannot be removed does not stop the others: every failure is
    reported together at the end.
    """
    if keep_volumes and purge:
        raise ValueError("keep_volumes and purge contradict each other")
    client = docker.from_env(timeout=300)
    filters = {"label": [f"{PROJECT_LABEL}={project}", f"{STACK_LABEL}={stack}", f"{MANAGED_LABEL}=true"]}
    state = load_state(stack)
    failures: list[str] = []

    def attempt(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as error:
            failures.append(f"{what}: {error}")
            return
        log(f"removed {what}")

    containers = {c.name: c for c in client.containers.list(all=True, filters=filters)}
    for name in state.get("containers", []):
        with suppress(docker.errors.NotFound):
            containers.setdefault(name, client.containers.get(name))
    for name, container in sorted(containers.items()):
        # Stopped as the provider's delete stops it: destroyGraceSeconds decides
        # whether Postgres shuts down cleanly or is killed.
        with suppress(docker.errors.DockerException):
            stop_container(container, grace_seconds(state, name))
        # v: the anonymous volumes (the secrets) go with the container, as pulumi-docker's removeVolumes.
        attempt(f"container {name}", partial(container.remove, v=True, force=True))

    networks = {n.name for n in client.networks.list(filters=filters)} | set(state.get("networks", []))
    for name in sorted(networks):
        for network in client.networks.list(names=[name]):
            if network.name == name:
                attempt(f"network {name}", network.remove)

    images = {*state.get("builtImages", []), *state.get("removeImages", [])}
    images |= {tag for image in client.images.list(filters=filters) for tag in image.tags}
    for reference in sorted(images):
        # noprune: the untagged parent layers are the classic builder's cache, and
        # pulumi-docker's BuildKit keeps its build cache across a destroy too.
        attempt(f"image {reference}", partial(client.images.remove, reference, noprune=True))

    if not keep_volumes:
        retained = set(state.get("retainedVolumes", []))
        volumes = {v.name for v in client.volumes.list(filters=filters)} | set(state.get("volumes", []))
        for name in sorted(volumes):
            if name in retained and not purge:
                log(f"kept volume {name} (retainOnDelete)")
                continue
            attempt(f"volume {name}", partial(_remove_volume, client, name))

    if keep_volumes:
        if state_path(stack).exists():
            # The volume records stay; the generated values and what was removed are forgotten.
            kept: dict[str, Any] = {key: state[key] for key in _KEPT_WITH_VOLUMES if key in state}
            kept["tls"] = {urn: entry for urn, entry in state.get("tls", {}).items() if entry.get("protected")}
            save_state(stack, kept)
    elif not failures:
        state_path(stack).unlink(missing_ok=True)
    elif state_path(stack).exists():
        # What could not be removed stays recorded for the next `down`; the passwords stay
        # only while a volume initialised with them does.
        volume_left = any(failure.startswith("volume ") for failure in failures)
        save_state(stack, {key: value for key, value in state.items() if volume_left or key != "random"})
    if failures:
        raise DeployError(f"down --stack {stack} left resources behind:\n" + "\n".join(failures))


# --- up / down ------------------------------------------------------------------------------


def standins_enabled() -> bool:
    """Stand-ins replace the official images where no registry is reachable (the default,
    as in .ci/run); hosted runners that can pull postgres and python set LOCAL_DEPLOY_STANDINS=0."""
    return os.environ.get("LOCAL_DEPLOY_STANDINS", "1") == "1"


def standin_config() -> dict[str, object]:
    """Config overrides that point the stack at the local stand-in images (prepare builds them)."""
    from tests.local_deploy.prepare import STANDIN_CONFIG  # lazy: only `up` with stand-ins needs it

    return dict(STANDIN_CONFIG)


def require_standin_images(client: docker.DockerClient) -> None:
    """Before any create: a missing stand-in is one clear error, not a deployment that fails
    halfway with creates running in several threads."""
    from tests.local_deploy.prepare import STANDIN_CONFIG

    for key in ("baseImage", "postgresImage"):
        reference = str(STANDIN_CONFIG[key])
        try:
            client.images.get(reference)
        except docker.errors.ImageNotFound:
            raise DeployError(
                f"the stand-in image {reference} is not on this engine: run "
                "`venv/bin/python -m tests.local_deploy prepare` (or set LOCAL_DEPLOY_STANDINS=0 where a registry "
                "answers)"
            ) from None


def _quiet_aborted_futures() -> None:
    """After a failed `up`, the SDK drops one future per registration that stopped with the
    failure; asyncio logs each from its finalizer ("Future exception was never retrieved"),
    hundreds of tracebacks repeating the one error `up` raised. Those are not logged."""
    loop: asyncio.AbstractEventLoop = _ensure_event_loop()  # type: ignore[no-untyped-call]  # `_sync_await`'s loop
    previous = loop.get_exception_handler()
    if getattr(previous, "quiets_aborted_futures", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), DeployError) and "never retrieved" in str(context.get("message")):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiets_aborted_futures = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def up(
    stack: str = "dev", overrides: Mapping[str, object] | None = None, *, standins: bool | None = None
) -> dict[str, object]:
    """Runs the program as `pulumi up` would, creating every resource; returns the stack outputs.

    Secret outputs are returned in the clear: this is for local tests only. Config is
    Pulumi.yaml's defaults, then the stack file, then the stand-ins (unless
    `standins=False`), then `overrides` (short keys).
    """
    if standins is None:
        standins = standins_enabled()
    config = {**(standin_config() if standins else {}), **(overrides or {})}
    deployer = LocalDeployer(project_name(), stack)
    if standins:
        require_standin_images(deployer.client)
    install(deployer, stack, config)
    values: dict[str, object] = {}

    def program() -> pulumi.Output[Any]:
        with _working_directory(str(PROJECT_DIR)):
            runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")
        root = pulumi_settings.get_root_resource()
        outputs: dict[str, Any] = dict(getattr(root, "outputs", {}))

        async def gather() -> None:
            for name in sorted(outputs):
                values[name] = await pulumi.Output.from_input(outputs[name]).future()

        return pulumi.Output.from_input(gather())

    _quiet_aborted_futures()
    # What pulumi.runtime.test does: run the program, then wait until every
    # registration (and so every create) and every output has finished.
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    log(f"up: stack {stack}, config overrides {json.dumps(config, sort_keys=True)}")
    try:
        _sync_await(run_pulumi_func(lambda: _sync_await(program().future())))
    except BaseException as error:
        deployer.aborted.set()
        # Creates in other threads see the abort within a second or two (a container
        # being replaced may take its stop grace period); they end before `up` does.
        # The longest stop grace the program declares is 60 s (MLflow, Postgres, the proxy).
        if not deployer.wait_idle(timeout=90):
            log("up: some creates were still running after the failure")
        # The SDK reports whichever registration it awaited first, which may be one
        # that only stopped because of the real failure.
        if deployer.first_error is not None and deployer.first_error is not error:
            raise deployer.first_error from None
        raise
    log(f"up: done in {time.monotonic() - deployer.started:.1f}s")
    return values


def down(stack: str = "dev", keep_volumes: bool = False, *, purge: bool = False) -> None:
    """Removes the stack's containers, networks, built images and (unless keep_volumes) volumes;
    with `purge`, the retainOnDelete volumes and the state file too (tests start from nothing)."""
    destroy(project_name(), stack, keep_volumes=keep_volumes, purge=purge)
