"""The local deployer's logic that needs no Docker engine: refusals, random values, conversions.

The deployer must refuse whatever it does not implement (an ignored input would
make an end-to-end run look like it tested something it did not), and its random
values must honour the same rules as terraform-provider-random's.
"""

from __future__ import annotations

import datetime
import io
import stat
import string
import tarfile
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import pulumi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from tests.certs import self_signed
from tests.conftest import CONTAINER, IMAGE, NETWORK, RANDOM_PASSWORD
from tests.harness import EngineMocks, is_secret, run_program
from tools.local_deploy import lifecycle, prepare
from tools.local_deploy import state as local_state
from tools.local_deploy.common import NODE_VOLUME_LABEL, DeployError, UnsupportedInputError, UnsupportedResourceError
from tools.local_deploy.container_config import container_config, duration_ns, network_attachments, upload_archive
from tools.local_deploy.deployer import LocalDeployer
from tools.local_deploy.docker_realise import push_target, realise_network
from tools.local_deploy.inputs import COMPONENT_PREFIX, SERVICE, check_inputs
from tools.local_deploy.randoms import generate_random

DEFAULT_SPECIAL = "!@#$%&*()-_=+[]{}<>:?"
_PAIR = self_signed(["mlflow.example.internal"])
PROVIDED_TLS = {"tlsMode": "provided", "tlsCertificate": _PAIR.certificate, "tlsPrivateKey": _PAIR.key}
# A multi-node swarm: the built images are pushed to a registry with a login, which every service carries (`auth`).
SWARM_WITH_REGISTRY = {
    "engine": "swarm",
    "imageRegistry": "registry.example.internal:5000",
    "imageRegistryUsername": "ci",
    "imageRegistryPassword": "registry-password-of-the-ci-user",
    "mlflowReplicas": 3,
    "artifactStore": "s3",
    "artifactBucket": "ml-artifacts",
    "bindAddress": "0.0.0.0",
}
ACME_TLS = {
    "tlsMode": "acme",
    "acmeEmail": "ops@example.com",
    "acmeDirectoryUrl": "https://ca.example.internal/acme/directory",
    "acmeCaCertificate": self_signed(["ca.example.internal"], ca=True).certificate,
}


@pytest.fixture
def local_deployer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalDeployer:
    """A deployer whose state file lives in a temporary directory; it never reaches Docker here."""
    monkeypatch.setattr(local_state, "STATE_DIR", tmp_path / "local-deploy")
    return LocalDeployer("mlflow-platform", "unit")


def _args(type_token: str, name: str, inputs: dict[str, Any]) -> pulumi.runtime.MockResourceArgs:
    return pulumi.runtime.MockResourceArgs(typ=type_token, name=name, inputs=inputs, custom=True)


# --- Refusals -------------------------------------------------------------------------------


def test_an_unimplemented_input_is_refused_naming_resource_and_input(local_deployer: LocalDeployer) -> None:
    inputs = {"image": "sha256:abc", "name": "c", "privileged": True}
    with pytest.raises(UnsupportedInputError, match=r"'db-container'.*'privileged'"):
        local_deployer.create(_args(CONTAINER, "db-container", inputs), inputs)
    # The first failure stops the creates still running in other threads.
    assert local_deployer.aborted.is_set()


def test_an_unimplemented_nested_input_is_refused_with_its_path() -> None:
    healthcheck = {"tests": ["CMD", "true"], "startInterval": "1s"}
    with pytest.raises(UnsupportedInputError, match=r"'db-container'.*'healthcheck\.startInterval'"):
        check_inputs(CONTAINER, "db-container", {"image": "x", "healthcheck": healthcheck})
    ports = [{"internal": 5000, "external": 5000}, {"internal": 5001, "hostIp": "10.0.0.1"}]
    with pytest.raises(UnsupportedInputError, match=r"'web'.*'ports\[1\]\.hostIp'"):
        check_inputs(CONTAINER, "web", {"image": "x", "ports": ports})


def test_a_build_option_the_deployer_ignores_is_refused() -> None:
    build = {"context": "./mlflow", "platform": "linux/arm64"}
    with pytest.raises(UnsupportedInputError, match=r"'img'.*'build\.platform'"):
        check_inputs(IMAGE, "img", {"imageName": "x:1", "skipPush": True, "build": build})


def test_a_push_without_registry_is_refused_before_any_build(local_deployer: LocalDeployer) -> None:
    inputs = {"imageName": "registry.example.com/x:1", "build": {"context": "."}}
    with pytest.raises(UnsupportedInputError, match=r"'img'.*without `registry`"):
        local_deployer.create(_args(IMAGE, "img", inputs), inputs)


_REGISTRY = {"server": "registry.example.com:5000"}


@pytest.mark.parametrize(
    ("image_name", "registry", "refusal"),
    [
        # The login would be sent to another registry than the one pushed to.
        ("other.example.com/p/x:1", _REGISTRY, r"not in registry\.server"),
        ("registry.example.com:5000:1", _REGISTRY, r"not in registry\.server"),
        ("registry.example.com:5000/x@sha256:" + "a" * 64, _REGISTRY, "a digest"),
        ("registry.example.com:5000/x:1", {**_REGISTRY, "username": "ci"}, "together"),
        ("registry.example.com:5000/x:1", {**_REGISTRY, "password": "p"}, "together"),
    ],
)
def test_a_push_the_deployer_cannot_do_as_declared_is_refused(
    image_name: str, registry: dict[str, str], refusal: str
) -> None:
    with pytest.raises(UnsupportedInputError, match=rf"'img'.*{refusal}"):
        push_target("img", {"imageName": image_name, "registry": registry})


def test_a_push_goes_to_the_image_names_repository_with_the_registry_login() -> None:
    assert push_target("img", {"imageName": "x:1", "skipPush": True}) is None
    assert push_target("img", {"imageName": "registry.example.com:5000/p/mlflow:3.1", "registry": _REGISTRY}) == (
        "registry.example.com:5000/p/mlflow",
        "3.1",
        None,
    )
    login = {**_REGISTRY, "username": "ci", "password": "s3cret"}
    assert push_target("img", {"imageName": "registry.example.com:5000/p/mlflow", "registry": login}) == (
        "registry.example.com:5000/p/mlflow",
        "latest",
        {"username": "ci", "password": "s3cret", "serveraddress": "registry.example.com:5000"},
    )


def test_an_unimplemented_registry_input_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match=r"'img'.*'registry\.insecure'"):
        check_inputs(IMAGE, "img", {"imageName": "r/x:1", "registry": {"server": "r", "insecure": True}})


class _FakeImages:
    def __init__(self, push_stream: list[dict[str, Any]]) -> None:
        self.push_stream = push_stream
        self.pushed: list[tuple[str, str, object]] = []

    def get(self, name: str) -> Any:
        return type("Image", (), {"id": "sha256:" + "b" * 64, "attrs": {"Size": 1e6}})()

    def push(self, repository: str, tag: str, **kwargs: Any) -> Any:
        assert kwargs["stream"]
        assert kwargs["decode"]
        self.pushed.append((repository, tag, kwargs["auth_config"]))
        return iter(self.push_stream)


class _FakeClient:
    def __init__(self, push_stream: list[dict[str, Any]]) -> None:
        self.images = _FakeImages(push_stream)
        self.api = type("Api", (), {"build": staticmethod(lambda **_: iter([{"stream": "Step 1/1 : FROM x"}]))})()


_PUSH_INPUTS = {
    "imageName": "registry.example.com:5000/p/mlflow:3.1",
    "build": {"context": "./mlflow"},
    "skipPush": False,
    "registry": {**_REGISTRY, "username": "ci", "password": "s3cret"},
}


def test_a_pushed_images_repo_digest_is_the_registrys_digest_of_its_repository(local_deployer: LocalDeployer) -> None:
    digest = "sha256:" + "c" * 64
    fake = _FakeClient([{"status": "Pushed", "id": "abc"}, {"aux": {"Tag": "3.1", "Digest": digest, "Size": 1}}])
    local_deployer._local.client = fake
    _, outputs = local_deployer.create(_args(IMAGE, "img", _PUSH_INPUTS), dict(_PUSH_INPUTS))
    assert outputs["repoDigest"] == f"registry.example.com:5000/p/mlflow@{digest}"
    assert outputs["imageName"] == _PUSH_INPUTS["imageName"]
    login = {"username": "ci", "password": "s3cret", "serveraddress": "registry.example.com:5000"}
    assert fake.images.pushed == [("registry.example.com:5000/p/mlflow", "3.1", login)]


@pytest.mark.parametrize(
    ("stream", "failure"),
    [
        (
            [{"status": "Preparing"}, {"errorDetail": {"message": "denied"}, "error": "denied: requested access"}],
            "denied",
        ),
        ([{"status": "Pushed"}], "gave no digest"),
    ],
)
def test_a_push_the_registry_refuses_or_leaves_undigested_fails_the_deployment(
    local_deployer: LocalDeployer, stream: list[dict[str, Any]], failure: str
) -> None:
    local_deployer._local.client = _FakeClient(stream)
    with pytest.raises(DeployError, match=rf"(?s)'img'.*{failure}"):
        local_deployer.create(_args(IMAGE, "img", _PUSH_INPUTS), dict(_PUSH_INPUTS))


def test_an_unimplemented_random_input_is_refused() -> None:
    # `number`: the provider's deprecated spelling of `numeric`.
    with pytest.raises(UnsupportedInputError, match=r"'pw'.*'number'"):
        check_inputs(RANDOM_PASSWORD, "pw", {"length": 32, "number": False})


@pytest.mark.parametrize("unset", [None, "", [], {}])
def test_unset_inputs_are_not_refused(unset: object) -> None:
    check_inputs(CONTAINER, "c", {"image": "x", "privileged": unset, "ports": [{"internal": 1, "hostIp": unset}]})


def test_an_unknown_resource_type_is_refused_naming_type_and_resource(local_deployer: LocalDeployer) -> None:
    token = "docker:index/plugin:Plugin"
    with pytest.raises(UnsupportedResourceError, match=r"'volume-plugin'.*docker:index/plugin:Plugin"):
        local_deployer.create(_args(token, "volume-plugin", {"name": "s"}), {"name": "s"})


def test_the_programs_own_components_create_nothing(local_deployer: LocalDeployer) -> None:
    args = pulumi.runtime.MockResourceArgs(typ="mlflow-platform:stack:MlflowPlatform", name="mlflow", inputs={})
    assert local_deployer.create(args, {}) == ("", {})


class _CheckingMocks(EngineMocks):
    """Runs the refusal logic over everything the program declares, without creating anything."""

    def create(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if not args.typ.startswith(COMPONENT_PREFIX):
            check_inputs(args.typ, args.name, inputs)
        return super().create(args, inputs)


@pytest.mark.parametrize(
    ("stack", "overrides"),
    [
        ("dev", {}),
        ("dev", {"authEnabled": True, "corsAllowedOrigins": ["https://ml.example.com"]}),
        ("staging", {}),
        ("prod", {}),
        ("prod", PROVIDED_TLS),
        ("prod", ACME_TLS),
        ("prod", {**PROVIDED_TLS, **SWARM_WITH_REGISTRY}),
    ],
    ids=["dev", "dev-auth-cors", "staging", "prod", "prod-provided", "prod-acme", "prod-swarm-registry"],
)
def test_the_deployer_implements_every_input_the_program_declares(stack: str, overrides: dict[str, object]) -> None:
    """Otherwise `python -m tools.local_deploy up` would refuse the program itself."""
    mocks = _CheckingMocks()

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        _, outputs = run_program(stack, overrides, mocks)
        return pulumi.Output.all(*outputs.values())

    run()
    assert mocks.of_type(SERVICE if overrides.get("engine") == "swarm" else CONTAINER)


# --- TLS keys and certificates ---------------------------------------------------------------

TLS_KEY = "tls:index/privateKey:PrivateKey"
TLS_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CA_INPUTS: dict[str, Any] = {
    "subject": {"commonName": "unit root CA", "organization": "mlflow-platform"},
    "isCaCertificate": True,
    "maxPathLength": 1.0,
    "validityPeriodHours": 87600.0,
    "allowedUses": ["cert_signing", "crl_signing", "digital_signature"],
    "setSubjectKeyId": True,
}


def test_a_ca_is_made_as_pulumi_tls_declares_it_and_kept_while_inputs_stay(local_deployer: LocalDeployer) -> None:
    key_inputs = {"algorithm": "ECDSA", "ecdsaCurve": "P256"}
    _, key = local_deployer.create(_args(TLS_KEY, "ca-key", key_inputs), key_inputs)
    private_pem = key["privateKeyPem"]["value"]
    assert is_secret(key["privateKeyPem"])
    loaded = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.curve.name == "secp256r1"

    cert_inputs = {**CA_INPUTS, "privateKeyPem": private_pem}
    _, cert = local_deployer.create(_args(TLS_CERT, "ca-root", cert_inputs), cert_inputs)
    root = x509.load_pem_x509_certificate(cert["certPem"].encode())
    assert root.subject.rfc4514_string() == "CN=unit root CA,O=mlflow-platform"
    assert root.issuer == root.subject
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(True, 1)
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.key_cert_sign, usage.crl_sign, usage.digital_signature) == (True, True, True)
    assert (usage.key_encipherment, usage.content_commitment) == (False, False)
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days == 3650
    assert root.public_key() == loaded.public_key()
    # The same inputs give the same certificate, as Pulumi state would.
    _, again = local_deployer.create(_args(TLS_CERT, "ca-root", cert_inputs), cert_inputs)
    assert again["certPem"] == cert["certPem"]


def test_an_unimplemented_tls_input_is_refused() -> None:
    with pytest.raises(UnsupportedInputError, match="'earlyRenewalHours'"):
        check_inputs(TLS_CERT, "ca-root", {**CA_INPUTS, "earlyRenewalHours": 24.0})
    with pytest.raises(UnsupportedInputError, match="'uris'"):
        check_inputs(TLS_REQUEST, "server-request", {"privateKeyPem": "k", "uris": ["spiffe://x"]})
    with pytest.raises(UnsupportedInputError, match=r"'subject\.country'"):
        check_inputs(TLS_REQUEST, "server-request", {"privateKeyPem": "k", "subject": {"country": "DE"}})
    with pytest.raises(UnsupportedInputError, match="'caPrivateKeyPemWo'"):
        check_inputs(TLS_SIGNED, "server-cert", {**SERVER_INPUTS, "caPrivateKeyPemWo": "k"})


TLS_REQUEST = "tls:index/certRequest:CertRequest"
TLS_SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
SERVER_INPUTS: dict[str, Any] = {
    "isCaCertificate": False,
    "validityPeriodHours": 2160.0,
    "earlyRenewalHours": 720.0,
    "allowedUses": ["digital_signature", "key_encipherment", "server_auth"],
    "setSubjectKeyId": True,
}
_P256 = {"algorithm": "ECDSA", "ecdsaCurve": "P256"}


def _make(deployer: LocalDeployer, type_token: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The outputs, secrets unwrapped."""
    _, outputs = deployer.create(_args(type_token, name, inputs), inputs)
    return {key: value["value"] if is_secret(value) else value for key, value in outputs.items()}


def _root_and_request(deployer: LocalDeployer, request_inputs: dict[str, Any]) -> dict[str, Any]:
    """A root CA, and a server key and request: the inputs of the certificate the root signs."""
    ca_key = _make(deployer, TLS_KEY, "ca-key", _P256)["privateKeyPem"]
    root = _make(deployer, TLS_CERT, "ca-root", {**CA_INPUTS, "privateKeyPem": ca_key})["certPem"]
    server_key = _make(deployer, TLS_KEY, "server-key", _P256)["privateKeyPem"]
    request = _make(deployer, TLS_REQUEST, "server-request", {**request_inputs, "privateKeyPem": server_key})
    return {**SERVER_INPUTS, "certRequestPem": request["certRequestPem"], "caPrivateKeyPem": ca_key, "caCertPem": root}


def test_the_root_signs_a_server_certificate_as_pulumi_tls_does(local_deployer: LocalDeployer) -> None:
    subject = {"commonName": "mlflow.example.internal", "organization": "mlflow-platform"}
    inputs = _root_and_request(local_deployer, {"subject": subject, "dnsNames": ["mlflow.example.internal"]})
    request = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
    assert request.is_signature_valid
    assert request.subject.rfc4514_string() == "CN=mlflow.example.internal,O=mlflow-platform"
    outputs = _make(local_deployer, TLS_SIGNED, "server-cert", inputs)
    certificate = x509.load_pem_x509_certificate(outputs["certPem"].encode())
    root = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
    # Signed by the root, for the request's subject, names and key.
    certificate.verify_directly_issued_by(root)
    assert (certificate.subject, certificate.issuer) == (request.subject, root.subject)
    assert certificate.public_key() == request.public_key()
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mlflow.example.internal"]
    # Not a CA; a TLS server's usages and nothing else.
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(
        False, None
    )
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.digital_signature, usage.key_encipherment, usage.key_cert_sign, usage.crl_sign) == (
        True,
        True,
        False,
        False,
    )
    extended = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(extended) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    # As Go's x509: the root's subject key id as the authority key id.
    root_id = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    authority = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert authority.key_identifier == root_id
    assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days == 90
    assert outputs["validityEndTime"] == certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (outputs["readyForRenewal"], outputs["caKeyAlgorithm"]) == (False, "ECDSA")
    # Kept while the inputs stay and the end is further than earlyRenewalHours away.
    assert _make(local_deployer, TLS_SIGNED, "server-cert", inputs)["certPem"] == outputs["certPem"]


def test_a_request_for_an_ip_address_names_it_as_one(local_deployer: LocalDeployer) -> None:
    inputs = _root_and_request(local_deployer, {"subject": {"commonName": "10.1.2.3"}, "ipAddresses": ["10.1.2.3"]})
    certificate = x509.load_pem_x509_certificate(_make(local_deployer, TLS_SIGNED, "cert", inputs)["certPem"].encode())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert names.get_values_for_type(x509.DNSName) == []


def test_a_certificate_within_its_early_renewal_window_is_reissued(local_deployer: LocalDeployer) -> None:
    inputs = _root_and_request(local_deployer, {"subject": {"commonName": "m.example"}, "dnsNames": ["m.example"]})
    first = _make(local_deployer, TLS_SIGNED, "server-cert", inputs)
    # As if the certificate had been issued 61 days ago: 29 days left, inside the 30-day window.
    key = "tls:index/locallySignedCert:LocallySignedCert::server-cert"
    local_deployer.state["tls"][key]["outputs"]["validityEndTime"] = (
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=29)
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    renewed = _make(local_deployer, TLS_SIGNED, "server-cert", inputs)
    assert renewed["certPem"] != first["certPem"]
    assert ("renewed", "server-cert") in [(event, name) for _, event, name in local_deployer.events]
    certificate = x509.load_pem_x509_certificate(renewed["certPem"].encode())
    assert (certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days >= 89
    # The renewed one is kept in its turn (and recorded: the next `up` finds it).
    assert _make(local_deployer, TLS_SIGNED, "server-cert", inputs)["certPem"] == renewed["certPem"]
    assert local_state.load_state("unit")["tls"][key]["outputs"]["certPem"] == renewed["certPem"]


def test_a_ca_key_that_does_not_match_its_certificate_is_refused(local_deployer: LocalDeployer) -> None:
    inputs = _root_and_request(local_deployer, {"subject": {"commonName": "m.example"}, "dnsNames": ["m.example"]})
    other = _make(local_deployer, TLS_KEY, "other-key", _P256)["privateKeyPem"]
    with pytest.raises(DeployError, match="caPrivateKeyPem and caCertPem do not match"):
        _make(local_deployer, TLS_SIGNED, "server-cert", {**inputs, "caPrivateKeyPem": other})


def test_only_protected_tls_state_survives_down_with_kept_volumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_state, "STATE_DIR", tmp_path / "local-deploy")

    class _NoEngine:
        def __getattr__(self, name: str) -> Any:
            return self

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return []

        def info(self) -> dict[str, Any]:  # not in swarm mode
            return {}

    monkeypatch.setattr("docker.from_env", lambda **_: _NoEngine())
    local_state.save_state(
        "unit",
        {
            "random": {},
            "tls": {"urn:protected": {"protected": True, "outputs": {}}, "urn:open": {"protected": False}},
        },
    )
    lifecycle.destroy("mlflow-platform", "unit", keep_volumes=True)
    assert set(local_state.load_state("unit")["tls"]) == {"urn:protected"}


# --- Random values --------------------------------------------------------------------------


@st.composite
def _random_inputs(draw: st.DrawFn) -> dict[str, Any]:
    classes = {key: draw(st.booleans()) for key in ("upper", "lower", "numeric", "special")}
    if not any(classes.values()):
        classes["lower"] = True
    # A minimum for a class that is switched off would still draw from it, as the
    # provider does; the properties below are about the usual case.
    minimums = {f"min{key.capitalize()}": draw(st.integers(0, 4)) if enabled else 0 for key, enabled in classes.items()}
    length = draw(st.integers(max(1, sum(minimums.values())), 80))
    inputs: dict[str, Any] = {"length": float(length), **classes, **{k: float(v) for k, v in minimums.items()}}
    if draw(st.booleans()):
        inputs["overrideSpecial"] = draw(st.sampled_from(["_-", "!", "#%+"]))
    return inputs


@given(_random_inputs())
def test_random_values_honour_length_classes_and_minimums(inputs: dict[str, Any]) -> None:
    value = generate_random(inputs)
    special = inputs.get("overrideSpecial") or DEFAULT_SPECIAL
    classes = {
        "upper": string.ascii_uppercase,
        "lower": string.ascii_lowercase,
        "numeric": string.digits,
        "special": special,
    }
    assert len(value) == inputs["length"]
    for key, chars in classes.items():
        count = sum(char in chars for char in value)
        if inputs[key]:
            assert count >= inputs[f"min{key.capitalize()}"]
        else:
            assert count == 0, f"{key} is off but {value!r} has some"
    allowed = "".join(chars for key, chars in classes.items() if inputs[key])
    assert set(value) <= set(allowed)


def test_the_programs_password_settings_give_mixed_alphanumerics() -> None:
    inputs = {"length": 32.0, "special": False, "minLower": 1.0, "minUpper": 1.0, "minNumeric": 1.0}
    values = {generate_random(inputs) for _ in range(20)}
    assert len(values) == 20
    for value in values:
        assert len(value) == 32
        assert value.isalnum()
        assert any(c.islower() for c in value)
        assert any(c.isupper() for c in value)
        assert any(c.isdigit() for c in value)


@pytest.mark.parametrize(
    "inputs",
    [
        {"length": 3.0, "minLower": 2.0, "minNumeric": 2.0},
        {"length": 0.0},
        {"length": 8.5},
        {"special": False},
        {"length": 4.0, "upper": False, "lower": False, "numeric": False, "special": False},
    ],
)
def test_impossible_random_inputs_are_refused(inputs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"length|whole number|character class"):
        generate_random(inputs)


def test_a_generated_password_is_kept_in_a_private_state_file(local_deployer: LocalDeployer) -> None:
    inputs = {"length": 32.0, "special": False}
    _, first = local_deployer.create(_args(RANDOM_PASSWORD, "pw", inputs), dict(inputs))
    assert first["result"]["value"]
    path = local_state.state_path("unit")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    # A later `up` (a fresh process) gets the same value back: the data volume was
    # initialised with it. Changed inputs replace it, as the provider would.
    later = LocalDeployer("mlflow-platform", "unit")
    _, again = later.create(_args(RANDOM_PASSWORD, "pw", inputs), dict(inputs))
    assert again["result"] == first["result"]
    longer = {**inputs, "length": 40.0}
    _, replaced = later.create(_args(RANDOM_PASSWORD, "pw", longer), dict(longer))
    assert len(replaced["result"]["value"]) == 40


# --- Conversions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "nanoseconds"),
    [("5s", 5 * 10**9), ("1m30s", 90 * 10**9), ("500ms", 5 * 10**8), ("1h", 3600 * 10**9), ("0s", 0)],
)
def test_healthcheck_durations_become_nanoseconds(duration: str, nanoseconds: int) -> None:
    assert duration_ns(duration) == nanoseconds


@pytest.mark.parametrize("duration", ["5", "5 s", "s", "5d", "1m30"])
def test_malformed_durations_are_refused(duration: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_ns(duration)


def test_an_upload_becomes_a_tar_member_with_owner_group_and_mode() -> None:
    upload = {"file": "/run/secrets/postgres-password", "content": "s3cret", "owner": "999", "group": "998"}
    directory, archive = upload_archive({**upload, "permissions": "0400"})
    assert directory == "/run/secrets"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.uid, member.gid, member.mode) == ("postgres-password", 999, 998, 0o400)
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == b"s3cret"
    _, executable = upload_archive({**upload, "executable": True})
    with tarfile.open(fileobj=io.BytesIO(executable)) as tar:
        assert tar.getmembers()[0].mode == 0o744


def test_an_upload_owned_by_a_user_name_is_refused() -> None:
    with pytest.raises(ValueError, match="numeric id"):
        upload_archive({"file": "/run/secrets/x", "content": "x", "owner": "postgres"})


# --- Networks ---------------------------------------------------------------------------------


def test_a_container_joins_each_network_in_order_with_its_own_aliases() -> None:
    inputs = {"networksAdvanced": [{"name": "p-front", "aliases": ["mlflow"]}, {"name": "p-db", "aliases": []}]}
    # The first at create, the others before the start.
    assert network_attachments("c", inputs) == [("p-front", ["mlflow"]), ("p-db", None)]
    assert network_attachments("c", {"networkMode": "none"}) == []


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"networkMode": "bridge", "networksAdvanced": [{"name": "n"}]}, "'c': networkMode and networksAdvanced"),
        ({"networksAdvanced": [{"name": "n"}, {"name": "n", "aliases": ["a"]}]}, "names the network n twice"),
    ],
)
def test_networks_a_container_cannot_join_are_refused(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedInputError, match=message):
        network_attachments("c", inputs)


class _NetworkEngine:
    """The part of the Docker SDK `realise_network` uses: networks by name, and their creation."""

    def __init__(self, existing: dict[str, Any] | None = None) -> None:
        self.networks, self.existing = self, existing
        self.created: list[tuple[str, dict[str, Any]]] = []

    def list(self, names: list[str]) -> list[Any]:
        if self.existing is None:
            return []
        return [type("Network", (), {"name": names[0], "attrs": self.existing, "id": "old"})()]

    def create(self, name: str, **options: Any) -> Any:
        self.created.append((name, options))
        return type("Network", (), {"id": "new"})()


@pytest.mark.parametrize("internal", [True, None])
def test_a_network_is_made_internal_as_declared(local_deployer: LocalDeployer, internal: bool | None) -> None:
    engine = _NetworkEngine()
    local_deployer._local.client = engine
    inputs = {"name": "p-db", "driver": "bridge", "internal": internal}
    network_id, outputs = realise_network(local_deployer, _args(NETWORK, "n", inputs), inputs)
    [(name, options)] = engine.created
    assert (name, options["internal"], options["driver"]) == ("p-db", bool(internal), "bridge")
    assert (network_id, outputs["internal"]) == ("new", bool(internal))
    # Recorded for `down`, which removes it with the stack's other networks.
    assert local_deployer.state["networks"] == ["p-db"]


def test_a_network_left_by_an_earlier_up_is_reused_only_if_internal_alike(local_deployer: LocalDeployer) -> None:
    inputs = {"name": "p-db", "driver": "bridge", "internal": True}
    labels = local_deployer.labels(inputs)
    local_deployer._local.client = _NetworkEngine({"Driver": "bridge", "Internal": True, "Labels": labels})
    assert realise_network(local_deployer, _args(NETWORK, "n", inputs), inputs)[0] == "old"
    # The same name, routed out: not the network declared.
    local_deployer._local.client = _NetworkEngine({"Driver": "bridge", "Internal": False, "Labels": labels})
    with pytest.raises(DeployError, match="a different network named p-db already exists"):
        realise_network(local_deployer, _args(NETWORK, "n", inputs), inputs)


# --- down: what stays and what goes -----------------------------------------------------------


class _FakeVolume:
    def __init__(self, engine: _FakeEngine, name: str) -> None:
        self.engine, self.name = engine, name
        self.attrs = {"Labels": {NODE_VOLUME_LABEL: "true"} if name in engine.node_volumes else {}}

    def remove(self) -> None:
        self.engine.volume_names.remove(self.name)


class _FakeNetwork:
    def __init__(self, engine: _FakeEngine, name: str) -> None:
        self.engine, self.name = engine, name

    def remove(self) -> None:
        if self.name in self.engine.busy_networks:
            raise docker.errors.APIError(f"network {self.name} has active endpoints")
        self.engine.network_names.remove(self.name)


class _FakeEngine:
    """The part of the Docker SDK `destroy` uses: labelled volumes and networks, no containers or images."""

    def __init__(
        self,
        volumes: list[str],
        networks: list[str],
        busy_networks: tuple[str, ...] = (),
        node_volumes: tuple[str, ...] = (),
    ) -> None:
        self.volume_names, self.network_names, self.busy_networks = list(volumes), list(networks), busy_networks
        # Named volumes swarm tasks created (service_spec marks them).
        self.node_volumes = node_volumes
        self.containers = self.images = self
        self.volumes = _FakeVolumes(self)
        self.networks = _FakeNetworks(self)

    def list(self, **_: Any) -> list[Any]:  # containers.list, images.list
        return []

    def info(self) -> dict[str, Any]:  # not in swarm mode: no services, secrets or configs to remove
        return {"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}}


class _FakeVolumes:
    def __init__(self, engine: _FakeEngine) -> None:
        self.engine = engine

    def list(self, **_: Any) -> list[_FakeVolume]:
        return [_FakeVolume(self.engine, name) for name in self.engine.volume_names]

    def get(self, name: str) -> _FakeVolume:
        if name not in self.engine.volume_names:
            raise docker.errors.NotFound(name)
        return _FakeVolume(self.engine, name)


class _FakeNetworks:
    def __init__(self, engine: _FakeEngine) -> None:
        self.engine = engine

    def list(self, names: list[str] | None = None, **_: Any) -> list[_FakeNetwork]:
        return [_FakeNetwork(self.engine, n) for n in self.engine.network_names if names is None or n in names]


@pytest.fixture
def stack_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(local_state, "STATE_DIR", tmp_path / "local-deploy")
    local_state.save_state(
        "staging",
        {
            "random": {"urn::password": {"inputs": {"length": 32}, "result": "kept-with-the-data"}},
            "volumes": ["staging-artifacts", "staging-pgdata"],
            "retainedVolumes": ["staging-artifacts", "staging-pgdata"],
            "networks": ["staging-net", "staging-net-db"],
        },
    )
    return local_state.state_path("staging")


def _engine(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> _FakeEngine:
    engine = _FakeEngine(
        ["staging-artifacts", "staging-pgdata", "staging-scratch"], ["staging-net", "staging-net-db"], **kwargs
    )
    monkeypatch.setattr(docker, "from_env", lambda **_: engine)
    return engine


def test_down_keeps_retained_volumes_and_forgets_the_passwords(
    stack_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(monkeypatch)
    lifecycle.destroy("mlflow-platform", "staging")
    # As pulumi destroy: retainOnDelete volumes stay on the engine, out of the state; both networks go.
    assert engine.volume_names == ["staging-artifacts", "staging-pgdata"]
    assert engine.network_names == []
    assert not stack_state.exists()


def test_down_keeps_the_volumes_swarm_tasks_made_as_pulumi_destroy_does_and_purge_removes_them(
    stack_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(monkeypatch, node_volumes=("staging-scratch",))
    lifecycle.destroy("mlflow-platform", "staging")
    # No resource declared it (a task's mount made it on its node): a destroy leaves it, protected or not.
    assert engine.volume_names == ["staging-artifacts", "staging-pgdata", "staging-scratch"]
    lifecycle.destroy("mlflow-platform", "staging", purge=True)
    assert engine.volume_names == []


def test_purge_removes_retained_volumes_too(stack_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(monkeypatch)
    lifecycle.destroy("mlflow-platform", "staging", purge=True)
    assert (engine.volume_names, engine.network_names) == ([], [])
    assert not stack_state.exists()


def test_keep_volumes_keeps_them_but_not_their_passwords(stack_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(monkeypatch)
    lifecycle.destroy("mlflow-platform", "staging", keep_volumes=True)
    assert engine.volume_names == ["staging-artifacts", "staging-pgdata", "staging-scratch"]
    # As `pulumi destroy`: the random resources go, so the next `up` generates new secrets and
    # must put them in force on the kept data (issue 9); the volume records stay.
    state = local_state.load_state("staging")
    assert not state.get("random")
    assert state["volumes"]
    with pytest.raises(ValueError, match="contradict"):
        lifecycle.destroy("mlflow-platform", "staging", keep_volumes=True, purge=True)


def test_one_failed_removal_does_not_stop_the_others(stack_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(monkeypatch, busy_networks=("staging-net",))
    with pytest.raises(DeployError, match=r"left resources behind:\nnetwork staging-net: .*active endpoints"):
        lifecycle.destroy("mlflow-platform", "staging", purge=True)
    assert engine.volume_names == []
    # The record stays while something of the stack does, for the next down; the passwords
    # went with the volumes.
    state = local_state.load_state("staging")
    assert (state["random"], state["networks"]) == ({}, ["staging-net", "staging-net-db"])


# --- The official images, where a registry answers (LOCAL_DEPLOY_STANDINS=0) -----------------

POSTGRES_PIN = "postgres:17.11@sha256:f4c66b820c6f974249089d3d16d86a3698eae11e8746eb6644b2271031e91232"
CADDY_PIN = "caddy:2.11.7@sha256:f2a1290d0463aad60660d4ec134943f183ee2a5f6c3eb7bf32dd984f2f020772"
PYTHON_PIN = "python:3.12-slim-bookworm@sha256:0f5b26b9518d002b6173fd61daad821fa340635ebfec5bba471013f9ca114579"


def test_prepare_pulls_every_committed_stacks_images_once_tags_and_digest_pins() -> None:
    # dev runs Pulumi.yaml's tags; staging and prod the same releases pinned by digest.
    assert prepare.official_images() == [
        "postgres:17.11",
        "python:3.12-slim-bookworm",
        "caddy:2.11.7",
        POSTGRES_PIN,
        PYTHON_PIN,
        CADDY_PIN,
    ]


class _Images:
    """The Docker SDK's image collection, as far as prepare uses it: found by the exact reference."""

    def __init__(self, present: set[str]) -> None:
        self.present, self.pulled = present, list[str]()

    def get(self, reference: str) -> object:
        if reference not in self.present:
            raise docker.errors.ImageNotFound(reference)
        return object()

    def pull(self, reference: str) -> object:
        self.pulled.append(reference)
        self.present.add(reference)
        return object()


def test_a_digest_pinned_reference_is_pulled_whole_unless_present() -> None:
    images = _Images({"postgres:17.11"})
    client = type("Client", (), {"images": images})()
    prepare.ensure_official_images(client, ["postgres:17.11", POSTGRES_PIN, CADDY_PIN])
    # The Docker SDK splits `name:tag@sha256:...` itself and the engine pulls it by digest.
    assert images.pulled == [POSTGRES_PIN, CADDY_PIN]


# --- Task limits ----------------------------------------------------------------------------


def test_ulimits_become_the_docker_sdks(local_deployer: LocalDeployer) -> None:
    inputs = {"image": "img", "ulimits": [{"name": "nproc", "soft": 2304.0, "hard": 2304.0}]}
    config = container_config(local_deployer, _args(CONTAINER, "c", inputs), inputs)
    assert config["ulimits"] == [docker.types.Ulimit(name="nproc", soft=2304, hard=2304)]
    check_inputs(CONTAINER, "c", inputs)


def test_an_incomplete_ulimit_is_refused_not_read_as_unlimited(local_deployer: LocalDeployer) -> None:
    inputs = {"image": "img", "ulimits": [{"name": "nproc", "soft": 64}]}
    with pytest.raises(UnsupportedInputError, match=r"lacks hard"):
        container_config(local_deployer, _args(CONTAINER, "c", inputs), inputs)
    with pytest.raises(UnsupportedInputError, match=r"'ulimits\[0\]\.pids'"):
        check_inputs(CONTAINER, "c", {"ulimits": [{"name": "nproc", "soft": 1, "hard": 1, "pids": 1}]})


def test_with_a_registry_prepare_still_builds_the_test_store_on_prods_pinned_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SeaweedFS is the end-to-end tests' store, not a stand-in: hosted runners need it too."""
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(prepare, "ensure_official_images", lambda _client, refs: calls.append(("pull", refs)))
    monkeypatch.setattr(prepare, "ensure_seaweedfs", lambda _client, base: calls.append(("seaweedfs", base)))
    prepare.prepare(["3.17.2"], client=object(), standins=False)
    assert calls == [("pull", prepare.official_images()), ("seaweedfs", PYTHON_PIN)]
