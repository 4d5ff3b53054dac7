"""Runs the Pulumi program under Pulumi's own mocks and records what it declares.

The mocks behave like the engine where the tests depend on it: `RandomPassword`
and `RandomString` results come back as secrets (plain mocks return them in the
clear), images get a `repoDigest`, computed outputs use the provider's camelCase
names. A recording monitor keeps each registration's parent and resource options
(protect, retainOnDelete, dependsOn), which the mocks API does not pass on.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import runpy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format  # type: ignore[import-untyped]
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc, settings
from pulumi.runtime.proto import resource_pb2

from tools.stack_config import PROJECT_DIR, project_name, runtime_config, stack_config

SECRET_SIG = {rpc._special_sig_key: rpc._special_secret_sig}


def secret(value: object) -> dict[str, object]:
    """An output value the SDK will deserialize as a secret."""
    return {**SECRET_SIG, "value": value}


def is_secret(value: object) -> bool:
    return rpc.is_rpc_secret(value)


def unwrap(value: Any) -> Any:
    """Inputs with every secret wrapper removed, as a provider would see them."""
    if rpc.is_rpc_secret(value):
        return unwrap(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value


def contains_secret(value: Any) -> bool:
    if rpc.is_rpc_secret(value):
        return True
    if isinstance(value, dict):
        return any(contains_secret(item) for item in value.values())
    if isinstance(value, list):
        return any(contains_secret(item) for item in value)
    return False


@dataclass
class Registration:
    """One resource as the program registered it."""

    type: str
    name: str
    urn: str
    custom: bool
    parent: str
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    # A changed value replaces the resource (`replacement_trigger`); None: none declared.
    replacement_trigger: Any
    replace_on_changes: list[str]
    dependencies: list[str]
    # URNs this resource was known by before (its `aliases`, resolved as the engine does).
    aliases: list[str]
    # Input name -> URNs it was computed from, as the engine hands them to stack policies.
    property_dependencies: dict[str, list[str]]
    raw_inputs: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    def secret_inputs(self) -> set[str]:
        """Top-level input names whose value is, or contains, a secret."""
        return {key for key, value in self.raw_inputs.items() if contains_secret(value)}


class EngineMocks(pulumi.runtime.Mocks):
    """Copies inputs to outputs and adds what the providers compute."""

    def __init__(self) -> None:
        self.registrations: dict[str, Registration] = {}
        self.pending_options: dict[tuple[str, str], dict[str, Any]] = {}
        # URN -> what a component passed to register_outputs (secrets unwrapped).
        self.registered_outputs: dict[str, dict[str, Any]] = {}

    # Subclasses (the local deployer) override this to realise the resource.
    def create(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return _computed_outputs(args.typ, args.name, inputs)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        inputs = unwrap(args.inputs)
        resource_id, outputs = self.create(args, inputs)
        options = self.pending_options.pop((args.typ, args.name), {})
        registration = Registration(
            type=args.typ,
            name=args.name,
            custom=bool(args.custom),
            raw_inputs=args.inputs,
            inputs=inputs,
            outputs={key: unwrap(value) for key, value in outputs.items()},
            **options,
        )
        self.registrations[registration.urn] = registration
        return resource_id, {**args.inputs, **outputs}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        raise NotImplementedError(f"the program made an unexpected provider call: {args.token}")

    # Queries used by the tests.
    def of_type(self, type_token: str) -> list[Registration]:
        return [r for r in self.registrations.values() if r.type == type_token]

    def one(self, type_token: str, name_suffix: str = "") -> Registration:
        found = [r for r in self.of_type(type_token) if r.name.endswith(name_suffix)]
        if len(found) != 1:
            raise AssertionError(f"expected one {type_token} named *{name_suffix}, found {[r.name for r in found]}")
        return found[0]


def _digest(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("/".join(parts).encode()).hexdigest()


# When the mocks' certificates begin: fixed, so their validity outputs never differ between runs.
_MOCK_ISSUED = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _computed_outputs(type_token: str, name: str, inputs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Outputs the real providers compute, with their camelCase names."""
    resource_id = f"{name}-id"
    outputs: dict[str, Any] = {}
    if type_token in ("random:index/randomPassword:RandomPassword", "random:index/randomString:RandomString"):
        length = int(inputs.get("length", 16))
        value = hashlib.sha256(name.encode()).hexdigest()[:length].ljust(length, "x")
        outputs["result"] = secret(value)
        if type_token.endswith("RandomPassword"):
            outputs["bcryptHash"] = secret(f"$2a$10${value}")
    elif type_token == "docker:index/image:Image":
        image_name = str(inputs.get("imageName", name))
        digest = _digest(image_name, repr(sorted((inputs.get("build") or {}).get("args", {}).items())))
        outputs.update(repoDigest=digest, baseImageName=image_name, context=(inputs.get("build") or {}).get("context"))
    elif type_token == "docker:index/remoteImage:RemoteImage":
        digest = _digest(str(inputs["name"]))
        outputs.update(repoDigest=f"{inputs['name']}@{digest}", imageId=digest)
        resource_id = digest
    elif type_token == "tls:index/privateKey:PrivateKey":
        # pulumi-tls marks the private key secret (additionalSecretOutputs).
        outputs["privateKeyPem"] = secret(f"-----BEGIN EC PRIVATE KEY-----\n{name}\n-----END EC PRIVATE KEY-----\n")
        outputs["publicKeyPem"] = f"-----BEGIN PUBLIC KEY-----\n{name}\n-----END PUBLIC KEY-----\n"
    elif type_token in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
        hours = int(inputs.get("validityPeriodHours", 0))
        outputs.update(
            certPem=f"-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n",
            # A fixed issue time: the declarations stay the same from one run to the next.
            validityStartTime=_MOCK_ISSUED.strftime("%Y-%m-%dT%H:%M:%SZ"),
            validityEndTime=(_MOCK_ISSUED + datetime.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            readyForRenewal=False,
        )
    elif type_token == "tls:index/certRequest:CertRequest":
        outputs["certRequestPem"] = f"-----BEGIN CERTIFICATE REQUEST-----\n{name}\n-----END CERTIFICATE REQUEST-----\n"
    elif type_token == "docker:index/network:Network":
        outputs.update(name=inputs.get("name", name), driver=inputs.get("driver", "bridge"))
    elif type_token == "docker:index/volume:Volume":
        outputs.update(name=inputs.get("name", name), mountpoint=f"/var/lib/docker/volumes/{name}/_data")
    elif type_token == "docker:index/container:Container":
        # An attached (one-shot) container has exited by the time the create returns.
        outputs.update(name=inputs.get("name", name), exitCode=0 if inputs.get("attach") else None, networkDatas=[])
    return resource_id, outputs


_STACK_TYPE = "pulumi:pulumi:Stack"


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """Keeps the registration options the mocks API drops."""

    def __init__(self, mocks: EngineMocks) -> None:
        super().__init__(mocks)
        self._engine_mocks = mocks

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type != "pulumi:pulumi:Stack":
            self._engine_mocks.pending_options[(request.type, request.name)] = {
                "urn": urn,
                "parent": request.parent,
                "protect": bool(request.protect),
                "retain_on_delete": bool(request.retainOnDelete),
                "delete_before_replace": bool(request.deleteBeforeReplace),
                "replacement_trigger": json_format.MessageToDict(request.replacement_trigger)
                if request.HasField("replacement_trigger")
                else None,
                "replace_on_changes": list(request.replaceOnChanges),
                "dependencies": list(request.dependencies),
                # Without alias specs (GetDeploymentInfo below) the SDK sends resolved URNs.
                "aliases": [*request.aliasURNs, *(alias.urn for alias in request.aliases if alias.urn)],
                "property_dependencies": {
                    key: list(dependencies.urns) for key, dependencies in request.propertyDependencies.items()
                },
            }
        return super().RegisterResource(request)  # type: ignore[no-untyped-call]

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        """The engine's URN: every ancestor's type but the root stack's.

        The SDK's mock monitor names only the parent's type, so a grandparent whose type
        changed would keep its grandchildren's URNs under mocks, yet `pulumi up` would
        replace them (tests/test_upgrade_keeps_resources.py relies on the difference).
        """
        parent_type = parent.split("::")[2] if parent else _STACK_TYPE
        qualified = type_ if parent_type == _STACK_TYPE else f"{parent_type}${type_}"
        return "urn:pulumi:" + "::".join([pulumi.get_stack(), pulumi.get_project(), qualified, name])

    def GetDeploymentInfo(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        # Without alias specs the SDK resolves each alias (a changed parent, type or name,
        # inherited from the parent's own aliases) to the full URN the engine would match.
        info = super().GetDeploymentInfo(request)  # type: ignore[no-untyped-call]
        features = [f for f in info.supportedFeatures if f != resource_pb2.RESOURCE_MONITOR_FEATURE_ALIAS_SPECS]
        return resource_pb2.DeploymentInfo(supportedFeatures=features)

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        outputs = json_format.MessageToDict(request.outputs, preserving_proto_field_name=True)
        self._engine_mocks.registered_outputs[request.urn] = unwrap(outputs)
        return super().RegisterResourceOutputs(request)  # type: ignore[no-untyped-call]


@contextmanager
def _working_directory(path: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# Keys the README says to set with `pulumi config set --secret`: the CLI hands them to
# the program flagged as secret, and so do the tests.
SECRET_CONFIG_KEYS = (
    "tlsPrivateKey",
    "artifactSecretAccessKey",
    "backupSecretAccessKey",
    "imageRegistryPassword",
    "externalDatabaseUrl",
)


def install(
    mocks: EngineMocks,
    stack: str,
    overrides: Mapping[str, object] | None = None,
    secret_keys: tuple[str, ...] = SECRET_CONFIG_KEYS,
) -> None:
    """Fresh mocks, fresh root stack, the stack's configuration: what `pulumi up` starts from."""
    settings.ROOT.set(None)
    pulumi.runtime.set_all_config(
        runtime_config(stack_config(stack, overrides)), [f"{project_name()}:{key}" for key in secret_keys]
    )
    pulumi.runtime.set_mocks(mocks, project=project_name(), stack=stack, preview=False, monitor=RecordingMonitor(mocks))


def run_program(
    stack: str = "dev",
    overrides: Mapping[str, object] | None = None,
    mocks: EngineMocks | None = None,
) -> tuple[EngineMocks, dict[str, pulumi.Output[Any]]]:
    """Runs __main__.py; returns the mocks and the stack outputs (Outputs, still to be awaited)."""
    mocks = mocks or EngineMocks()
    install(mocks, stack, overrides)
    with _working_directory(str(PROJECT_DIR)):
        runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")
    root = settings.get_root_resource()
    outputs: dict[str, pulumi.Output[Any]] = dict(getattr(root, "outputs", {}))
    return mocks, outputs


def resolved(
    outputs: Mapping[str, pulumi.Output[Any]], check: Callable[[dict[str, Any], set[str]], None]
) -> pulumi.Output[None]:
    """Awaits every stack output, then calls `check(values, secret_names)`."""
    names = sorted(outputs)

    async def _gather() -> None:
        values: dict[str, Any] = {}
        secret_names: set[str] = set()
        for name in names:
            output = pulumi.Output.from_input(outputs[name])
            values[name] = await output.future()
            if await output.is_secret():
                secret_names.add(name)
        check(values, secret_names)

    return pulumi.Output.from_input(_gather())
