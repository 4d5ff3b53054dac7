"""The local swarm cluster's pure parts: node and registry specs, addresses, TLS, and `down`'s sweep."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tools.swarm_cluster import cluster, login, spec
from tools.swarm_cluster.__main__ import main
from tools.swarm_cluster.certs import registry_tls

# This machine's bounding set: every capability up to CAP_CHECKPOINT_RESTORE (40) but CAP_SYS_RESOURCE (24).
_HOST_BOUNDING = 0x000001FFFEFFFFFF


def test_capabilities_are_the_bounding_set_the_engine_can_name() -> None:
    assert spec.capabilities(_HOST_BOUNDING) == [
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
        "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
        "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
        "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
        "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
        "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    ]  # fmt: skip
    assert (
        spec.capabilities((1 << 38) | (1 << 39) | (1 << 40)) == []
    )  # PERFMON, BPF, CHECKPOINT_RESTORE: 20.10 refuses them
    assert "SYS_RESOURCE" in spec.capabilities(1 << 24)


def test_bounding_set_is_read_from_proc_status() -> None:
    status = "Name:\tpython\nCapEff:\t0000000000000000\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\n"
    assert spec.bounding_set(status) == _HOST_BOUNDING
    with pytest.raises(spec.ClusterError, match="no CapBnd"):
        spec.bounding_set("Name:\tpython\n")


def test_addresses_put_the_registry_second_on_the_bridge() -> None:
    assert spec.addresses("172.29.231.0/24") == spec.Addresses(
        subnet="172.29.231.0/24", gateway="172.29.231.1", registry_ip="172.29.231.2"
    )
    assert spec.addresses("172.29.231.0/24").registry == "172.29.231.2:5000"
    with pytest.raises(spec.ClusterError, match=r"subnet '172\.29\.231\.5/24' is not an IPv4 network"):
        spec.addresses("172.29.231.5/24")
    with pytest.raises(spec.ClusterError, match="too small"):
        spec.addresses("172.29.231.0/30")


def test_default_subnet_avoids_the_nodes_own_networks() -> None:
    subnet = ipaddress.IPv4Network(spec.DEFAULT_SUBNET)
    for inner in ("172.17.0.0/16", "172.18.0.0/16", "10.0.0.0/8"):
        assert not subnet.overlaps(ipaddress.IPv4Network(inner)), inner


def test_node_label_is_key_equals_value() -> None:
    assert spec.parse_node_label("mlflow-platform.postgres=true") == ("mlflow-platform.postgres", "true")
    for bad in ("mlflow-platform.postgres", "=true", "key="):
        with pytest.raises(spec.ClusterError, match=f"a node label is key=value, got '{bad}'"):
            spec.parse_node_label(bad)


def test_socket_path_must_fit_a_unix_socket(tmp_path: Path) -> None:
    assert spec.socket_path(Path("/s"), 2) == Path("/s/mlflow-cluster-node-2/docker.sock")
    with pytest.raises(spec.ClusterError, match="longer than a unix socket allows"):
        spec.socket_path(Path("/" + "d" * 80), 1)


def test_node_container_spec(tmp_path: Path) -> None:
    made = spec.node_container(
        3, image="dind:x", state_dir=Path("/state"), certs_dir=Path("/state/certs.d"), socket_gid=111, bounding=1 << 21
    )
    assert made == {
        "image": "dind:x",
        "command": [
            "--host", "unix:///run/cluster-engine/docker.sock",
            "--group", "111",
            "--storage-driver", "overlay2",
            "--log-driver", "json-file",
            "--log-opt", "max-size=10m",
            "--log-opt", "max-file=2",
        ],
        "name": "mlflow-cluster-node-3",
        "hostname": "mlflow-cluster-node-3",
        "labels": {"org.mlflow-platform.swarm-cluster": "node"},
        "detach": True,
        "cap_add": ["SYS_ADMIN"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined", "label=disable"],
        "volumes": {
            "mlflow-cluster-node-3-docker": {"bind": "/var/lib/docker", "mode": "rw"},
            "/state/mlflow-cluster-node-3": {"bind": "/run/cluster-engine", "mode": "rw"},
            "/state/certs.d": {"bind": "/etc/docker/certs.d", "mode": "ro"},
        },
        "network": "mlflow-cluster",
        "tmpfs": {"/run": "rw,nosuid,nodev,exec,mode=755"},
    }  # fmt: skip
    # Never --privileged (runc cannot grant CAP_SYS_RESOURCE here) and never an insecure registry.
    assert "privileged" not in made
    assert not any("insecure" in argument for argument in made["command"])


def test_registry_container_spec() -> None:
    made = spec.registry_container(
        image="registry:x", tls_dir=Path("/state/registry-tls"), auth_dir=Path("/state/registry-auth")
    )
    assert made == {
        "image": "registry:x",
        "name": "mlflow-cluster-registry",
        "hostname": "mlflow-cluster-registry",
        "labels": {"org.mlflow-platform.swarm-cluster": "registry"},
        "detach": True,
        "environment": {
            "REGISTRY_HTTP_TLS_CERTIFICATE": "/etc/docker/registry/tls/registry.crt",
            "REGISTRY_HTTP_TLS_KEY": "/etc/docker/registry/tls/registry.key",
            # Basic auth: nothing is pulled or pushed without the login.
            "REGISTRY_AUTH": "htpasswd",
            "REGISTRY_AUTH_HTPASSWD_REALM": "mlflow-cluster-registry",
            "REGISTRY_AUTH_HTPASSWD_PATH": "/etc/docker/registry/auth/htpasswd",
        },
        "volumes": {
            "mlflow-cluster-registry-data": {"bind": "/var/lib/registry", "mode": "rw"},
            "/state/registry-tls": {"bind": "/etc/docker/registry/tls", "mode": "ro"},
            "/state/registry-auth": {"bind": "/etc/docker/registry/auth", "mode": "ro"},
        },
        "network": "mlflow-cluster",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
    }
    assert (
        spec.registry_reference("172.29.231.2:5000", "mlflow-platform-standin/python:3.11-bookworm")
        == "172.29.231.2:5000/mlflow-platform-standin/python:3.11-bookworm"
    )


def test_registry_certificate_is_for_its_address_and_signed_by_the_ca() -> None:
    tls = registry_tls("172.29.231.2")
    ca = x509.load_pem_x509_certificate(tls.ca_certificate.encode())
    certificate = x509.load_pem_x509_certificate(tls.certificate.encode())
    certificate.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("172.29.231.2")]
    assert names.get_values_for_type(x509.DNSName) == []
    key = certificate.public_key()
    private = serialization.load_pem_private_key(tls.key.encode(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key() == key
    # A second cluster gets another CA: one cluster's certificate is worthless to the next.
    other = x509.load_pem_x509_certificate(registry_tls("172.29.231.2").ca_certificate.encode())
    with pytest.raises(InvalidSignature):
        certificate.verify_directly_issued_by(other)


class _Item:
    def __init__(self, name: str, removed: list[str], error: Exception | None = None) -> None:
        self.name = name
        self._removed = removed
        self._error = error

    def remove(self, **_: Any) -> None:
        if self._error is not None:
            raise self._error
        self._removed.append(self.name)


class _Collection:
    def __init__(self, items: list[_Item], removed: list[str]) -> None:
        self._items = items
        self._removed = removed
        self.filters: list[dict[str, str]] = []

    def list(self, *, filters: dict[str, str], all: bool = False) -> list[_Item]:
        self.filters.append(filters)
        return [item for item in self._items if item.name not in self._removed]


class _Engine:
    def __init__(self, removed: list[str], *, failing: str | None = None) -> None:
        def item(name: str) -> _Item:
            error = docker.errors.APIError("device busy") if name == failing else None
            return _Item(name, removed, error)

        self.containers = _Collection([item("mlflow-cluster-node-1"), item("mlflow-cluster-registry")], removed)
        self.volumes = _Collection([item("mlflow-cluster-node-1-docker")], removed)
        self.networks = _Collection([item("mlflow-cluster")], removed)


def test_down_removes_what_carries_the_label_and_the_host_trust(tmp_path: Path, monkeypatch: Any) -> None:
    certs = tmp_path / "certs.d"
    ours, theirs = certs / "172.29.231.2:5000", certs / "registry.example:5000"
    for directory in (ours, theirs):
        directory.mkdir(parents=True)
        (directory / "ca.crt").write_text("pem")
    (ours / "mlflow-cluster.owner").write_text("state")
    monkeypatch.setattr(cluster, "HOST_CERTS_DIR", certs)
    state = tmp_path / "state"
    state.mkdir()
    removed: list[str] = []
    engine = _Engine(removed)
    cluster.down(client=engine, state_dir=state, log=lambda _: None)
    assert removed == [
        "mlflow-cluster-node-1",
        "mlflow-cluster-registry",
        "mlflow-cluster-node-1-docker",
        "mlflow-cluster",
    ]
    assert engine.containers.filters[0] == {"label": "org.mlflow-platform.swarm-cluster"}
    assert not ours.exists()
    assert not state.exists()
    assert (theirs / "ca.crt").read_text() == "pem"  # another registry's trust is not ours to remove


def test_down_tries_everything_then_names_what_stayed(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(cluster, "HOST_CERTS_DIR", tmp_path / "certs.d")
    removed: list[str] = []
    engine = _Engine(removed, failing="mlflow-cluster-node-1-docker")
    with pytest.raises(spec.ClusterError) as raised:
        cluster.down(client=engine, state_dir=tmp_path / "state", log=lambda _: None)
    assert removed == ["mlflow-cluster-node-1", "mlflow-cluster-registry", "mlflow-cluster"]
    assert str(raised.value) == (
        "down left things behind: volume mlflow-cluster-node-1-docker: device busy; volume mlflow-cluster-node-1-docker"
    )


def test_up_refuses_bad_arguments_before_asking_the_engine(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: Any
) -> None:
    def no_engine(*_: Any) -> None:
        raise AssertionError("the engine was asked before the arguments were checked")

    monkeypatch.setattr(cluster, "connect", no_engine)
    assert main(["--state-dir", str(tmp_path), "up", "--postgres-node-label", "postgres"]) == 1
    assert capsys.readouterr().err == "swarm-cluster: up failed: a node label is key=value, got 'postgres'\n"
    assert main(["--state-dir", str(tmp_path), "up", "--subnet", "10.0.0.0/33"]) == 1
    assert "swarm-cluster: up failed: subnet '10.0.0.0/33' is not an IPv4 network" in capsys.readouterr().err


def test_up_prints_shell_lines_then_json_and_nothing_else(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    made = cluster.Cluster(
        docker_host="unix:///state/mlflow-cluster-node-1/docker.sock",
        registry="172.29.231.2:5000",
        ca_certificate_file="/state/ca.crt",
        nodes=["mlflow-cluster-node-1", "mlflow-cluster-node-2", "mlflow-cluster-node-3"],
        manager="mlflow-cluster-node-1",
        postgres_node="mlflow-cluster-node-2",
        postgres_node_label="mlflow-platform.postgres=true",
        images={},
        registry_username="mlflow-cluster",
        registry_password_file="/state/registry-password",
    )

    def fake_up(**_: Any) -> cluster.Cluster:
        print("prepare: mlflow-platform-standin/dind:20.10-bookworm is present")  # as prepare does, on stdout
        return made

    monkeypatch.setattr(cluster, "up", fake_up)
    assert main(["up"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[:5] == [
        "DOCKER_HOST=unix:///state/mlflow-cluster-node-1/docker.sock",
        "IMAGE_REGISTRY=172.29.231.2:5000",
        "IMAGE_REGISTRY_CA_FILE=/state/ca.crt",
        "IMAGE_REGISTRY_USERNAME=mlflow-cluster",
        # The file, never the password: a terminal's scrollback and CI logs are read by many.
        "IMAGE_REGISTRY_PASSWORD_FILE=/state/registry-password",
    ]
    assert cluster.Cluster(**json.loads(lines[5])) == made
    assert len(lines) == 6
    assert err == "prepare: mlflow-platform-standin/dind:20.10-bookworm is present\n"


def test_the_stack_checks_config_is_a_multi_node_stack_the_deployer_implements(tmp_path: Path) -> None:
    """`stack-check` deploys with these settings through the local deployer: the program accepts them, every
    input it then declares is one the deployer implements, and the images are the registry's."""
    import pulumi

    from tests.certs import self_signed
    from tests.harness import run_program
    from tests.test_deployer import _CheckingMocks
    from tools.local_deploy import prepare
    from tools.local_deploy.inputs import IMAGE, SERVICE
    from tools.swarm_cluster.stack_check import stack_overrides

    registry = "172.29.231.2:5000"
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(self_signed(["registry"], ca=True).certificate)
    password_file = tmp_path / "registry-password"
    password_file.write_text("the-registry-password-of-this-cluster")
    made = cluster.Cluster(
        docker_host="unix:///x/node-1/docker.sock",
        registry=registry,
        ca_certificate_file=str(ca_file),
        nodes=["n1", "n2", "n3"],
        manager="n1",
        postgres_node="n2",
        postgres_node_label="mlflow-platform.postgres=true",
        images={image: spec.registry_reference(registry, image) for image in cluster.DEFAULT_PUSH},
        registry_username="mlflow-cluster",
        registry_password_file=str(password_file),
    )
    s3 = {"artifactStore": "s3", "artifactBucket": "mlflow-artifacts", "artifactEndpoint": "http://172.29.231.3:8333"}
    overrides = stack_overrides(made, s3)
    assert overrides["baseImage"] == f"{registry}/{prepare.STANDIN_BASE_IMAGE}"
    assert {overrides[key] for key in ("postgresImage", "proxyImage")} == {
        f"{registry}/{prepare.STANDIN_POSTGRES_IMAGE}",
        f"{registry}/{prepare.STANDIN_CADDY_IMAGE}",
    }
    mocks = _CheckingMocks()

    @pulumi.runtime.test
    def run() -> Any:
        _, outputs = run_program("cluster", overrides, mocks)
        return pulumi.Output.all(*outputs.values())

    run()
    images = mocks.of_type(IMAGE)
    assert len(images) == 2
    assert all(image.inputs["imageName"].startswith(f"{registry}/") for image in images)
    login = {"server": registry, "username": "mlflow-cluster", "password": "the-registry-password-of-this-cluster"}
    assert all(image.inputs["registry"] == login for image in images)
    services = mocks.of_type(SERVICE)
    assert len(services) >= 5
    # Every service carries the login its nodes pull with, as a secret input.
    for service in services:
        assert service.inputs["auth"] == {
            "serverAddress": registry,
            "username": "mlflow-cluster",
            "password": "the-registry-password-of-this-cluster",
        }
        assert "auth" in service.secret_inputs()


def test_the_registrys_login_is_a_bcrypt_line_htpasswd_verifies(tmp_path: Path) -> None:
    """The registry (docker-registry 2.8) takes bcrypt lines only; htpasswd -v checks the line as the registry would."""
    password = login.new_password()
    assert len(password) == 43
    assert password != login.new_password()
    line = login.htpasswd_line("mlflow-cluster", password)
    assert line.startswith("mlflow-cluster:$2y$05$")
    assert password not in line
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(line + "\n")

    def verifies(candidate: str) -> bool:
        # -v: verify, -i: the password from stdin, as htpasswd_line hands it over.
        done = subprocess.run(
            ["htpasswd", "-vi", str(htpasswd), "mlflow-cluster"],
            input=candidate,
            text=True,
            check=False,
            capture_output=True,
        )
        return done.returncode == 0

    assert verifies(password)
    assert not verifies(password[:-1])


def test_without_htpasswd_up_says_which_package_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login, "HTPASSWD", "htpasswd-not-installed")
    with pytest.raises(
        spec.ClusterError, match=r"^htpasswd-not-installed is not installed: .*apt-get install apache2-utils\)$"
    ):
        login.htpasswd_line("mlflow-cluster", "x" * 43)


@pytest.mark.parametrize("certs_d_there", [False, True], ids=["certs.d made by up", "certs.d there before"])
def test_down_removes_the_host_trust_and_the_directories_up_made_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs_d_there: bool
) -> None:
    """`up` may make /etc/docker/certs.d itself: `down` leaves the host's /etc/docker as it found it."""
    etc_docker = tmp_path / "etc-docker"
    etc_docker.mkdir()
    certs = etc_docker / "certs.d"
    if certs_d_there:
        certs.mkdir()
    monkeypatch.setattr(cluster, "HOST_CERTS_DIR", certs)
    cluster.trust_on_host("172.29.231.2:5000", "pem", tmp_path / "state")
    assert (certs / "172.29.231.2:5000" / "ca.crt").read_text() == "pem"
    cluster.down(client=_Engine([]), state_dir=tmp_path / "state", log=lambda _: None)
    assert sorted(etc_docker.rglob("*")) == ([certs] if certs_d_there else [])


def test_down_keeps_a_certs_d_up_made_once_another_registry_is_trusted_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = tmp_path / "etc-docker" / "certs.d"
    monkeypatch.setattr(cluster, "HOST_CERTS_DIR", certs)
    cluster.trust_on_host("172.29.231.2:5000", "pem", tmp_path / "state")
    (certs / "registry.example:5000").mkdir()
    (certs / "registry.example:5000" / "ca.crt").write_text("theirs")
    cluster.down(client=_Engine([]), state_dir=tmp_path / "state", log=lambda _: None)
    assert sorted(path.relative_to(certs) for path in certs.rglob("*")) == [
        Path("registry.example:5000"),
        Path("registry.example:5000/ca.crt"),
    ]
