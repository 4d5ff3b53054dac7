"""The HTTPS front door under mocks: what each tlsMode declares, in full."""

from __future__ import annotations

from typing import Any

import pytest

from components.proxy import CaddySite, TlsProxy, TlsProxyArgs, caddyfile
from tests.certs import self_signed
from tests.conftest import CONTAINER, IMAGE, VOLUME
from tests.harness import EngineMocks, Registration, contains_secret, declaration, install

TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
TLS_SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
PROVIDED = self_signed(["mlflow.example.internal"])
ACME_ROOT = self_signed(["acme-ca.example.internal"], ca=True)

MODES: dict[str, dict[str, Any]] = {
    "internal": {},
    "acme": {
        "tlsMode": "acme",
        "acmeEmail": "ops@example.com",
        "acmeDirectoryUrl": "https://acme.example.internal/acme/directory",
        "acmeCaCertificate": ACME_ROOT.certificate,
    },
    "provided": {"tlsMode": "provided", "tlsCertificate": PROVIDED.certificate, "tlsPrivateKey": PROVIDED.key},
}

# Uploads every mode has, then each mode's own: (path, owner, group, mode).
CADDYFILE_UPLOAD = ("/etc/caddy/Caddyfile", "0", "0", "0444")
MODE_UPLOADS = {
    "internal": [
        ("/run/secrets/ca-root.crt", "0", "0", "0444"),
        ("/run/secrets/ca-root.key", "10002", "10002", "0400"),
    ],
    "acme": [("/run/secrets/acme-ca.crt", "0", "0", "0444")],
    "provided": [
        ("/run/secrets/tls.crt", "0", "0", "0444"),
        ("/run/secrets/tls.key", "10002", "10002", "0400"),
    ],
}
# What a mode adds to the Caddyfile's site, from MODES above.
SITE_EXTRAS: dict[str, dict[str, Any]] = {
    "acme": {
        "acme_email": "ops@example.com",
        "acme_directory_url": "https://acme.example.internal/acme/directory",
        "acme_ca_root": True,
    },
}
# Modes whose uploads carry a key: the engine then stores the whole uploads input as a secret.
SECRET_UPLOADS = {"internal": True, "acme": False, "provided": True}


def _proxy(mocks: EngineMocks) -> Registration:
    return mocks.one(CONTAINER, "proxy-container")


def _uploads(container: Registration) -> list[tuple[str, str, str, str]]:
    return [
        (upload["file"], upload["owner"], upload["group"], upload["permissions"])
        for upload in container.inputs["uploads"]
    ]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_proxy_is_the_only_way_in(mode: str) -> None:
    found = declaration("prod", MODES[mode])
    mocks, values = found.mocks, found.values
    proxy = _proxy(mocks)
    inputs = {key: value for key, value in proxy.inputs.items() if key not in ("uploads", "image")}
    assert inputs == {
        "name": "mlflow-platform-prod-proxy",
        "user": "10002:10002",
        "volumes": [
            {"volumeName": "mlflow-platform-prod-proxy-data", "containerPath": "/var/lib/mlflow-proxy"},
            {"containerPath": "/etc/caddy"},
            {"containerPath": "/run/secrets"},
        ],
        "ports": [
            {"internal": 8443, "external": 443, "ip": "0.0.0.0", "protocol": "tcp"},
            {"internal": 8080, "external": 80, "ip": "0.0.0.0", "protocol": "tcp"},
        ],
        "networksAdvanced": [{"name": "mlflow-platform-prod", "aliases": ["proxy"]}],
        "healthcheck": {
            "tests": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8081/health"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "startPeriod": "10s",
        },
        "restart": "unless-stopped",
        "readOnly": True,
        "tmpfs": {
            "/config": "rw,noexec,nosuid,nodev,size=16m,uid=10002,gid=10002,mode=0700",
            "/data": "rw,noexec,nosuid,nodev,size=16m,uid=10002,gid=10002,mode=0700",
            "/tmp": "rw,noexec,nosuid,nodev,size=64m",
        },
        "capabilities": {"drops": ["ALL"]},
        "securityOpts": ["no-new-privileges:true"],
        "memory": 256,
        "memorySwap": 256,
        "logDriver": "json-file",
        "logOpts": {"max-size": "10m", "max-file": "10"},
        "labels": [
            {"label": "com.pulumi.project", "value": "mlflow-platform"},
            {"label": "com.pulumi.stack", "value": "prod"},
            {"label": "org.mlflow-platform.role", "value": "proxy"},
        ],
        "wait": True,
        "waitTimeout": 300,
        "stopSignal": "SIGTERM",
        "stopTimeout": 60,
        "destroyGraceSeconds": 60,
    }
    assert _uploads(proxy) == [CADDYFILE_UPLOAD, *MODE_UPLOADS[mode]]
    assert contains_secret(proxy.raw_inputs["uploads"]) is SECRET_UPLOADS[mode]
    # The Caddyfile is the one the stack's settings describe, ACME's account and CA included.
    site = CaddySite("mlflow.example.internal", mode, 443, "mlflow:5000", 5120, **SITE_EXTRAS.get(mode, {}))
    assert proxy.inputs["uploads"][0]["content"] == caddyfile(site)
    contents = [upload["content"] for upload in proxy.inputs["uploads"][1:]]
    if mode == "provided":
        assert contents == [PROVIDED.certificate.strip(), PROVIDED.key.strip()]
    elif mode == "acme":
        assert contents == [ACME_ROOT.certificate.strip()]
    # It runs the image built on the configured Caddy, by ID.
    image = mocks.one(IMAGE, "proxy-image")
    assert image.inputs == {
        "imageName": "mlflow-platform/proxy:prod",
        "build": {
            "context": "./mlflow/proxy",
            "dockerfile": "./mlflow/proxy/Dockerfile",
            "args": {"CADDY_IMAGE": "caddy:2.11.4"},
        },
        # Built where it runs; no registry is involved.
        "skipPush": True,
        "buildOnPreview": False,
    }
    assert proxy.inputs["image"] == image.outputs["repoDigest"]
    # MLflow publishes nothing; the proxy starts once it is healthy.
    server = mocks.one(CONTAINER, "server-container")
    assert server.inputs.get("ports", []) == []
    assert server.urn in proxy.dependencies
    # The proxy's volume is protected with the data.
    volume = mocks.one(VOLUME, "proxy-data")
    assert (volume.name, volume.protect, volume.retain_on_delete) == ("mlflow-proxy-data", True, True)
    assert values["tracking_uri"] == "https://mlflow.example.internal"
    assert values["proxy_container_name"] == "mlflow-platform-prod-proxy"
    assert ("ca_certificate" in values) is (mode == "internal")


def test_the_internal_ca_is_generated_protected_and_its_key_stays_secret() -> None:
    found = declaration("prod")
    mocks, values, secrets = found.mocks, found.values, found.secret_outputs
    key = mocks.one(TLS_PRIVATE_KEY, "ca-key")
    root = mocks.one(TLS_SELF_SIGNED_CERT, "ca-root")
    assert key.inputs == {"algorithm": "ECDSA", "ecdsaCurve": "P256"}
    assert {name: value for name, value in root.inputs.items() if name != "privateKeyPem"} == {
        "subject": {"commonName": "mlflow-platform-prod root CA", "organization": "mlflow-platform"},
        "isCaCertificate": True,
        "maxPathLength": 1,
        "validityPeriodHours": 87600,
        "allowedUses": ["cert_signing", "crl_signing", "digital_signature"],
        "setSubjectKeyId": True,
    }
    assert root.inputs["privateKeyPem"] == key.outputs["privateKeyPem"]
    assert (key.protect, root.protect) == (True, True)
    # The root's key reaches the proxy only as a secret upload.
    proxy = _proxy(mocks)
    assert key.urn in proxy.property_dependencies["uploads"]
    for other in ("envs", "command", "labels", "healthcheck"):
        assert key.urn not in proxy.property_dependencies.get(other, []), other
    assert values["ca_certificate"] == root.outputs["certPem"]
    assert "ca_certificate" not in secrets


def test_dev_stays_plain_http_without_a_proxy() -> None:
    found = declaration("dev")
    mocks, values = found.mocks, found.values
    assert [c.name for c in mocks.of_type(CONTAINER) if c.name.endswith("proxy-container")] == []
    assert mocks.of_type(TLS_PRIVATE_KEY) == []
    assert values["tracking_uri"] == "http://localhost:5000"
    assert "ca_certificate" not in values


def test_mlflow_allows_the_host_clients_send_through_the_proxy() -> None:
    found = declaration("prod", {"httpsPort": 8443})
    mocks, values = found.mocks, found.values
    command = mocks.one(CONTAINER, "server-container").inputs["command"]
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert hosts[:2] == ["mlflow.example.internal", "mlflow.example.internal:8443"]
    assert values["tracking_uri"] == "https://mlflow.example.internal:8443"
    assert "redir https://mlflow.example.internal:8443{uri} 308" in _caddyfile(mocks)


def test_the_stacks_upload_limit_reaches_the_proxy() -> None:
    mocks = declaration("prod", {"maxUploadMb": 100}).mocks
    assert "\trequest_body {\n\t\tmax_size 100MiB\n\t}\n" in _caddyfile(mocks)


def _caddyfile(mocks: EngineMocks) -> str:
    return str(_proxy(mocks).inputs["uploads"][0]["content"])


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
    "skip_install_trust",
    "auto_https disable_redirects",
    "default_sni mlflow.example.com",
    "grace_period 50s",
    "strict_sni_host on",
    "protocols h1 h2",
    "read_header 30s",
    "idle 5m",
    "http://:8080 {",
    "redir https://mlflow.example.com{uri} 308",
    "http://:8081 {",
    "bind 127.0.0.1",
    'respond /health "ok" 200',
    "https://mlflow.example.com {",
    "protocols tls1.2 tls1.3",
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
            _site("internal"),
            [
                "pki {",
                "ca mlflow {",
                "cert /run/secrets/ca-root.crt",
                "key /run/secrets/ca-root.key",
                "issuer internal {",
            ],
            ["Strict-Transport-Security", "email", "acme_ca"],
        ),
        (
            _site("acme", acme_email="ops@example.com"),
            ['email "ops@example.com"', 'header Strict-Transport-Security "max-age=31536000"'],
            ["acme_ca", "pki {", "issuer internal"],
        ),
        (
            _site("acme", acme_email="ops@example.com", acme_directory_url="https://ca.example/dir", acme_ca_root=True),
            ['acme_ca "https://ca.example/dir"', "acme_ca_root /run/secrets/acme-ca.crt"],
            ["pki {"],
        ),
        (
            _site("provided"),
            ["tls /run/secrets/tls.crt /run/secrets/tls.key {", 'header Strict-Transport-Security "max-age=31536000"'],
            ["pki {", "email", "issuer internal"],
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


def test_caddyfile_for_an_ipv6_host_on_another_port() -> None:
    text = caddyfile(_site("internal", public_host="2001:db8::5", https_port=8443, max_upload_mb=100))
    assert "https://[2001:db8::5] {" in text
    assert "redir https://[2001:db8::5]:8443{uri} 308" in text
    assert "max_size 100MiB" in text
    # No SNI is sent to an IP address: strict SNI matching would refuse every client.
    assert "strict_sni_host" not in text


def test_caddyfile_refuses_a_mode_without_a_proxy() -> None:
    with pytest.raises(ValueError, match="no proxy for tlsMode 'off'"):
        caddyfile(_site("off"))


def test_the_whole_caddyfile_for_an_internal_ca() -> None:
    # Literal, tabs and all: a renamed directive, a lost brace or indent, or a dropped
    # option shows here even where the line-by-line checks above would still find their lines.
    assert caddyfile(_site("internal")) == (
        "{\n\tadmin off\n\thttp_port 8080\n\thttps_port 8443\n\tskip_install_trust\n"
        "\tauto_https disable_redirects\n\tstorage file_system /var/lib/mlflow-proxy\n"
        "\tdefault_sni mlflow.example.com\n\tgrace_period 50s\n"
        "\tservers {\n\t\tprotocols h1 h2\n\t\ttimeouts {\n\t\t\tread_header 30s\n\t\t\tidle 5m\n\t\t}\n"
        "\t\tstrict_sni_host on\n\t}\n"
        "\tlog {\n\t\toutput stderr\n\t\tformat json\n\t}\n"
        '\tpki {\n\t\tca mlflow {\n\t\t\tname "mlflow-platform mlflow.example.com"\n'
        "\t\t\troot {\n\t\t\t\tcert /run/secrets/ca-root.crt\n\t\t\t\tkey /run/secrets/ca-root.key\n\t\t\t}\n"
        "\t\t}\n\t}\n}\n\n"
        "http://:8080 {\n\tredir https://mlflow.example.com{uri} 308\n}\n\n"
        'http://:8081 {\n\tbind 127.0.0.1\n\trespond /health "ok" 200\n}\n\n'
        "https://mlflow.example.com {\n"
        "\ttls {\n\t\tprotocols tls1.2 tls1.3\n\t\tissuer internal {\n\t\t\tca mlflow\n\t\t}\n\t}\n"
        "\trequest_body {\n\t\tmax_size 5120MiB\n\t}\n"
        "\treverse_proxy mlflow:5000 {\n\t\tflush_interval -1\n\t\ttransport http {\n\t\t\tkeepalive 2s\n\t\t}\n\t}\n"
        "\tlog {\n\t\toutput stdout\n\t\tformat json\n\t}\n"
        "}\n"
    )


@pytest.mark.parametrize("email", ['ops"@example.com', "ops@example.com\nadmin on"])
def test_a_value_that_would_break_out_of_its_token_is_refused(email: str) -> None:
    with pytest.raises(ValueError, match=r"^not a Caddyfile token: "):
        caddyfile(_site("acme", acme_email=email))


def _proxy_args(site: CaddySite, **changes: Any) -> TlsProxyArgs:
    args: TlsProxyArgs = {
        "base_image": "caddy:2.11.4",
        "image_name": "t/proxy:t",
        "container_name": "t-proxy",
        "data_volume_name": "t-proxy-data",
        "network_name": "t-net",
        "site": site,
        "bind_address": "0.0.0.0",
        "http_port": 80,
        "ca_certificate": "root",
        "ca_private_key": "key",
        "tls_certificate": PROVIDED.certificate,
        "tls_private_key": PROVIDED.key,
        "acme_ca_certificate": "",
        "memory_mb": 256,
        "protect_data": False,
        "log_max_size": "10m",
        "log_max_files": 3,
        "startup_timeout_seconds": 60,
        "labels": {},
        "start_after": [],
    }
    return {**args, **changes}  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("mode", "missing", "message"),
    [
        ("internal", {"ca_certificate": None}, "tlsMode internal needs the CA's certificate and key"),
        ("internal", {"ca_private_key": None}, "tlsMode internal needs the CA's certificate and key"),
        ("provided", {"tls_private_key": None}, "tlsMode provided needs the private key"),
    ],
)
def test_a_proxy_without_its_key_material_is_refused(mode: str, missing: dict[str, None], message: str) -> None:
    # Settings refuse these first; the component still never starts Caddy without them.
    install(EngineMocks(), "prod")
    site = CaddySite("mlflow.example.internal", mode, 443, "mlflow:5000", 5120)
    with pytest.raises(ValueError, match=r"^tlsMode ") as raised:
        TlsProxy("t", _proxy_args(site, **missing))
    assert str(raised.value) == message
