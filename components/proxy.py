"""The TLS front door: Caddy in front of the tracking server, the stack's only published port.

Every request of every client carries a password under basic auth; across a network
it must travel inside TLS. Caddy terminates TLS with a certificate from the mode the
stack chose (one the stack's own CA issued in Pulumi, ACME, or one provided in config)
and passes requests to MLflow on the stack network with Host and X-Forwarded-*
intact, so MLflow's host check keeps checking the public name. Plain HTTP is published
only where ACME needs it, and there it only redirects.

The proxy holds no CA key in any mode: in `internal` it gets the server certificate and
that certificate's own key from Pulumi (components/internal_ca.py), as in `provided`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import pulumi
import pulumi_docker as docker

from components.context import StackContext
from components.internal_ca import InternalCa
from components.settings import TlsSettings, is_ip_address, public_url
from components.target import Runner, StackVolume
from components.task_limits import PROXY_TASKS
from components.workload import SECRETS_DIR, File, HealthCheck, Mount, Port, Workload, config_file, secret_file

# Relative to the project directory, like the MLflow image's context.
BUILD_CONTEXT = "./mlflow/proxy"
# mlflow/proxy/Dockerfile's user: owns /data, binds only high ports.
PROXY_UID = "10002"
# Inside the container: unprivileged ports; the host publishes httpsPort (and httpPort in acme) on them.
HTTPS_PORT = 8443
HTTP_PORT = 8080
# Loopback inside the container only: the health probe's target, nothing else.
HEALTH_PORT = 8081
CADDYFILE = "/etc/caddy/Caddyfile"
# Caddy's storage, the persistent volume: ACME accounts and certificates (acme mode).
# Not the image's /data: it is a declared VOLUME there, so no build step can hand it to
# the proxy's user, while a fresh volume on this path takes its owner from the image.
STORAGE_DIR = "/var/lib/mlflow-proxy"
# Where Caddy's pki app kept the internal CA's intermediate and its key, before Pulumi
# issued the certificate (a key that chains to the root clients still trust), and the
# "local" CA that `skip_install_trust` made Caddy create. Removed at every start, so a
# volume kept from then holds none; nothing writes there any more.
STALE_PKI_DIR = f"{STORAGE_DIR}/pki"
TLS_CERT_FILE = f"{SECRETS_DIR}/tls.crt"
TLS_KEY_FILE = f"{SECRETS_DIR}/tls.key"
ACME_CA_FILE = f"{SECRETS_DIR}/acme-ca.crt"
# The image's own command, after the stale intermediate is gone (exec: Caddy is PID 1 and
# gets the stop signal). An entrypoint of our own, so an image's ENTRYPOINT cannot wrap it.
ENTRYPOINT = ["/bin/sh", "-c"]
START = f"rm -rf -- {STALE_PKI_DIR} && exec caddy run --config {CADDYFILE} --adapter caddyfile"
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
# A year; clients remember to use HTTPS only. In every mode, `internal` included: a browser
# records HSTS only from a connection whose certificate it trusts (RFC 6797, 8.1), so one
# that does not trust the stack's root is not affected at all, while one that does can no
# longer be talked into clicking through a forged certificate or into plain http://.
HSTS = "max-age=31536000"
# MLflow's Prometheus metrics are for a scraper on the stack network (README "Metrics"),
# not for the internet: the door answers 404 before the request reaches MLflow. Caddy's
# path matcher is case-insensitive and matches the cleaned, decoded path.
METRICS_PATHS = ("/metrics", "/metrics/*")
# Swarm: the server's tasks, each its own upstream, from swarm's DNS (`tasks.<service>` has one A
# record per task). Caddy runs no active health checks on dynamic upstreams (2.6 to 2.11,
# modules/caddyhttp/reverseproxy/healthchecks.go: "Active health checks do not run for dynamic
# upstreams"), and none is needed: swarm adds a task to that name only once its health check
# passes and takes it out before stopping it (or once it turns unhealthy, when the task is
# replaced). So the list is re-read every second, a request whose connection to a task cannot
# be made is tried again on another for up to LB_TRY_DURATION, and passive checks keep a task
# that refused one out of the rotation for FAIL_DURATION.
TASKS_REFRESH = "1s"
LB_TRY_DURATION = "15s"
LB_TRY_INTERVAL = "250ms"
FAIL_DURATION = "10s"
# A task that is gone leaves no one to refuse the connection: fail the dial fast and retry elsewhere.
DIAL_TIMEOUT = "2s"
_ROLE = "proxy"


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
    upstream_tasks: str = ""
    """A DNS name with one A record per server task (swarm's `tasks.<service>`), at `upstream`'s port;
    empty: `upstream` is the one host:port to pass requests to."""


def _quote(value: str) -> str:
    """A Caddyfile token in double quotes (no value here holds a quote; validation sees to it)."""
    if '"' in value or "\n" in value:
        raise ValueError(f"not a Caddyfile token: {value!r}")
    return f'"{value}"'


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


def serves_plain_http(tls_mode: str) -> bool:
    """Only ACME needs port 80 (HTTP-01 challenges, and the redirect a public name's visitors
    expect). Elsewhere nothing listens there: a client configured with `http://` would send
    its basic-auth header in clear text before any redirect, so it is refused instead."""
    return tls_mode == "acme"


def _reverse_proxy(site: CaddySite) -> Directive:
    """Requests to the server: one upstream, or (swarm) each healthy task of its service."""
    # uvicorn closes a connection idle for 5 s (its --timeout-keep-alive); Caddy keeps idle
    # upstream connections 2 min by default, and a POST sent on one uvicorn is closing that
    # moment fails as a 502 that Caddy may not retry. Dropping them first closes that race.
    transport: list[Directive] = [f"keepalive {UPSTREAM_KEEPALIVE}"]
    if not site.upstream_tasks:
        return (f"reverse_proxy {site.upstream}", ["flush_interval -1", ("transport http", transport)])
    port = site.upstream.rsplit(":", 1)[1]
    return (
        "reverse_proxy",
        [
            ("dynamic a", [f"name {site.upstream_tasks}", f"port {port}", f"refresh {TASKS_REFRESH}"]),
            "lb_policy round_robin",
            # Only what never reached a task is tried again (a failed dial, for any method; a
            # GET whatever failed): a POST that reached one may have been acted on.
            f"lb_try_duration {LB_TRY_DURATION}",
            f"lb_try_interval {LB_TRY_INTERVAL}",
            f"fail_duration {FAIL_DURATION}",
            "flush_interval -1",
            ("transport http", [*transport, f"dial_timeout {DIAL_TIMEOUT}"]),
        ],
    )


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
    if not is_ip_address(site.public_host):
        # A Host other than the name the TLS session was opened for gets 421 from Caddy
        # instead of an empty answer. Clients send no SNI to an IP address: names only.
        server_options.append("strict_sni_host on")
    global_options: list[Directive] = [
        # No admin API: the config only changes by replacing the container.
        "admin off",
        f"http_port {HTTP_PORT}",
        f"https_port {HTTPS_PORT}",
        # No `skip_install_trust`: that option is itself configuration of Caddy's pki app, which
        # then makes a CA of its own ("local": a root and an intermediate key) in the storage
        # volume. No mode uses the pki app (no `issuer internal`), so none is made and no trust
        # store is touched.
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
    if site.tls_mode in ("internal", "provided"):
        # A certificate and key from Pulumi (internal: issued by the stack's root) or from config.
        tls_head = f"tls {TLS_CERT_FILE} {TLS_KEY_FILE}"
    elif site.tls_mode == "acme":
        global_options.append(f"email {_quote(site.acme_email)}")
        if site.acme_directory_url:
            global_options.append(f"acme_ca {_quote(site.acme_directory_url)}")
        if site.acme_ca_root:
            global_options.append(f"acme_ca_root {ACME_CA_FILE}")
    else:
        raise ValueError(f"no proxy for tlsMode {site.tls_mode!r}")

    site_directives: list[Directive] = [
        (tls_head, tls_options),
        f"header Strict-Transport-Security {_quote(HSTS)}",
        f"@metrics path {' '.join(METRICS_PATHS)}",
        # Caddy orders `respond` before `reverse_proxy` whatever their order here.
        "respond @metrics 404",
        ("request_body", [f"max_size {site.max_upload_mb}MiB"]),
        # Streams responses as they come (artifact downloads, long listings).
        _reverse_proxy(site),
        # Access log as JSON on stdout. Caddy logs Authorization and Cookie headers as
        # REDACTED unless told otherwise (log_credentials), which this never does.
        ("log", ["output stdout", "format json"]),
    ]
    blocks: list[list[Directive]] = [[("", global_options)]]
    if serves_plain_http(site.tls_mode):
        # A fixed target, never the request's Host: no open redirect to another site.
        redirect = f"redir {public_url(site.public_host, site.https_port, https=True)}{{uri}} 308"
        blocks.append([(f"http://:{HTTP_PORT}", [redirect])])
    blocks += [
        [(f"http://:{HEALTH_PORT}", ["bind 127.0.0.1", 'respond /health "ok" 200'])],
        [(f"https://{host}", site_directives)],
    ]
    rendered = ["\n".join(_render(block)).lstrip() for block in blocks]
    return "\n\n".join(rendered) + "\n"


class TlsProxyArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to."""
    tls: TlsSettings
    """The mode (where the certificate comes from), the pinned Caddy image, ports, limits."""
    public_host: str
    """The name clients use: the certificate's and the Caddyfile's site."""
    bind_address: str
    """Host address the ports are published on."""
    upstream: str
    """The tracking server on the stack network (`alias:port`)."""
    upstream_tasks: NotRequired[str]
    """Swarm: the DNS name of the server's tasks (`tasks.<service>`), each an upstream at upstream's port."""
    ca_resource_name: str
    """Resource name of the internal CA (tlsMode internal); kept from when the platform declared
    it, so the root that clients trust is never replaced."""
    start_after: Sequence[pulumi.Resource]
    """The health-gated MLflow container: the proxy opens the door once there is a server behind it."""


class TlsProxy(pulumi.ComponentResource):
    """Caddy, hardened like the other workloads, publishing httpsPort (and httpPort for ACME)."""

    image: docker.Image
    data_volume: StackVolume
    container: Runner
    config: str
    internal_ca: InternalCa | None
    ca_certificate: pulumi.Output[str] | None
    """The internal CA's root, PEM, for clients to trust (tlsMode internal); None otherwise."""

    def __init__(self, name: str, args: TlsProxyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:proxy:TlsProxy", name, None, opts)
        stack, tls = args["stack"], args["tls"]
        site = CaddySite(
            public_host=args["public_host"],
            tls_mode=tls.mode,
            https_port=tls.https_port,
            upstream=args["upstream"],
            upstream_tasks=args.get("upstream_tasks", ""),
            max_upload_mb=tls.max_upload_mb,
            acme_email=tls.acme_email,
            acme_directory_url=tls.acme_directory_url,
            acme_ca_root=bool(tls.acme_ca_certificate),
        )
        target = stack.target
        self.image = target.built_image(
            self,
            f"{name}-image",
            f"{stack.project}/proxy:{stack.stack}",
            BUILD_CONTEXT,
            {"CADDY_IMAGE": tls.proxy_image},
        )
        self.data_volume = target.volume(self, f"{name}-data", stack.name("proxy-data"), _ROLE)
        self.config = caddyfile(site)
        self.internal_ca = None
        self.ca_certificate = None
        if site.tls_mode == "internal":
            self.internal_ca = InternalCa(
                args["ca_resource_name"],
                {
                    "common_name": f"{stack.prefix} root CA",
                    "server_host": site.public_host,
                    "protect": stack.protect_data,
                },
                # Declared by the platform before the proxy owned it: the alias keeps its URN.
                opts=pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(parent=opts.parent if opts else None)]),
            )
            self.ca_certificate = self.internal_ca.certificate_pem
        ports = [Port(HTTPS_PORT, site.https_port, args["bind_address"])]
        if serves_plain_http(site.tls_mode):
            ports.append(Port(HTTP_PORT, tls.http_port, args["bind_address"]))
        workload = Workload(
            name=stack.name("proxy"),
            role=_ROLE,
            image=self.image.repo_digest,
            user=f"{PROXY_UID}:{PROXY_UID}",
            max_tasks=PROXY_TASKS,
            entrypoint=ENTRYPOINT,
            command=[START],
            # Not secret, and read by the proxy's user; root-owned so it cannot rewrite it.
            files=[config_file(CADDYFILE, self.config), *self._tls_files(tls)],
            mounts=[
                Mount(STORAGE_DIR, self.data_volume.name),
                # A scratch volume: uploads land here before start (the root is read-only).
                Mount("/etc/caddy"),
            ],
            ports=ports,
            network_aliases=["proxy"],
            # Every 2 s (a local static answer): the first probe comes an interval after the start
            # (Docker < 25), and `up` waits for it, as does a stop-first update of the front door
            # on swarm (its host-mode ports), during which nothing answers; 15 failures (30 s)
            # make it unhealthy.
            health=HealthCheck(test=HEALTH_PROBE, interval="2s", timeout="5s", retries=15, start_period="10s"),
            tmpfs=_TMPFS,
            memory_mb=tls.proxy_memory_mb,
            # SIGTERM: Caddy stops accepting and lets requests in flight finish (grace_period).
            stop_signal="SIGTERM",
            stop_grace_seconds=STOP_TIMEOUT_SECONDS,
        )
        self.container = target.service(self, f"{name}-container", workload, depends_on=args["start_after"])
        self.register_outputs({"container_name": self.container.name, "data_volume_name": self.data_volume.name})

    def _tls_files(self, tls: TlsSettings) -> list[File]:
        """Where the certificate comes from, by tlsMode (`caddyfile` names the same files)."""
        if self.internal_ca is not None:
            # The server certificate and its own key; never the root's key.
            return [
                config_file(TLS_CERT_FILE, self.internal_ca.server_certificate_pem),
                secret_file(TLS_KEY_FILE, self.internal_ca.server_private_key_pem),
            ]
        if tls.mode == "provided":
            return [config_file(TLS_CERT_FILE, tls.certificate), secret_file(TLS_KEY_FILE, tls.private_key)]
        if tls.acme_ca_certificate:
            return [config_file(ACME_CA_FILE, tls.acme_ca_certificate)]
        return []
