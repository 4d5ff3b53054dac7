"""TlsProxy, its InternalCa and its Caddyfile: the HTTPS front door, alone and in each shared stack and tlsMode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi_docker as docker
import pytest

from components.proxy import CaddySite, TlsProxy, TlsProxyArgs, caddyfile
from components.settings import TlsSettings
from tests.conftest import CONTAINER, IMAGE, TLS_PRIVATE_KEY, TLS_SELF_SIGNED_CERT, VOLUME
from tests.expected import (
    ACME_ROOT,
    CONFIGURATIONS,
    PROVIDED,
    PROXY_REFERENCE,
    UNIT,
    ImageOf,
    Placeholder,
    built,
    children,
    config_upload,
    containers,
    declared_volume,
    docker_name,
    hardened,
    mode_overrides,
    on_network,
    registered_outputs,
    resolve,
    secret_upload,
    service,
    stopped_with,
    unit_context,
    volumes_of,
)
from tests.harness import EngineMocks, declaration
from tools.local_deploy.inputs import TLS_CERT_REQUEST, TLS_LOCALLY_SIGNED_CERT

INTERNAL_CA = "mlflow-platform:tls:InternalCa"
PROXY_IMAGE = ImageOf(IMAGE, "proxy-image", "repoDigest")
PUBLIC_HOSTS = {"staging": "mlflow.staging.example.internal", "prod": "mlflow.example.internal"}
SHARED_CONFIGURATIONS = [(stack, mode) for stack, mode in CONFIGURATIONS if stack != "dev"]


@dataclass(frozen=True)
class CertOf(Placeholder):
    """The certificate a pulumi-tls SelfSignedCert (the stack's root CA) or LocallySignedCert
    (the server's, issued by that root) produced."""

    resource: str
    type: str = TLS_SELF_SIGNED_CERT

    def resolve(self, mocks: EngineMocks) -> Any:
        return mocks.one(self.type, self.resource).outputs["certPem"]


@dataclass(frozen=True)
class RequestOf(Placeholder):
    """The request a pulumi-tls CertRequest produced."""

    resource: str

    def resolve(self, mocks: EngineMocks) -> Any:
        return mocks.one(TLS_CERT_REQUEST, self.resource).outputs["certRequestPem"]


@dataclass(frozen=True)
class KeyOf(Placeholder):
    """The private key a pulumi-tls PrivateKey produced (secret)."""

    resource: str

    def resolve(self, mocks: EngineMocks) -> Any:
        return mocks.one(TLS_PRIVATE_KEY, self.resource).outputs["privateKeyPem"]


# Where each tlsMode's certificate comes from, as files beside the Caddyfile: public ones
# root-owned, keys the proxy's own and secret. The provided pair and ACME's root arrive stripped.
# In internal mode the server certificate Pulumi issued and its own key: never the root's key.
MODE_UPLOADS: dict[str, list[dict[str, Any]]] = {
    "internal": [
        config_upload("/run/secrets/tls.crt", CertOf("ca-server-cert", TLS_LOCALLY_SIGNED_CERT)),
        secret_upload("/run/secrets/tls.key", KeyOf("ca-server-key"), "10002"),
    ],
    "acme": [config_upload("/run/secrets/acme-ca.crt", ACME_ROOT.certificate.strip())],
    "provided": [
        config_upload("/run/secrets/tls.crt", PROVIDED.certificate.strip()),
        secret_upload("/run/secrets/tls.key", PROVIDED.key.strip(), "10002"),
    ],
}
# What a mode adds to the Caddyfile's site, from tests.expected.MODES.
SITE_EXTRAS: dict[str, dict[str, Any]] = {
    "acme": {
        "acme_email": "ops@example.com",
        "acme_directory_url": "https://acme.example.internal/acme/directory",
        "acme_ca_root": True,
    },
}


def container(
    stack: str,
    site: CaddySite,
    *,
    image: object = PROXY_IMAGE,
    bind: str = "0.0.0.0",
    http_port: int = 80,
    memory_mb: int = 256,
) -> dict[str, Any]:
    """The proxy of `stack` for `site`: in the shared stacks, Pulumi.yaml's ports and memory on every interface."""
    # The stack's only published ports: HTTPS, and plain HTTP only where ACME needs it.
    ports = [{"internal": 8443, "external": site.https_port, "ip": bind, "protocol": "tcp"}]
    if site.tls_mode == "acme":
        ports.append({"internal": 8080, "external": http_port, "ip": bind, "protocol": "tcp"})
    return {
        **hardened(stack, "proxy", memory_mb, 1024),
        **service(stack),
        # Caddy stops accepting and lets requests in flight finish (its grace period is 50 s).
        **stopped_with("SIGTERM", 60),
        **on_network(stack, "proxy"),
        "name": docker_name(stack, "proxy"),
        # The image built on the configured Caddy, by ID.
        "image": image,
        "user": "10002:10002",
        # The image's command, once a stale intermediate CA (Caddy's pki storage) is gone.
        "entrypoints": ["/bin/sh", "-c"],
        "command": [
            "rm -rf -- /var/lib/mlflow-proxy/pki && exec caddy run --config /etc/caddy/Caddyfile --adapter caddyfile"
        ],
        "uploads": [config_upload("/etc/caddy/Caddyfile", caddyfile(site)), *MODE_UPLOADS[site.tls_mode]],
        "volumes": [
            {"volumeName": docker_name(stack, "proxy-data"), "containerPath": "/var/lib/mlflow-proxy"},
            # A scratch volume the Caddyfile is uploaded into (the root is read-only).
            {"containerPath": "/etc/caddy"},
            {"containerPath": "/run/secrets"},
        ],
        "ports": ports,
        "healthcheck": {
            "tests": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/health"],
            "interval": "2s",
            "timeout": "5s",
            "retries": 15,
            "startPeriod": "10s",
        },
        "readOnly": True,
        # Caddy's autosave and instance id need not survive; no anonymous volumes for the image's VOLUMEs.
        "tmpfs": {
            "/config": "rw,noexec,nosuid,nodev,size=16m,uid=10002,gid=10002,mode=0700",
            "/data": "rw,noexec,nosuid,nodev,size=16m,uid=10002,gid=10002,mode=0700",
            "/tmp": "rw,noexec,nosuid,nodev,size=64m",
        },
    }


def _image(image_name: str, caddy: str) -> dict[str, Any]:
    return {
        "imageName": image_name,
        "build": {
            "context": "./mlflow/proxy",
            "dockerfile": "./mlflow/proxy/Dockerfile",
            "args": {"CADDY_IMAGE": caddy},
        },
        # Built where it runs; no registry is involved.
        "skipPush": True,
        "buildOnPreview": False,
    }


def _stack_site(stack: str, mode: str, **changes: Any) -> CaddySite:
    """The site the stack's settings describe, ACME's account and CA included."""
    fields = {"https_port": 443, "upstream": "mlflow:5000", "max_upload_mb": 5120, **SITE_EXTRAS.get(mode, {})}
    return CaddySite(PUBLIC_HOSTS[stack], mode, **{**fields, **changes})


@pytest.mark.parametrize(("stack", "mode"), SHARED_CONFIGURATIONS)
def test_the_proxy_is_the_only_way_in(stack: str, mode: str) -> None:
    mocks = declaration(stack, mode_overrides(mode)).mocks
    proxy = containers(mocks)[docker_name(stack, "proxy")]
    assert proxy.inputs == resolve(container(stack, _stack_site(stack, mode)), mocks)
    # Modes whose uploads carry a key: the engine then stores the whole uploads input as a secret.
    assert proxy.secret_inputs() == ({"uploads"} if mode != "acme" else set())
    assert mocks.one(IMAGE, "proxy-image").inputs == _image(f"mlflow-platform/proxy:{stack}", PROXY_REFERENCE[stack])
    # The proxy's volume (ACME accounts, certificates) is protected with the data.
    assert volumes_of(mocks, "mlflow-proxy-data") == {
        "mlflow-proxy-data": declared_volume(stack, "proxy-data", "proxy")
    }
    # MLflow publishes nothing; the proxy starts once it is healthy.
    server = containers(mocks)[docker_name(stack, "mlflow")]
    assert server.inputs["ports"] == []
    assert server.urn in proxy.dependencies
    # Only the stack's own CA (the stack outputs: tests/test_program.py).
    assert [r.name for r in mocks.of_type(INTERNAL_CA)] == (["mlflow-ca"] if mode == "internal" else [])


def test_the_internal_ca_is_generated_protected() -> None:
    mocks = declaration("prod").mocks
    key = mocks.one(TLS_PRIVATE_KEY, "ca-key")
    root = mocks.one(TLS_SELF_SIGNED_CERT, "ca-root")
    assert key.inputs == {"algorithm": "ECDSA", "ecdsaCurve": "P256"}
    assert root.inputs == {
        "privateKeyPem": key.outputs["privateKeyPem"],
        "subject": {"commonName": "mlflow-platform-prod root CA", "organization": "mlflow-platform"},
        "isCaCertificate": True,
        # As when Caddy's intermediate sat below it (a change would replace it); ten years.
        "maxPathLength": 1,
        "validityPeriodHours": 87600,
        "allowedUses": ["cert_signing", "crl_signing", "digital_signature"],
        "setSubjectKeyId": True,
    }
    # Clients trust this root: protected in a stack that protects its data.
    assert (key.protect, root.protect) == (True, True)


@pytest.mark.parametrize(
    ("host", "names"),
    [
        ("mlflow.example.internal", {"dnsNames": ["mlflow.example.internal"]}),
        ("10.1.2.3", {"ipAddresses": ["10.1.2.3"]}),
        ("2001:db8::5", {"ipAddresses": ["2001:db8::5"]}),
    ],
)
def test_the_root_issues_the_server_certificate_for_the_public_host_only(host: str, names: dict[str, Any]) -> None:
    mocks = declaration("prod", {"publicHost": host}).mocks
    root_key = mocks.one(TLS_PRIVATE_KEY, "ca-key")
    server_key = mocks.one(TLS_PRIVATE_KEY, "ca-server-key")
    request = mocks.one(TLS_CERT_REQUEST, "ca-server-request")
    certificate = mocks.one(TLS_LOCALLY_SIGNED_CERT, "ca-server-cert")
    assert server_key.inputs == {"algorithm": "ECDSA", "ecdsaCurve": "P256"}
    # The one name clients use, and nothing else (MLflow's host check is behind it).
    assert request.inputs == {
        "privateKeyPem": server_key.outputs["privateKeyPem"],
        "subject": {"commonName": host, "organization": "mlflow-platform"},
        **names,
    }
    assert certificate.inputs == {
        "certRequestPem": request.outputs["certRequestPem"],
        "caPrivateKeyPem": root_key.outputs["privateKeyPem"],
        "caCertPem": mocks.one(TLS_SELF_SIGNED_CERT, "ca-root").outputs["certPem"],
        # A server's certificate, not a CA: it can sign nothing.
        "isCaCertificate": False,
        # 90 days, re-issued by any `pulumi up` in the last 30.
        "validityPeriodHours": 2160,
        "earlyRenewalHours": 720,
        "allowedUses": ["digital_signature", "key_encipherment", "server_auth"],
        "setSubjectKeyId": True,
    }
    # The root's key stays in the state: no container is given it, in any form.
    root_key_pem = str(root_key.outputs["privateKeyPem"])
    for registration in mocks.of_type(CONTAINER):
        assert root_key_pem not in str(registration.inputs), registration.name
        assert root_key.urn not in registration.dependencies, registration.name
    # Renewed means replaced: never protected, whatever the stack protects.
    assert (server_key.protect, request.protect, certificate.protect) == (False, False, False)


def _tls(mode: str) -> TlsSettings:
    return TlsSettings(
        mode=mode,
        proxy_image="caddy:2.10.0",
        https_port=8443,
        http_port=8080,
        acme_email="a@m.example",
        acme_directory_url="",
        acme_ca_certificate=ACME_ROOT.certificate.strip(),
        certificate=PROVIDED.certificate.strip(),
        private_key=PROVIDED.key.strip(),
        max_upload_mb=100,
        proxy_memory_mb=128,
    )


# The site the proxy built alone (_proxy_args) serves: what its Caddyfile is made from.
def _alone_site(mode: str) -> CaddySite:
    return CaddySite("m.example", mode, 8443, "tracking:5000", 100, acme_email="a@m.example", acme_ca_root=True)


def _proxy_args(mode: str, **changes: Any) -> TlsProxyArgs:
    args: TlsProxyArgs = {
        "stack": unit_context(),
        "tls": _tls(mode),
        "public_host": "m.example",
        "bind_address": "127.0.0.1",
        "upstream": "tracking:5000",
        "ca_resource_name": "mlflow-ca",
        "start_after": [],
    }
    return {**args, **changes}  # type: ignore[typeddict-item]


PROXY_CHILDREN = {"mlflow-proxy-image": IMAGE, "mlflow-proxy-data": VOLUME, "mlflow-proxy-container": CONTAINER}


@pytest.mark.parametrize("mode", ["internal", "acme", "provided"])
def test_the_proxy_alone(mode: str) -> None:
    def build() -> TlsProxy:
        server = docker.Container("mlflow-server-container", image="mlflow")
        return TlsProxy("mlflow-proxy", _proxy_args(mode, start_after=[server]))

    mocks, proxy = built(build)
    internal = mode == "internal"
    assert children(mocks, "mlflow-proxy") == {**PROXY_CHILDREN, **({"mlflow-ca": INTERNAL_CA} if internal else {})}
    registration = mocks.one(CONTAINER, "proxy-container")
    site = _alone_site(mode)
    expected = container(UNIT, site, bind="127.0.0.1", http_port=8080, memory_mb=128)
    assert registration.inputs == resolve(expected, mocks)
    assert proxy.config == caddyfile(site)
    assert mocks.one(IMAGE).inputs == _image("mlflow-platform/proxy:unit", "caddy:2.10.0")
    assert volumes_of(mocks, "mlflow-proxy-data") == {"mlflow-proxy-data": declared_volume(UNIT, "proxy-data", "proxy")}
    assert mocks.one(CONTAINER, "server-container").urn in registration.dependencies
    assert registered_outputs(mocks, "mlflow-proxy") == {
        "container_name": "mlflow-platform-unit-proxy",
        "data_volume_name": "mlflow-platform-unit-proxy-data",
    }
    # Only the internal mode has a CA of its own, and a root for clients to trust.
    assert ((proxy.internal_ca is None), (proxy.ca_certificate is None)) == (not internal, not internal)
    # The root's key and the server's.
    assert len(mocks.of_type(TLS_PRIVATE_KEY)) == 2 * int(internal)


@pytest.mark.parametrize("protect", [False, True])
def test_the_proxy_owns_its_internal_ca_under_the_name_it_had(protect: bool) -> None:
    mocks, _ = built(
        lambda: TlsProxy("mlflow-proxy", _proxy_args("internal", stack=unit_context(protect_data=protect)))
    )
    assert children(mocks, "mlflow-ca") == {
        "mlflow-ca-key": TLS_PRIVATE_KEY,
        "mlflow-ca-root": TLS_SELF_SIGNED_CERT,
        "mlflow-ca-server-key": TLS_PRIVATE_KEY,
        "mlflow-ca-server-request": TLS_CERT_REQUEST,
        "mlflow-ca-server-cert": TLS_LOCALLY_SIGNED_CERT,
    }
    ca, key, root = mocks.one(INTERNAL_CA), mocks.one(TLS_PRIVATE_KEY, "ca-key"), mocks.one(TLS_SELF_SIGNED_CERT)
    # Declared by the platform before the proxy owned it: the alias keeps its URN (and its children's).
    assert ca.aliases == ["urn:pulumi:dev::mlflow-platform::mlflow-platform:tls:InternalCa::mlflow-ca"]
    assert root.inputs["subject"] == {"commonName": "mlflow-platform-unit root CA", "organization": "mlflow-platform"}
    assert mocks.one(TLS_CERT_REQUEST).inputs["dnsNames"] == ["m.example"]
    assert (key.protect, root.protect) == (protect, protect)
    assert registered_outputs(mocks, "mlflow-ca") == {
        "certificate_pem": root.outputs["certPem"],
        # When the served certificate expires: 90 days after the mocks' fixed issue time.
        "server_certificate_expires": "2026-04-01T00:00:00Z",
    }


def test_dev_stays_plain_http_without_a_proxy() -> None:
    mocks = declaration("dev").mocks
    assert [r.name for r in mocks.registrations.values() if "proxy" in r.name or "-ca" in r.name] == []
    # MLflow publishes itself, on loopback only.
    assert containers(mocks)["mlflow-platform-dev-mlflow"].inputs["ports"] == [
        {"internal": 5000, "external": 5000, "ip": "127.0.0.1", "protocol": "tcp"}
    ]


def test_mlflow_allows_the_host_clients_send_through_the_proxy() -> None:
    found = declaration("prod", {"httpsPort": 8443})
    mocks, values = found.mocks, found.values
    command = containers(mocks)["mlflow-platform-prod-mlflow"].inputs["command"]
    hosts = command[command.index("--allowed-hosts") + 1]
    assert hosts == "mlflow.example.internal,mlflow.example.internal:8443,mlflow,mlflow:5000"
    assert values["tracking_uri"] == "https://mlflow.example.internal:8443"
    proxy = containers(mocks)["mlflow-platform-prod-proxy"]
    assert proxy.inputs == resolve(container("prod", _stack_site("prod", "internal", https_port=8443)), mocks)


def test_the_stacks_upload_limit_reaches_the_proxy() -> None:
    mocks = declaration("prod", {"maxUploadMb": 100}).mocks
    proxy = containers(mocks)["mlflow-platform-prod-proxy"]
    assert proxy.inputs == resolve(container("prod", _stack_site("prod", "internal", max_upload_mb=100)), mocks)


def _site(mode: str, **changes: Any) -> CaddySite:
    fields: dict[str, Any] = {
        "public_host": "mlflow.example.com",
        "tls_mode": mode,
        "https_port": 443,
        "upstream": "mlflow:5000",
        "max_upload_mb": 5120,
    }
    return CaddySite(**{**fields, **changes})


COMMON_LINES = [
    "admin off",
    "storage file_system /var/lib/mlflow-proxy",
    "http_port 8080",
    "https_port 8443",
    "auto_https disable_redirects",
    "default_sni mlflow.example.com",
    "grace_period 50s",
    "strict_sni_host on",
    "protocols h1 h2",
    "read_header 30s",
    "idle 5m",
    "http://:8081 {",
    "bind 127.0.0.1",
    'respond /health "ok" 200',
    "https://mlflow.example.com {",
    "protocols tls1.2 tls1.3",
    # Every mode: a browser records it only from a certificate it trusts (components/proxy.py).
    'header Strict-Transport-Security "max-age=31536000"',
    # MLflow's metrics are for a scraper on the stack network, never through the door.
    "@metrics path /metrics /metrics/*",
    "respond @metrics 404",
    "max_size 5120MiB",
    "reverse_proxy mlflow:5000 {",
    "flush_interval -1",
    "transport http {",
    "keepalive 2s",
    "format json",
]


@pytest.mark.parametrize(
    ("site", "present", "absent"),
    [
        (
            # The certificate Pulumi issued from the stack's root, as a provided one: no CA in Caddy.
            _site("internal"),
            ["tls /run/secrets/tls.crt /run/secrets/tls.key {"],
            ["pki", "issuer", "ca-root", "email", "acme_ca", "http://:8080", "redir https"],
        ),
        (
            # Only ACME publishes port 80: HTTP-01, and the redirect to a fixed target.
            _site("acme", acme_email="ops@example.com"),
            ['email "ops@example.com"', "http://:8080 {", "redir https://mlflow.example.com{uri} 308"],
            ["acme_ca", "pki", "issuer", "/run/secrets/tls"],
        ),
        (
            _site("acme", acme_email="ops@example.com", acme_directory_url="https://ca.example/dir", acme_ca_root=True),
            ['acme_ca "https://ca.example/dir"', "acme_ca_root /run/secrets/acme-ca.crt", "http://:8080 {"],
            ["pki"],
        ),
        (
            _site("provided"),
            ["tls /run/secrets/tls.crt /run/secrets/tls.key {"],
            ["pki", "email", "issuer", "http://:8080", "redir https"],
        ),
    ],
    ids=["internal", "acme", "acme-private-ca", "provided"],
)
def test_caddyfile(site: CaddySite, present: list[str], absent: list[str]) -> None:
    lines = [line.strip() for line in caddyfile(site).splitlines()]
    for line in COMMON_LINES + present:
        assert line in lines, line
    for word in absent:
        assert not any(word in line for line in lines), word
    # Never told to log credentials, never a timeout that would cut a long transfer.
    assert not any(word in line for line in lines for word in ("log_credentials", "read_body", "write "))
    # Nothing that configures Caddy's pki app, which would make a CA (keys and all) in the volume.
    assert not any(word in line for line in lines for word in ("pki", "skip_install_trust", "internal", "local_certs"))


def test_caddyfile_for_an_ipv6_host_on_another_port() -> None:
    text = caddyfile(_site("internal", public_host="2001:db8::5", https_port=8443, max_upload_mb=100))
    assert "https://[2001:db8::5] {" in text
    assert "max_size 100MiB" in text
    # No SNI is sent to an IP address: strict SNI matching would refuse every client.
    assert "strict_sni_host" not in text
    # ACME's redirect names the public port when it is not 443.
    redirect = caddyfile(_site("acme", public_host="mlflow.example.com", https_port=8443, acme_email="a@b.example"))
    assert "redir https://mlflow.example.com:8443{uri} 308" in redirect


def test_caddyfile_refuses_a_mode_without_a_proxy() -> None:
    with pytest.raises(ValueError, match="no proxy for tlsMode 'off'"):
        caddyfile(_site("off"))


def test_the_whole_caddyfile_for_an_internal_ca() -> None:
    # Literal, tabs and all: a renamed directive, a lost brace or indent, or a dropped
    # option shows here even where the line-by-line checks above would still find their lines.
    assert caddyfile(_site("internal")) == (
        "{\n\tadmin off\n\thttp_port 8080\n\thttps_port 8443\n"
        "\tauto_https disable_redirects\n\tstorage file_system /var/lib/mlflow-proxy\n"
        "\tdefault_sni mlflow.example.com\n\tgrace_period 50s\n"
        "\tservers {\n\t\tprotocols h1 h2\n\t\ttimeouts {\n\t\t\tread_header 30s\n\t\t\tidle 5m\n\t\t}\n"
        "\t\tstrict_sni_host on\n\t}\n"
        "\tlog {\n\t\toutput stderr\n\t\tformat json\n\t}\n"
        "}\n\n"
        'http://:8081 {\n\tbind 127.0.0.1\n\trespond /health "ok" 200\n}\n\n'
        "https://mlflow.example.com {\n"
        "\ttls /run/secrets/tls.crt /run/secrets/tls.key {\n\t\tprotocols tls1.2 tls1.3\n\t}\n"
        '\theader Strict-Transport-Security "max-age=31536000"\n'
        "\t@metrics path /metrics /metrics/*\n\trespond @metrics 404\n"
        "\trequest_body {\n\t\tmax_size 5120MiB\n\t}\n"
        "\treverse_proxy mlflow:5000 {\n\t\tflush_interval -1\n\t\ttransport http {\n\t\t\tkeepalive 2s\n\t\t}\n\t}\n"
        "\tlog {\n\t\toutput stdout\n\t\tformat json\n\t}\n"
        "}\n"
    )


@pytest.mark.parametrize("email", ['ops"@example.com', "ops@example.com\nadmin on"])
def test_a_value_that_would_break_out_of_its_token_is_refused(email: str) -> None:
    with pytest.raises(ValueError, match=r"^not a Caddyfile token: "):
        caddyfile(_site("acme", acme_email=email))
