"""End to end: the HTTPS front door in each mode, in the real Docker engine.

prod with `tlsMode: internal` is the main case: the MLflow client logs in over HTTPS
trusting only the stack's `ca_certificate`. `provided` and `acme` each get a stack of
their own; `acme` runs against a real ACME server (a second Caddy acting as a private
CA with its `acme_server` directive), as step-ca or a company CA would.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mlflow.tracking import MlflowClient

from tests import e2e
from tests.certs import issued_by, self_signed
from tools.local_deploy import deployer

pytestmark = pytest.mark.docker

# Not 443/80: the CI machine may serve something there; prod keeps its 0.0.0.0 binding.
PROD_OVERRIDES = {"publicHost": "localhost", "httpsPort": 8443, "httpPort": 8080}
BIG_ARTIFACT_MB = 200
_DER = serialization.Encoding.DER


@pytest.fixture(scope="module")
def prod(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[e2e.Deployed]:
    with e2e.stack("prod", PROD_OVERRIDES) as deployed:
        e2e.report(f"up to healthy: {deployed.seconds_to_healthy:.1f}s (prod stack, tlsMode internal)")
        auth = (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))
        with e2e.trusting(deployed, tmp_path_factory.mktemp("trust"), auth):
            yield deployed


def _handshake(
    port: int, server_name: str, cafile: str | None, maximum: ssl.TLSVersion | None = None
) -> tuple[str, x509.Certificate]:
    """(TLS version, server certificate) of one handshake with 127.0.0.1:port."""
    context = ssl.create_default_context(cafile=cafile)
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
        # OpenSSL's default security level refuses TLS 1.1 on the client side already.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return str(tls.version()), x509.load_der_x509_certificate(der)


def _names(certificate: x509.Certificate) -> list[str]:
    alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name) for name in alt.get_values_for_type(x509.DNSName)]


def test_tracking_over_https_with_login(prod: e2e.Deployed, tmp_path: Path) -> None:
    assert prod.tracking_uri == "https://localhost:8443"
    client = MlflowClient(prod.tracking_uri)
    seed = e2e.write_seed(client, tmp_path / "artifact")
    e2e.verify_seed(client, seed, tmp_path / "download")
    # Without the CA the same client refuses the server: the trust is really in ca_certificate.
    saved = {key: os.environ.pop(key) for key in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "REQUESTS_CA_BUNDLE")}
    try:
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            MlflowClient(prod.tracking_uri).search_experiments(max_results=1)
    finally:
        os.environ.update(saved)


def test_plain_http_redirects_to_https(prod: e2e.Deployed) -> None:
    path = "/api/2.0/mlflow/experiments/search?x=1"
    response = requests.get(f"http://localhost:8080{path}", allow_redirects=False, timeout=10)
    assert response.status_code == 308
    assert response.headers["Location"] == f"https://localhost:8443{path}"


def test_only_tls_1_2_and_1_3(prod: e2e.Deployed) -> None:
    cafile = os.environ["REQUESTS_CA_BUNDLE"]
    version, certificate = _handshake(8443, "localhost", cafile)
    e2e.report(f"handshake with the proxy: {version}, certificate for {_names(certificate)}")
    assert version == "TLSv1.3"
    assert _handshake(8443, "localhost", cafile, ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"
    # The client offers TLS 1.1 (security level 0), so only the server's alert can end it.
    with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION") as refused:
        _handshake(8443, "localhost", cafile, ssl.TLSVersion.TLSv1_1)
    e2e.report(f"TLS 1.1 offered: refused by the proxy ({refused.value.reason})")


def test_the_certificate_names_the_public_host_and_chains_to_the_stack_root(prod: e2e.Deployed) -> None:
    _, certificate = _handshake(8443, "localhost", os.environ["REQUESTS_CA_BUNDLE"])
    assert _names(certificate) == ["localhost"]
    root = x509.load_pem_x509_certificate(str(prod.outputs["ca_certificate"]).encode())
    # Named after the stack (its network carries the project and stack name): whose root it is.
    assert root.subject.rfc4514_string() == f"CN={prod.outputs['network_name']} root CA,O=mlflow-platform"
    # Caddy signs with an intermediate of its own below the root.
    assert certificate.issuer != root.subject


def test_the_proxy_is_the_only_published_port(prod: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    published = {
        container.name: container.attrs["HostConfig"]["PortBindings"]
        for container in docker_client.containers.list(filters={"label": "com.pulumi.stack=prod"})
        if container.attrs["HostConfig"]["PortBindings"]
    }
    assert published == {
        str(prod.outputs["proxy_container_name"]): {
            "8443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8443"}],
            "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
        }
    }
    with pytest.raises(OSError):  # noqa: PT011 - refused or unreachable, either way closed
        socket.create_connection(("127.0.0.1", 5000), timeout=3).close()


def test_the_proxy_is_hardened(prod: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    proxy = prod.container(docker_client, "proxy")
    host = proxy.attrs["HostConfig"]
    assert proxy.attrs["Config"]["User"] == "10002:10002"
    assert (host["ReadonlyRootfs"], host["CapDrop"], host["CapAdd"]) == (True, ["ALL"], None)
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert proxy.attrs["State"]["Health"]["Status"] == "healthy"
    status = proxy.exec_run(["sh", "-c", "grep -E '^(Uid|CapEff):' /proc/1/status"]).output.decode().split()
    assert status[1:3] == ["10002", "10002"]
    assert status[-1] == "0000000000000000"
    key_mode = proxy.exec_run(["stat", "-c", "%a %u", "/run/secrets/ca-root.key"]).output.decode().strip()
    assert key_mode == "400 10002"


def test_hosts_are_checked_at_the_door_and_behind_it(prod: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    url = f"{prod.tracking_uri}/api/2.0/mlflow/experiments/search"
    auth = (str(prod.outputs["admin_username"]), str(prod.outputs["admin_password"]))
    for host, expected in (("localhost:8443", 200), ("evil.example.com", 421)):
        response = requests.post(url, json={"max_results": 1}, headers={"Host": host}, auth=auth, timeout=10)
        assert response.status_code == expected, host
    # On the stack network MLflow's own --allowed-hosts check still answers (401: host fine, no login).
    proxy = prod.container(docker_client, "proxy")
    search = "http://mlflow:5000/api/2.0/mlflow/experiments/search"
    for in_network_host, status in (("mlflow:5000", "401"), ("evil.example.com", "403")):
        command = f"wget -S -O /dev/null --header 'Host: {in_network_host}' {search} 2>&1"
        probe = proxy.exec_run(["sh", "-c", command]).output.decode()
        assert re.search(rf"HTTP/1\.1 {status}", probe), probe


def test_a_big_artifact_goes_up_and_down_through_the_proxy(prod: e2e.Deployed, tmp_path: Path) -> None:
    client = MlflowClient(prod.tracking_uri)
    run_id = client.create_run(client.create_experiment("https-big-artifact")).info.run_id
    artifact = tmp_path / "checkpoint.bin"
    with artifact.open("wb") as handle:
        for _ in range(BIG_ARTIFACT_MB):
            handle.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    started = time.monotonic()
    client.log_artifact(run_id, str(artifact))
    uploaded = time.monotonic() - started
    started = time.monotonic()
    local = client.download_artifacts(run_id, "checkpoint.bin", str(tmp_path / "down"))
    downloaded = time.monotonic() - started
    e2e.report(f"{BIG_ARTIFACT_MB} MB through the proxy: up {uploaded:.1f}s, down {downloaded:.1f}s")
    assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == digest


def test_no_credential_in_the_proxy_log(prod: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    password = str(prod.outputs["admin_password"])
    basic = base64.b64encode(f"admin:{password}".encode()).decode()
    logs = prod.container(docker_client, "proxy").logs().decode(errors="replace")
    access = [json.loads(line) for line in logs.splitlines() if '"http.log.access' in line]
    assert access, "no access log line"
    assert password not in logs
    assert basic not in logs
    assert all(entry["request"]["headers"].get("Authorization") in (None, ["REDACTED"], []) for entry in access)


def test_a_redeploy_keeps_the_ca_root(prod: e2e.Deployed, tmp_path: Path) -> None:
    root = str(prod.outputs["ca_certificate"])
    deployer.down(prod.stack, keep_volumes=True)
    again = e2e.redeploy(prod)
    assert again.outputs["ca_certificate"] == root
    # Clients that trusted the old root are served without a change.
    ca_file = tmp_path / "old-root.pem"
    ca_file.write_text(root)
    assert requests.get(f"{again.tracking_uri}/health", verify=str(ca_file), timeout=10).status_code == 200
    fingerprint = hashlib.sha256(x509.load_pem_x509_certificate(root.encode()).public_bytes(_DER)).hexdigest()
    e2e.report(f"CA root after down --keep-volumes and up: unchanged (sha256 {fingerprint[:16]}...)")


# --- provided ------------------------------------------------------------------------------------


def test_a_provided_certificate_is_served(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    ca = self_signed(["Test Company CA"], ca=True)
    leaf = issued_by(ca, ["localhost"])
    # Ports of its own: the module's prod stack still holds 8443 and 8080.
    overrides = {
        "publicHost": "localhost",
        "httpsPort": 7443,
        "httpPort": 7080,
        "bindAddress": "127.0.0.1",
        "tlsMode": "provided",
        "tlsCertificate": leaf.certificate,
        "tlsPrivateKey": leaf.key,
    }
    with e2e.stack("staging", overrides) as deployed:
        ca_file = tmp_path / "company-ca.pem"
        ca_file.write_text(ca.certificate)
        _, served = _handshake(7443, "localhost", str(ca_file))
        assert served == x509.load_pem_x509_certificate(leaf.certificate.encode())
        response = requests.get(f"{deployed.tracking_uri}/health", verify=str(ca_file), timeout=10)
        assert (response.status_code, response.headers["Strict-Transport-Security"]) == (200, "max-age=31536000")
        assert "ca_certificate" not in deployed.outputs
        # The API behind it, logged in, trusting only the company CA.
        auth = (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))
        search = f"{deployed.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(search, auth=auth, verify=str(ca_file), timeout=10).status_code == 200
        assert requests.get(search, verify=str(ca_file), timeout=10).status_code == 401
        e2e.report(f"provided certificate served for {_names(served)}, HSTS on, logged-in API call 200")


# --- acme ----------------------------------------------------------------------------------------

ACME_HOST = "mlflow.acme.test"
ACME_PORT = 9443
ACME_CADDYFILE = """{{
\tadmin off
\tskip_install_trust
\thttp_port 9080
\thttps_port {port}
\tlocal_certs
}}

https://{address}:{port} {{
\tacme_server
}}
"""


@pytest.fixture
def acme_server(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A private ACME CA on the host network: (directory URL, its root certificate).

    On the host network it validates HTTP-01 the way a public CA does, through the host's
    port 80 that the stack publishes; the stack's proxy reaches it at the Docker bridge's
    gateway address.
    """
    from tools.local_deploy.prepare import STANDIN_CADDY_IMAGE

    image = STANDIN_CADDY_IMAGE if deployer.standins_enabled() else "caddy:2.11.4"
    # The default bridge's gateway is the host's docker0 address; Docker may not spell it out.
    ipam = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    gateway = ipam.get("Gateway") or str(ipaddress.ip_network(ipam["Subnet"])[1])
    config = tmp_path / "Caddyfile"
    config.write_text(ACME_CADDYFILE.format(address=gateway, port=ACME_PORT))
    container = docker_client.containers.run(
        image,
        name="mlflow-platform-test-acme-ca",
        network_mode="host",
        extra_hosts={ACME_HOST: "127.0.0.1"},
        volumes={str(config): {"bind": "/etc/caddy/Caddyfile", "mode": "ro"}},
        labels={"org.mlflow-platform.local-deploy": "true"},
        detach=True,
    )
    try:
        root_path = "/data/caddy/pki/authorities/local/root.crt"
        for _ in range(60):
            found = container.exec_run(["cat", root_path])
            if found.exit_code == 0:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"the ACME CA did not start: {container.logs().decode()[-2000:]}")
        yield f"https://{gateway}:{ACME_PORT}/acme/local/directory", found.output.decode()
    finally:
        container.remove(force=True, v=True)


def test_acme_issues_and_the_proxy_serves_it(acme_server: tuple[str, str], tmp_path: Path) -> None:
    directory, acme_root = acme_server
    overrides = {
        "publicHost": ACME_HOST,
        "bindAddress": "127.0.0.1",
        "tlsMode": "acme",
        "acmeEmail": "ops@example.com",
        "acmeDirectoryUrl": directory,
        "acmeCaCertificate": acme_root,
    }
    deploying = time.monotonic()
    with e2e.stack("staging", overrides) as deployed:
        assert deployed.tracking_uri == f"https://{ACME_HOST}"
        ca_file = tmp_path / "acme-root.pem"
        ca_file.write_text(acme_root)
        started = time.monotonic()
        error: Exception | None = None
        while time.monotonic() - started < 90:
            try:
                version, served = _handshake(443, ACME_HOST, str(ca_file))
                break
            except (ssl.SSLError, OSError) as failure:
                error = failure
                time.sleep(2)
        else:
            proxy = docker.from_env().containers.get(str(deployed.outputs["proxy_container_name"]))
            logs = proxy.logs().decode()[-3000:]
            raise AssertionError(f"no certificate issued by ACME within 90s ({error}); proxy log:\n{logs}")
        waited = time.monotonic() - deploying
        proxy = docker.from_env().containers.get(str(deployed.outputs["proxy_container_name"]))
        challenges = sorted(set(re.findall(r'"challenge_type":\s*"([a-z0-9-]+)"', proxy.logs().decode())))
        e2e.report(
            f"ACME certificate for {_names(served)} served {waited:.1f}s after `up` began "
            f"({version}; challenge {', '.join(challenges) or 'not logged'})"
        )
        assert _names(served) == [ACME_HOST]
        assert "Caddy Local Authority" in served.issuer.rfc4514_string()
