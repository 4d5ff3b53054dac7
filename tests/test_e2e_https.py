"""End to end: the HTTPS front door in each mode, in the real Docker engine.

prod with `tlsMode: internal` is the main case: the MLflow client logs in over HTTPS
trusting only the stack's `ca_certificate`; the proxy holds the server certificate Pulumi
issued from that root and its own key, and no CA key anywhere (image, secrets, volume);
after the state is lost, a new root and a certificate from it; a certificate near its
end is re-issued by `up`. `provided` and `acme` each get a stack of their own; `acme`
runs against a real ACME server (a second Caddy acting as a private CA with its
`acme_server` directive), as step-ca or a company CA would.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import docker
import pytest
import requests
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from docker.models.containers import Container
from mlflow.tracking import MlflowClient

from tests import e2e
from tests.certs import issued_by, self_signed
from tools.local_deploy import deployer
from tools.local_deploy import state as local_state

pytestmark = pytest.mark.docker

# Not 443/80: the CI machine may serve something there; prod keeps its 0.0.0.0 binding.
PROD_OVERRIDES = {"publicHost": "localhost", "httpsPort": 8443, "httpPort": 8080}
# Issue 19: a 1 GiB artifact still passes through the proxy (Caddy 2.11.5 and 2.11.6 cut some streams off).
BIG_ARTIFACT_MB = 1024
_DER = serialization.Encoding.DER
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)
# Where the proxy may write or is given files: its secrets, Caddy's storage volume, the
# Caddyfile's scratch volume, and its tmpfs mounts. The rest is the image (docker export).
_PROXY_MOUNTS = ("run/secrets", "var/lib/mlflow-proxy", "etc/caddy", "data", "config", "tmp")


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


def _root(deployed: e2e.Deployed) -> x509.Certificate:
    return x509.load_pem_x509_certificate(str(deployed.outputs["ca_certificate"]).encode())


def _fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(_DER)).hexdigest()[:16] + "..."


def _openssl_text(certificate: x509.Certificate) -> list[str]:
    """`openssl x509 -text`'s lines that say what the certificate may do (empty without openssl)."""
    if shutil.which("openssl") is None:
        return []
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text"], input=pem, capture_output=True, check=True
    ).stdout.decode()
    lines = [line.strip() for line in text.splitlines()]
    wanted = ("Issuer:", "Not After", "X509v3 Basic Constraints", "X509v3 Key Usage", "X509v3 Extended Key Usage")
    found = []
    for index, line in enumerate(lines):
        if line.startswith(wanted):
            found.append(line + (f" {lines[index + 1]}" if line.startswith("X509v3") else ""))
    return found


def _refused(port: int) -> bool:
    """Nothing accepts on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except ConnectionRefusedError:
        return True
    return False


def _public_key(pem: bytes) -> PublicKeyTypes | None:
    """The public half of a PEM private key; None for one `cryptography` cannot load (a GOST
    self-test key in a library: not an ECDSA P-256 root's, which it always loads)."""
    try:
        return serialization.load_pem_private_key(pem, password=None).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _private_keys(archive: IO[bytes], prefix: str = "") -> dict[str, list[PublicKeyTypes | None]]:
    """Every PEM private key in a tar stream: path -> the public keys of the keys it holds."""
    found: dict[str, list[PublicKeyTypes | None]] = {}
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            keys = [_public_key(block.group(0)) for block in _PEM_PRIVATE_KEY.finditer(handle.read())]
            if keys:
                found[prefix + member.name] = keys
    return found


def _keys_in_the_proxy(proxy: Container, scratch: Path) -> dict[str, list[PublicKeyTypes | None]]:
    """The private keys in the proxy's whole filesystem: its image (docker export, written to
    `scratch` first) and every mount (read by the proxy's own user, which owns what it writes)."""
    exported = scratch / "proxy-rootfs.tar"
    with exported.open("wb") as handle:
        for chunk in proxy.export():
            handle.write(chunk)
    with exported.open("rb") as handle:
        found = _private_keys(handle, "image:/")
    exported.unlink()
    result = proxy.exec_run(["tar", "-cf", "-", "-C", "/", *_PROXY_MOUNTS], demux=True)
    stdout, stderr = result.output
    assert result.exit_code == 0, stderr
    return {**found, **_private_keys(io.BytesIO(stdout or b""), "mount:/")}


def _storage(proxy: Container) -> list[str]:
    """What Caddy's storage volume holds; never a CA of Caddy's own (its pki app's `pki/`)."""
    listing: list[str] = proxy.exec_run(["find", "/var/lib/mlflow-proxy"]).output.decode().split()
    assert not [path for path in listing if "/pki" in path], listing
    return listing


def _follow(prod: e2e.Deployed, again: e2e.Deployed) -> None:
    """The module's later tests see the stack as it now is: its outputs, its root in the CA
    file this process trusts, the admin's password (a destroy forgets the generated ones)."""
    prod.outputs.update(again.outputs)
    Path(os.environ["REQUESTS_CA_BUNDLE"]).write_text(str(prod.outputs["ca_certificate"]))
    os.environ["MLFLOW_TRACKING_PASSWORD"] = str(prod.outputs["admin_password"])


def _status(path: str, auth: tuple[str, str]) -> tuple[int, bytes]:
    """GET `path` through the front door exactly as written (requests would normalise it)."""
    context = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
    connection = http.client.HTTPSConnection("localhost", 8443, timeout=10, context=context)
    basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        connection.request("GET", path, headers={"Authorization": f"Basic {basic}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _forget_tls_state(stack: str) -> None:
    """As a lost Pulumi state (or `pulumi state delete` of the CA): the next `up` makes a new root."""
    state = local_state.load_state(stack)
    state.pop("tls", None)
    local_state.save_state(stack, state)


def _age_server_certificate(stack: str, days_left: int) -> None:
    """As if the server certificate had been issued long ago: it ends `days_left` days from now."""
    state = local_state.load_state(stack)
    [entry] = [entry for urn, entry in state["tls"].items() if "locallySignedCert:LocallySignedCert" in urn]
    end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days_left)
    entry["outputs"]["validityEndTime"] = end.strftime("%Y-%m-%dT%H:%M:%SZ")
    local_state.save_state(stack, state)


def test_tracking_over_https_with_login(prod: e2e.Deployed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert prod.tracking_uri == "https://localhost:8443"
    client = MlflowClient(prod.tracking_uri)
    seed = e2e.write_seed(client, tmp_path / "artifact")
    e2e.verify_seed(client, seed, tmp_path / "download")
    # Without the CA the same client refuses the server: the trust is really in ca_certificate.
    for key in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(key)
    # No retries: MLflow's client retries a failed handshake with backoff for about 4 minutes
    # (its defaults) before it raises, which is all this would otherwise measure.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        MlflowClient(prod.tracking_uri).search_experiments(max_results=1)


def test_plain_http_is_not_served_in_internal_mode(prod: e2e.Deployed) -> None:
    # A client configured with http:// would send its password in clear text before any
    # redirect: nothing listens (httpPort 8080 here stands for 80).
    assert _refused(8080)
    e2e.report("internal mode: http://localhost:8080 (httpPort) connection refused, not published")


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


def test_the_certificate_names_the_public_host_and_the_root_issued_it(prod: e2e.Deployed, tmp_path: Path) -> None:
    root = _root(prod)
    # A client that trusts the root alone, nothing else.
    root_file = tmp_path / "root-only.pem"
    root_file.write_text(str(prod.outputs["ca_certificate"]))
    _, certificate = _handshake(8443, "localhost", str(root_file))
    assert _names(certificate) == ["localhost"]
    # Named after the stack (its network carries the project and stack name): whose root it is.
    assert root.subject.rfc4514_string() == f"CN={prod.outputs['network_name']} root CA,O=mlflow-platform"
    # Issued by the root itself (in Pulumi), for a server and nothing else: it can sign nothing.
    certificate.verify_directly_issued_by(root)
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    ]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == datetime.timedelta(days=90)
    response = requests.get(f"{prod.tracking_uri}/health", verify=str(root_file), timeout=10)
    assert (response.status_code, response.headers["Strict-Transport-Security"]) == (200, "max-age=31536000")
    e2e.report(f"a client trusting only the root connects: {_names(certificate)}, HSTS on")
    for line in _openssl_text(certificate) or [f"issuer {certificate.issuer.rfc4514_string()}, CA:FALSE"]:
        e2e.report(f"served certificate (openssl x509 -text): {line}")


def test_the_proxy_is_the_only_published_port(prod: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    published = {
        container.name: container.attrs["HostConfig"]["PortBindings"]
        for container in docker_client.containers.list(filters={"label": "com.pulumi.stack=prod"})
        if container.attrs["HostConfig"]["PortBindings"]
    }
    # HTTPS only: port 80 (httpPort) is published in acme mode alone.
    assert published == {
        str(prod.outputs["proxy_container_name"]): {"8443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8443"}]}
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
    key_mode = proxy.exec_run(["stat", "-c", "%a %u", "/run/secrets/tls.key"]).output.decode().strip()
    assert key_mode == "400 10002"


def test_no_ca_key_anywhere_in_the_proxy(
    prod: e2e.Deployed, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    proxy = prod.container(docker_client, "proxy")
    keys = _keys_in_the_proxy(proxy, tmp_path)
    _, served = _handshake(8443, "localhost", os.environ["REQUESTS_CA_BUNDLE"])
    root = _root(prod)
    # The root's key (the one that can sign for any name its clients trust) is nowhere.
    assert not [path for path, found in keys.items() if root.public_key() in found]
    # Of what the proxy is given or writes, the only private key is the served certificate's
    # own, a secret file; the image's are its libraries' self-test keys.
    mounted = {path: found for path, found in keys.items() if path.startswith("mount:")}
    assert mounted == {"mount:/run/secrets/tls.key": [served.public_key()]}
    assert served.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    in_image = {path: len(found) for path, found in keys.items() if path.startswith("image:")}
    # Caddy's storage volume holds no CA of its own (its pki app is not configured).
    _storage(proxy)
    e2e.report(
        f"private keys in the proxy's mounts ({', '.join('/' + m for m in _PROXY_MOUNTS)}): {sorted(mounted)}, "
        f"the served CA:FALSE certificate's own; in its image (docker export): {in_image}, none the root's; "
        "the root's key: nowhere"
    )


def test_metrics_answer_404_at_the_door(prod: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    auth = (str(prod.outputs["admin_username"]), str(prod.outputs["admin_password"]))
    # With the admin's credentials, who may read them on the stack network; in every spelling
    # that reaches MLflow's /metrics route.
    variants = [
        "/metrics",
        "/metrics/",
        "/METRICS",
        "//metrics",
        "/metrics?a=1",
        "/%6detrics",
        "/x/../metrics",
        "/metrics;x",
    ]
    answers = {}
    for path in variants:
        answers[path], body = _status(path, auth)
        assert b"mlflow_http_request" not in body, path
    assert set(answers.values()) == {404}, answers
    # Behind the door the scrape works, as the README's Prometheus does it: on the stack network.
    basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    scrape = prod.container(docker_client, "proxy").exec_run(
        ["wget", "-q", "-O", "-", "--header", f"Authorization: Basic {basic}", "http://mlflow:5000/metrics"]
    )
    assert scrape.exit_code == 0, scrape.output[-500:]
    assert b"mlflow_http_request" in scrape.output
    e2e.report(
        f"/metrics through the front door with the admin's credentials: {answers}; "
        "http://mlflow:5000/metrics on the stack network: 200 with metrics"
    )


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
    uploaded, downloaded = e2e.big_artifact_round_trip(client, run_id, tmp_path, BIG_ARTIFACT_MB)
    e2e.report(f"{BIG_ARTIFACT_MB} MiB through the proxy: up {uploaded:.1f}s, down {downloaded:.1f}s")


def test_no_credential_in_the_proxy_log(prod: e2e.Deployed, docker_client: docker.DockerClient) -> None:
    password = str(prod.outputs["admin_password"])
    basic = base64.b64encode(f"admin:{password}".encode()).decode()
    logs = prod.container(docker_client, "proxy").logs().decode(errors="replace")
    access = [json.loads(line) for line in logs.splitlines() if '"http.log.access' in line]
    assert access, "no access log line"
    assert password not in logs
    assert basic not in logs
    assert all(entry["request"]["headers"].get("Authorization") in (None, ["REDACTED"], []) for entry in access)


def test_a_redeploy_keeps_the_ca_root(prod: e2e.Deployed, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    root = str(prod.outputs["ca_certificate"])
    # What Caddy's pki app stored in the volume before Pulumi issued the certificate: an
    # intermediate CA's key below the root clients trust. The kept volume must lose it.
    stale = "/var/lib/mlflow-proxy/pki/authorities/mlflow"
    planted = prod.container(docker_client, "proxy").exec_run(
        ["sh", "-c", f"mkdir -p {stale} && echo stale > {stale}/intermediate.key"]
    )
    assert planted.exit_code == 0, planted.output
    deployer.down(prod.stack, keep_volumes=True)
    again = e2e.redeploy(prod)
    _follow(prod, again)
    assert again.outputs["ca_certificate"] == root
    # Clients that trusted the old root are served without a change.
    ca_file = tmp_path / "old-root.pem"
    ca_file.write_text(root)
    assert requests.get(f"{again.tracking_uri}/health", verify=str(ca_file), timeout=10).status_code == 200
    left = prod.container(docker_client, "proxy").exec_run(["ls", "/var/lib/mlflow-proxy"]).output.decode().split()
    assert "pki" not in left, left
    e2e.report(
        f"CA root after down --keep-volumes and up: unchanged (sha256 {_fingerprint(_root(prod))}); "
        f"a stale pki/ in the kept volume removed at start (left: {left})"
    )


def test_a_lost_state_makes_a_new_root_and_the_proxy_serves_from_it(prod: e2e.Deployed, tmp_path: Path) -> None:
    auth = (str(prod.outputs["admin_username"]), str(prod.outputs["admin_password"]))
    (tmp_path / "before").mkdir()
    with e2e.trusting(prod, tmp_path / "before", auth):
        client = MlflowClient(prod.tracking_uri)
        experiment = client.create_experiment("written-before-a-new-root")
        run_id = client.create_run(experiment).info.run_id
        client.log_param(run_id, "root", "old")
        client.log_metric(run_id, "loss", 0.125, step=3)
        artifact = tmp_path / "before.txt"
        artifact.write_text("written under the old root\n")
        client.log_artifact(run_id, str(artifact))
    old_root = _root(prod)
    _, old_served = _handshake(8443, "localhost", os.environ["REQUESTS_CA_BUNDLE"])

    # Destroyed with the data volumes kept, and the state (the root among it) gone.
    deployer.down(prod.stack, keep_volumes=True)
    _forget_tls_state(prod.stack)
    again = e2e.redeploy(prod)
    _follow(prod, again)
    new_root = _root(prod)
    assert new_root.public_key() != old_root.public_key()

    new_file, old_file = tmp_path / "new-root.pem", tmp_path / "old-root.pem"
    new_file.write_text(str(prod.outputs["ca_certificate"]))
    old_file.write_text(old_root.public_bytes(serialization.Encoding.PEM).decode())
    _, served = _handshake(8443, "localhost", str(new_file))
    served.verify_directly_issued_by(new_root)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(8443, "localhost", str(old_file))

    auth = (str(prod.outputs["admin_username"]), str(prod.outputs["admin_password"]))
    (tmp_path / "after").mkdir()
    with e2e.trusting(prod, tmp_path / "after", auth):
        client = MlflowClient(prod.tracking_uri)
        found = client.get_experiment_by_name("written-before-a-new-root")
        assert found is not None
        assert found.experiment_id == experiment
        run = client.get_run(run_id)
        assert run.data.params == {"root": "old"}
        assert run.data.metrics == {"loss": 0.125}
        local = client.download_artifacts(run_id, "before.txt", str(tmp_path / "download"))
        assert Path(local).read_text() == "written under the old root\n"
    e2e.report(
        f"state lost, volumes kept, up: new root (sha256 {_fingerprint(new_root)}, was {_fingerprint(old_root)}); "
        f"served certificate issued by it (was issued by {old_served.issuer.rfc4514_string()}); a client trusting "
        "only the new ca_certificate reads the run, metric and artifact written before; the old root is refused"
    )


def test_up_renews_the_server_certificate_in_its_last_30_days(prod: e2e.Deployed) -> None:
    cafile = os.environ["REQUESTS_CA_BUNDLE"]
    _, before = _handshake(8443, "localhost", cafile)
    _age_server_certificate(prod.stack, days_left=29)
    root = str(prod.outputs["ca_certificate"])
    again = e2e.redeploy(prod)
    _follow(prod, again)
    assert again.outputs["ca_certificate"] == root
    _, after = _handshake(8443, "localhost", cafile)
    after.verify_directly_issued_by(_root(prod))
    assert after.serial_number != before.serial_number
    left = after.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert left > datetime.timedelta(days=89)
    e2e.report(
        f"server certificate with 29 days left: `up` re-issued it from the same root "
        f"(serial {before.serial_number:x} -> {after.serial_number:x}, now {left.days} days left)"
    )


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
        # Plain HTTP is not published outside acme mode (httpPort 7080 here).
        assert _refused(7080)
        _storage(deployed.container(docker_client, "proxy"))
        # The API behind it, logged in, trusting only the company CA.
        auth = (str(deployed.outputs["admin_username"]), str(deployed.outputs["admin_password"]))
        search = f"{deployed.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(search, auth=auth, verify=str(ca_file), timeout=10).status_code == 200
        assert requests.get(search, verify=str(ca_file), timeout=10).status_code == 401
        e2e.report(
            f"provided certificate served for {_names(served)}, HSTS on, logged-in API call 200, "
            "http on httpPort 7080: connection refused"
        )


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

    image = STANDIN_CADDY_IMAGE if deployer.standins_enabled() else "caddy:2.11.7"
    # The default bridge's gateway is the host's docker0 address.
    gateway = e2e.gateway(docker_client.networks.get("bridge"))
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
        # ACME alone publishes port 80: HTTP-01 (just used) and the redirect to a fixed target.
        assert set(proxy.attrs["HostConfig"]["PortBindings"]) == {"8443/tcp", "8080/tcp"}
        path = "/api/2.0/mlflow/experiments/search?x=1"
        response = requests.get(
            f"http://127.0.0.1{path}", headers={"Host": ACME_HOST}, allow_redirects=False, timeout=10
        )
        assert (response.status_code, response.headers["Location"]) == (308, f"https://{ACME_HOST}{path}")
        e2e.report(f"acme mode: port 80 published, http:// answers 308 to {response.headers['Location']}")
        # ACME's account and the certificate in the volume; no CA of Caddy's own.
        stored = [path.removeprefix("/var/lib/mlflow-proxy/") for path in _storage(proxy) if path.endswith(".key")]
        e2e.report(f"acme mode: private keys in the storage volume: {stored}")
