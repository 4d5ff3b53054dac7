"""The TLS front door: Caddy in front of the tracking server, the stack's only published port.

Every request of every client carries a password under basic auth; across a network
it must travel inside TLS. Caddy terminates TLS with a certificate from the mode the
stack chose (its own CA, ACME, or one provided in config), redirects plain HTTP,
and passes requests to MLflow on the stack network with Host and X-Forwarded-*
intact, so MLflow's host check keeps checking the public name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.docker_common import (
    RESTART_POLICY,
    SECRETS_DIR,
    container_labels,
    hardening,
    secrets_volume,
    volume_labels,
)

# Relative to the project directory, like the MLflow image's context.
BUILD_CONTEXT = "./mlflow/proxy"
# mlflow/proxy/Dockerfile's user: owns /data, binds only high ports.
PROXY_UID = "10002"
# Inside the container: unprivileged ports; the host publishes httpsPort and httpPort on them.
HTTPS_PORT = 8443
HTTP_PORT = 8080
# Loopback inside the container only: the health probe's target, nothing else.
HEALTH_PORT = 8081
CADDYFILE = "/etc/caddy/Caddyfile"
# Certificates, ACME accounts, the internal CA's intermediate: the persistent volume.
# Not the image's /data: it is a declared VOLUME there, so no build step can hand it to
# the proxy's user, while a fresh volume on this path takes its owner from the image.
STORAGE_DIR = "/var/lib/mlflow-proxy"
CA_CERT_FILE = f"{SECRETS_DIR}/ca-root.crt"
CA_KEY_FILE = f"{SECRETS_DIR}/ca-root.key"
TLS_CERT_FILE = f"{SECRETS_DIR}/tls.crt"
TLS_KEY_FILE = f"{SECRETS_DIR}/tls.key"
ACME_CA_FILE = f"{SECRETS_DIR}/acme-ca.crt"
# The name of the internal CA inside Caddy's pki app.
_PKI_CA = "mlflow"
# Longer than Caddy's grace period, so an artifact transfer in flight can finish.
STOP_TIMEOUT_SECONDS = 60
# Shorter than uvicorn's 5 s keep-alive timeout (see the reverse_proxy block).
UPSTREAM_KEEPALIVE = "2s"
GRACE_PERIOD = "50s"
HEALTH_PROBE = ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{HEALTH_PORT}/health"]
# Caddy writes its autosaved config to /config and an instance id to /data; neither
# needs to survive, and tmpfs there keeps Docker from making anonymous volumes for the
# image's declared VOLUMEs.
_TMPFS = {
    "/config": f"rw,noexec,nosuid,nodev,size=16m,uid={PROXY_UID},gid={PROXY_UID},mode=0700",
    "/data": f"rw,noexec,nosuid,nodev,size=16m,uid={PROXY_UID},gid={PROXY_UID},mode=0700",
    "/tmp": "rw,noexec,nosuid,nodev,size=64m",  # noqa: S108 - a private tmpfs
}
# A year; clients remember to use HTTPS only. Not for `internal`: a client that does not
# trust the stack's CA yet could then never reach the page that explains how to.
HSTS = "max-age=31536000"


@dataclass(frozen=True)
class CaddySite:
    """Everything the Caddyfile depends on: a change to any of it replaces the proxy."""

    public_host: str
    tls_mode: str
    https_port: int
    upstream: str
    max_upload_mb: int
    acme_email: str = ""
    acme_directory_url: str = ""
    acme_ca_root: bool = False


def _quote(value: str) -> str:
    """A Caddyfile token in double quotes (no value here holds a quote; validation sees to it)."""
    if '"' in value or "\n" in value:
        raise ValueError(f"not a Caddyfile token: {value!r}")
    return f'"{value}"'


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def public_origin(host: str, https_port: int) -> str:
    bracketed = f"[{host}]" if ":" in host else host
    return f"https://{bracketed}" if https_port == 443 else f"https://{bracketed}:{https_port}"


Directive = str | tuple[str, list["Directive"]]


def _render(directives: list[Directive], depth: int = 0) -> list[str]:
    """Caddyfile lines, tab-indented as `caddy fmt` writes them; a tuple is a block."""
    lines: list[str] = []
    for directive in directives:
        if isinstance(directive, str):
            lines.append("\t" * depth + directive)
        else:
            head, body = directive
            lines += ["\t" * depth + head + " {", *_render(body, depth + 1), "\t" * depth + "}"]
    return lines


def caddyfile(site: CaddySite) -> str:
    """The proxy's whole configuration."""
    host = f"[{site.public_host}]" if ":" in site.public_host else site.public_host
    server_options: list[Directive] = [
        # HTTP/1.1 and HTTP/2 only: HTTP/3 would need UDP published as well.
        "protocols h1 h2",
        # Headers must arrive promptly (slowloris); bodies and responses may take as long
        # as a multi-GB artifact needs, so neither has a timeout.
        ("timeouts", ["read_header 30s", "idle 5m"]),
    ]
    if not _is_ip(site.public_host):
        # A Host other than the name the TLS session was opened for gets 421 from Caddy
        # instead of an empty answer. Clients send no SNI to an IP address: names only.
        server_options.append("strict_sni_host on")
    global_options: list[Directive] = [
        # No admin API: the config only changes by replacing the container.
        "admin off",
        f"http_port {HTTP_PORT}",
        f"https_port {HTTPS_PORT}",
        # Not root: Caddy cannot and must not touch the container's trust store.
        "skip_install_trust",
        # The redirect is ours (below): Caddy's own would name the internal port.
        "auto_https disable_redirects",
        f"storage file_system {STORAGE_DIR}",
        # Clients that send no SNI (or connect by IP address) get publicHost's certificate.
        f"default_sni {site.public_host}",
        # On SIGTERM (a replaced or stopped proxy) requests in flight get this long to finish.
        f"grace_period {GRACE_PERIOD}",
        ("servers", server_options),
        # Caddy's own log as JSON on stderr; Docker rotates it (logMaxSize, logMaxFiles).
        ("log", ["output stderr", "format json"]),
    ]
    tls_options: list[Directive] = ["protocols tls1.2 tls1.3"]
    tls_head = "tls"
    if site.tls_mode == "internal":
        root: Directive = ("root", [f"cert {CA_CERT_FILE}", f"key {CA_KEY_FILE}"])
        name = f"name {_quote('mlflow-platform ' + site.public_host)}"
        global_options.append(("pki", [(f"ca {_PKI_CA}", [name, root])]))
        tls_options.append(("issuer internal", [f"ca {_PKI_CA}"]))
    elif site.tls_mode == "acme":
        global_options.append(f"email {_quote(site.acme_email)}")
        if site.acme_directory_url:
            global_options.append(f"acme_ca {_quote(site.acme_directory_url)}")
        if site.acme_ca_root:
            global_options.append(f"acme_ca_root {ACME_CA_FILE}")
    elif site.tls_mode == "provided":
        tls_head = f"tls {TLS_CERT_FILE} {TLS_KEY_FILE}"
    else:
        raise ValueError(f"no proxy for tlsMode {site.tls_mode!r}")

    site_directives: list[Directive] = [(tls_head, tls_options)]
    if site.tls_mode in ("acme", "provided"):
        site_directives.append(f"header Strict-Transport-Security {_quote(HSTS)}")
    site_directives += [
        ("request_body", [f"max_size {site.max_upload_mb}MiB"]),
        # Streams responses as they come (artifact downloads, long listings).
        (
            f"reverse_proxy {site.upstream}",
            [
                "flush_interval -1",
                # uvicorn closes a connection idle for 5 s (its --timeout-keep-alive); Caddy
                # keeps idle upstream connections 2 min by default, and a POST sent on one
                # uvicorn is closing that moment fails as a 502 that Caddy may not retry.
                # Dropping them first closes that race.
                ("transport http", [f"keepalive {UPSTREAM_KEEPALIVE}"]),
            ],
        ),
        # Access log as JSON on stdout. Caddy logs Authorization and Cookie headers as
        # REDACTED unless told otherwise (log_credentials), which this never does.
        ("log", ["output stdout", "format json"]),
    ]
    blocks: list[list[Directive]] = [
        [("", global_options)],
        # A fixed target, never the request's Host: no open redirect to another site.
        [(f"http://:{HTTP_PORT}", [f"redir {public_origin(site.public_host, site.https_port)}{{uri}} 308"])],
        [(f"http://:{HEALTH_PORT}", ["bind 127.0.0.1", 'respond /health "ok" 200'])],
        [(f"https://{host}", site_directives)],
    ]
    rendered = ["\n".join(_render(block)).lstrip() for block in blocks]
    return "\n\n".join(rendered) + "\n"


class TlsProxyArgs(TypedDict):
    base_image: pulumi.Input[str]
    """The official Caddy image, pinned (config `proxyImage`)."""
    image_name: pulumi.Input[str]
    """Local tag of the image built on it."""
    container_name: pulumi.Input[str]
    """Docker name of the container."""
    data_volume_name: pulumi.Input[str]
    """Docker name of Caddy's storage volume: ACME account and certificates, the CA's intermediate."""
    network_name: pulumi.Input[str]
    """The stack network, where MLflow is reached by its alias."""
    site: CaddySite
    """What the Caddyfile says."""
    bind_address: str
    """Host address both ports are published on."""
    http_port: int
    """Host port of the plain-HTTP listener (redirects, ACME HTTP-01)."""
    ca_certificate: pulumi.Input[str] | None
    """Root certificate of the internal CA (tlsMode internal)."""
    ca_private_key: pulumi.Input[str] | None
    """Its key (secret)."""
    tls_certificate: str
    """Provided certificate chain (tlsMode provided)."""
    tls_private_key: pulumi.Input[str] | None
    """Provided key (secret)."""
    acme_ca_certificate: str
    """Root that signs a private ACME CA's endpoint (tlsMode acme, optional)."""
    memory_mb: int
    """Memory limit in MiB; swap is not allowed on top."""
    protect_data: bool
    """Protect the /data volume: ACME accounts and certificates are rate-limited to re-issue."""
    log_max_size: str
    """json-file log size that triggers rotation."""
    log_max_files: int
    """Rotated log files kept."""
    startup_timeout_seconds: int
    """How long `pulumi up` waits for the container to be healthy."""
    labels: dict[str, str]
    """Labels that identify the stack."""
    start_after: Sequence[pulumi.Resource]
    """The health-gated MLflow container: the proxy opens the door once there is a server behind it."""


class TlsProxy(pulumi.ComponentResource):
    """Caddy, hardened like the other containers, publishing httpsPort and httpPort."""

    image: docker.Image
    data_volume: docker.Volume
    container: docker.Container
    config: str

    def __init__(self, name: str, args: TlsProxyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:proxy:TlsProxy", name, None, opts)
        site = args["site"]
        self.image = docker.Image(
            f"{name}-image",
            image_name=args["image_name"],
            build=docker.DockerBuildArgs(
                context=BUILD_CONTEXT,
                dockerfile=f"{BUILD_CONTEXT}/Dockerfile",
                args={"CADDY_IMAGE": args["base_image"]},
            ),
            skip_push=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.data_volume = docker.Volume(
            f"{name}-data",
            name=args["data_volume_name"],
            labels=volume_labels(args["labels"]),
            opts=pulumi.ResourceOptions(
                parent=self, protect=args["protect_data"], retain_on_delete=args["protect_data"]
            ),
        )
        self.config = caddyfile(site)
        uploads = [
            # Not secret, and read by the proxy's user; root-owned so it cannot rewrite it.
            docker.ContainerUploadArgs(file=CADDYFILE, content=self.config, owner="0", group="0", permissions="0444")
        ]
        if site.tls_mode == "internal":
            if args["ca_certificate"] is None or args["ca_private_key"] is None:
                raise ValueError("tlsMode internal needs the CA's certificate and key")
            uploads += [
                self._public_file(CA_CERT_FILE, args["ca_certificate"]),
                self._secret_file(CA_KEY_FILE, args["ca_private_key"]),
            ]
        elif site.tls_mode == "provided":
            if args["tls_private_key"] is None:
                raise ValueError("tlsMode provided needs the private key")
            uploads += [
                self._public_file(TLS_CERT_FILE, args["tls_certificate"]),
                self._secret_file(TLS_KEY_FILE, args["tls_private_key"]),
            ]
        elif site.acme_ca_root:
            uploads.append(self._public_file(ACME_CA_FILE, args["acme_ca_certificate"]))

        bind = args["bind_address"]
        self.container = docker.Container(
            f"{name}-container",
            name=args["container_name"],
            image=self.image.repo_digest,
            user=f"{PROXY_UID}:{PROXY_UID}",
            uploads=uploads,
            volumes=[
                docker.ContainerVolumeArgs(volume_name=self.data_volume.name, container_path=STORAGE_DIR),
                # Anonymous volumes: uploads land here before start (the root is read-only).
                docker.ContainerVolumeArgs(container_path="/etc/caddy"),
                secrets_volume(),
            ],
            ports=[
                docker.ContainerPortArgs(internal=HTTPS_PORT, external=site.https_port, ip=bind, protocol="tcp"),
                docker.ContainerPortArgs(internal=HTTP_PORT, external=args["http_port"], ip=bind, protocol="tcp"),
            ],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args["network_name"], aliases=["proxy"])],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=HEALTH_PROBE, interval="10s", timeout="5s", retries=3, start_period="10s"
            ),
            restart=RESTART_POLICY,
            read_only=True,
            tmpfs=_TMPFS,
            **hardening(args["memory_mb"], args["log_max_size"], args["log_max_files"]),
            labels=container_labels(args["labels"]),
            wait=True,
            wait_timeout=args["startup_timeout_seconds"],
            # SIGTERM: Caddy stops accepting and lets requests in flight finish (grace_period).
            stop_signal="SIGTERM",
            stop_timeout=STOP_TIMEOUT_SECONDS,
            destroy_grace_seconds=STOP_TIMEOUT_SECONDS,
            # Fixed name and host ports: the old container goes before its replacement starts.
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args["start_after"]), delete_before_replace=True),
        )
        self.register_outputs({"container_name": self.container.name, "data_volume_name": self.data_volume.name})

    @staticmethod
    def _public_file(path: str, content: pulumi.Input[str]) -> docker.ContainerUploadArgs:
        return docker.ContainerUploadArgs(file=path, content=content, owner="0", group="0", permissions="0444")

    @staticmethod
    def _secret_file(path: str, content: pulumi.Input[str]) -> docker.ContainerUploadArgs:
        return docker.ContainerUploadArgs(
            file=path, content=pulumi.Output.secret(content), owner=PROXY_UID, group=PROXY_UID, permissions="0400"
        )
