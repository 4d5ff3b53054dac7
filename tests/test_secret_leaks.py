"""No secret in the open, in any stack and any tlsMode: secrets reach a container only as secret 0400 files."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CONTAINER, RANDOM_PASSWORD, TLS_PRIVATE_KEY
from tests.expected import CONFIGURATIONS, mode_overrides
from tests.harness import SECRET_CONFIG_KEYS, declaration

# Where a value is in the open: in `docker inspect`, the process list, the engine's events.
OPEN_INPUTS = ("envs", "command", "entrypoints", "labels", "healthcheck")
# The generated secrets of each kind of stack: MLflow's role and the superuser everywhere;
# the admin's password and the Flask key where basic auth is on.
PASSWORDS = ["mlflow-postgres-password", "mlflow-postgres-superuser-password"]
AUTH_PASSWORDS = [*PASSWORDS, "mlflow-server-admin-password", "mlflow-server-flask-secret-key"]


@pytest.mark.parametrize(("stack", "mode"), CONFIGURATIONS)
def test_no_secret_leaves_its_secret_files(stack: str, mode: str) -> None:
    overrides = mode_overrides(mode)
    found = declaration(stack, overrides)
    mocks = found.mocks
    generated = {r.name: r for r in [*mocks.of_type(RANDOM_PASSWORD), *mocks.of_type(TLS_PRIVATE_KEY)]}
    # Every secret this configuration holds, so the test cannot pass by finding none.
    assert sorted(generated) == sorted(
        (PASSWORDS if stack == "dev" else AUTH_PASSWORDS)
        + (["mlflow-ca-key", "mlflow-ca-server-key"] if mode == "internal" else [])
    )
    secrets = {name: str(r.outputs.get("result") or r.outputs["privateKeyPem"]) for name, r in generated.items()}
    secrets |= {key: str(overrides[key]).strip() for key in SECRET_CONFIG_KEYS if key in overrides}
    assert all(len(value) >= 24 for value in secrets.values()), secrets
    generated_urns = {r.urn for r in generated.values()}

    for container in mocks.of_type(CONTAINER):
        inputs = container.inputs
        exposed = json.dumps({key: inputs.get(key) for key in OPEN_INPUTS})
        for name, value in secrets.items():
            assert value not in exposed, f"{container.name} exposes {name}"
        # Not even transformed: nothing derived from a generated secret flows into an open input.
        for key in OPEN_INPUTS:
            assert not generated_urns & set(container.property_dependencies.get(key, [])), (container.name, key)
        # The only way in is a file the workload alone reads, and the engine stores the uploads as a secret.
        uid = str(inputs["user"]).split(":")[0]
        holding = [u for u in inputs["uploads"] if any(value in str(u["content"]) for value in secrets.values())]
        for upload in holding:
            assert (upload["owner"], upload["group"], upload["permissions"]) == (uid, uid, "0400"), upload["file"]
            assert upload["file"].startswith("/run/secrets/"), upload["file"]
        assert container.secret_inputs() == ({"uploads"} if holding else set()), container.name

    # A stack output that carries a secret is itself secret; the database URI carries the password.
    assert secrets["mlflow-postgres-password"] in found.values["backend_store_uri"]
    for name, value in found.values.items():
        if any(secret in str(value) for secret in secrets.values()):
            assert name in found.secret_outputs, f"stack output {name} carries a secret in the clear"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_store_secret_key_reaches_only_the_server_and_gc_as_their_0400_file(stack: str) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    overrides = {
        "artifactStore": "s3",
        "artifactBucket": "ml-artifacts",
        "artifactAccessKeyId": "AKIAEXAMPLE",
        "artifactSecretAccessKey": secret,
    }
    found = declaration(stack, overrides)
    holders: dict[str, list[dict[str, str]]] = {}
    for container in found.mocks.of_type(CONTAINER):
        inputs = container.inputs
        assert secret not in json.dumps({key: inputs.get(key) for key in OPEN_INPUTS}), container.name
        holding = [u for u in inputs["uploads"] if secret in str(u["content"])]
        if holding:
            holders[str(inputs["name"])] = [
                {k: u[k] for k in ("file", "owner", "group", "permissions")} for u in holding
            ]
            assert container.secret_inputs() == {"uploads"}, container.name
    credentials = {
        "file": "/run/secrets/artifact-store-credentials",
        "owner": "10001",
        "group": "10001",
        "permissions": "0400",
    }
    assert holders == {
        f"mlflow-platform-{stack}-mlflow": [credentials],
        f"mlflow-platform-{stack}-gc": [credentials],
    }
    assert not any(secret in str(value) for value in found.values.values())
