"""Rules that span keys, checked once every key has been read on its own."""

from __future__ import annotations

import datetime
import ipaddress
from urllib.parse import urlsplit

from components.certificates import CertificateError, check_key_pair, parse_certificates
from components.mlflow_facts import BASE_MEMORY_MB, SCRATCH_DATABASE_SUFFIX, WORKER_MEMORY_MB
from components.settings.grammar import is_email, is_ip_address
from components.settings.model import BucketLocation, StackSettings
from components.settings.reader import SettingsError


def check_rules(settings: StackSettings) -> None:
    """Raises SettingsError on the first rule the settings break, in this order."""
    _check_combinations(settings)
    _check_artifacts(settings)
    _check_backups(settings)
    _check_cluster(settings)
    _check_external_database(settings)
    _check_tls(settings)


def _check_combinations(settings: StackSettings) -> None:
    """Rules that span keys: where each stands, the error names the key to change."""
    server, tls = settings.server, settings.tls
    shared = f"the '{settings.stack}' stack holds shared data (environmentKind is not 'dev'): accepted: true"
    if settings.shared and not server.auth_enabled:
        raise SettingsError("authEnabled", False, shared)
    if settings.shared and not settings.protect_data:
        raise SettingsError("protectData", False, shared)
    needed = BASE_MEMORY_MB + WORKER_MEMORY_MB * server.workers
    if server.memory_mb < needed:
        raise SettingsError(
            "mlflowMemoryMb",
            server.memory_mb,
            f"with workers = {server.workers} the server needs at least {needed} MiB "
            f"({BASE_MEMORY_MB} plus {WORKER_MEMORY_MB} per worker); "
            "accepted: that much or more, or fewer workers",
        )
    if settings.shared and tls.mode == "off":
        raise SettingsError(
            "tlsMode",
            "off",
            f"the '{settings.stack}' stack holds shared data and is reached over a network "
            "(environmentKind is not 'dev'): accepted: internal, acme, provided",
        )
    if not ipaddress.ip_address(server.bind_address).is_loopback:
        if not server.auth_enabled:
            raise SettingsError(
                "bindAddress",
                server.bind_address,
                "a non-loopback address publishes the server beyond this host; "
                "accepted while authEnabled is false: a loopback address (127.0.0.1 or ::1)",
            )
        if not settings.proxied:
            # Basic auth over plain HTTP sends every password across the network in the clear.
            raise SettingsError(
                "bindAddress",
                server.bind_address,
                "a non-loopback address sends passwords across the network; "
                "accepted while tlsMode is off: a loopback address (127.0.0.1 or ::1)",
            )
    if settings.proxied and tls.https_port == tls.http_port:
        raise SettingsError("httpPort", tls.http_port, f"accepted: a port other than httpsPort ({tls.https_port})")


def _check_artifacts(settings: StackSettings) -> None:
    """What `artifactStore: s3` needs, and no store setting left where it would be ignored."""
    artifacts = settings.artifacts
    if not artifacts.in_bucket:
        # Set but ignored, the operator would believe the artifacts are in a bucket.
        _refuse_unused("artifact", artifacts, f"artifactStore is '{artifacts.store}', which", "artifactStore 's3'")
        return
    if not artifacts.bucket:
        raise SettingsError("artifactBucket", "", "artifactStore s3 needs it: accepted: the name of an existing bucket")
    _check_bucket("artifact", artifacts)


def _check_backups(settings: StackSettings) -> None:
    """The off-host copy's keys: all of them need backupBucket."""
    offsite = settings.backups.offsite
    if not settings.backups.copied_offsite:
        # Set but ignored, the operator would believe the backups leave the host.
        _refuse_unused("backup", offsite, "backupBucket is empty (no off-host copy), which", "a backupBucket")
        return
    _check_bucket("backup", offsite)


def _check_cluster(settings: StackSettings) -> None:
    """What each engine can run."""
    cluster = settings.cluster
    if not cluster.swarm:
        registry: list[tuple[str, object]] = [
            ("imageRegistry", cluster.image_registry),
            ("imageRegistryUsername", cluster.image_registry_username),
            ("imageRegistryPassword", "<hidden>" if cluster.image_registry_password else ""),
            ("imageRegistryCaCertificate", "<PEM>" if cluster.image_registry_ca_certificate else ""),
        ]
        for key, value in registry:
            # Set but ignored, the operator would believe the images go through that registry.
            if value:
                raise SettingsError(
                    key, value, "engine is 'standalone', which builds on the host: accepted: empty, or engine swarm"
                )
        if cluster.replicas != 1:
            raise SettingsError(
                "mlflowReplicas",
                cluster.mlflow_replicas,
                "engine standalone runs one server container: accepted: 0 (default) or 1, or engine swarm",
            )
        return
    if cluster.replicas > 1 and not settings.artifacts.in_bucket:
        # Each replica may run on another node: none of them may keep artifacts on its own disk.
        unset = "" if cluster.mlflow_replicas else " (the swarm default)"
        raise SettingsError(
            "artifactStore",
            settings.artifacts.store,
            f"engine swarm with mlflowReplicas {cluster.replicas}{unset} needs artifacts no single node holds: "
            "accepted: s3 (artifactBucket), or mlflowReplicas 1",
        )
    if not settings.proxied:
        # A swarm service publishes on every interface of the node that runs it (no bind address).
        raise SettingsError(
            "tlsMode",
            settings.tls.mode,
            "engine swarm publishes on every interface of every node, so only the TLS front door may publish: "
            "accepted: internal, acme, provided",
        )
    if not ipaddress.ip_address(settings.server.bind_address).is_unspecified:
        raise SettingsError(
            "bindAddress",
            settings.server.bind_address,
            "engine swarm publishes a service's ports on every interface of its node, "
            "with no bind address: accepted: 0.0.0.0 or ::",
        )
    if bool(cluster.image_registry_username) != bool(cluster.image_registry_password):
        missing = "imageRegistryPassword" if cluster.image_registry_username else "imageRegistryUsername"
        raise SettingsError(missing, "", "the other half of the login is set: accepted: both, or neither")
    if cluster.image_registry_ca_certificate:
        try:
            parse_certificates(cluster.image_registry_ca_certificate)
        except CertificateError as error:
            raise SettingsError("imageRegistryCaCertificate", "<PEM>", f"accepted: PEM certificates; {error}") from None


def _check_external_database(settings: StackSettings) -> None:
    """What externalDatabaseUrl needs: its CA, and names that keep the admin and MLflow apart.

    postgresImage stays in use (the backups' pg_dump and pg_restore: its major must be at
    least the server's); postgresMemoryMb is the in-stack container's and has no effect
    (not refused: Pulumi.yaml's default is indistinguishable from a value set on purpose).
    """
    external = settings.external_database
    if external.location is None:
        if external.ca_certificate:
            raise SettingsError(
                "externalDatabaseCaCertificate",
                "<PEM>",
                "externalDatabaseUrl is empty (Postgres in the stack), which does not use it: "
                "accepted: empty, or an externalDatabaseUrl",
            )
        return
    if not external.ca_certificate:
        raise SettingsError(
            "externalDatabaseCaCertificate",
            "",
            "externalDatabaseUrl needs it (connections use sslmode verify-full): "
            "accepted: the PEM CA certificate(s) the database server's certificate chains to",
        )
    try:
        parse_certificates(external.ca_certificate)
    except CertificateError as error:
        raise SettingsError("externalDatabaseCaCertificate", "<PEM>", f"accepted: PEM certificates; {error}") from None
    database = settings.database
    if external.location.user == database.user:
        raise SettingsError(
            "postgresUser",
            database.user,
            f"externalDatabaseUrl logs in as '{external.location.user}', the admin role that creates MLflow's "
            "unprivileged one: accepted: another role name",
        )
    mlflow_databases = (database.name, database.auth_name, f"{database.name}{SCRATCH_DATABASE_SUFFIX}")
    if external.location.database in mlflow_databases:
        raise SettingsError(
            "externalDatabaseUrl",
            "<hidden>",
            f"its database '{external.location.database}' is one MLflow's role owns: accepted: the admin's "
            "maintenance database (such as postgres)",
        )


def _refuse_unused(group: str, location: BucketLocation, why: str, instead: str) -> None:
    keys: list[tuple[str, object]] = [
        (f"{group}Bucket", location.bucket),
        (f"{group}Prefix", location.prefix),
        (f"{group}Endpoint", location.endpoint),
        (f"{group}Region", location.region),
        (f"{group}PathStyle", location.path_style),
        (f"{group}AccessKeyId", location.access_key_id),
        (f"{group}SecretAccessKey", "<hidden>" if location.secret_access_key else ""),
        (f"{group}CaCertificate", "<PEM>" if location.ca_certificate else ""),
    ]
    for key, value in keys:
        if value:
            raise SettingsError(key, value, f"{why} does not use it: accepted: empty (false), or {instead}")


def _check_bucket(group: str, location: BucketLocation) -> None:
    """A bucket's key pair is whole or absent, and its CA certificate verifies an https:// endpoint."""
    # Both empty: the store's default credential chain (an instance role); one alone is a mistake.
    if bool(location.access_key_id) != bool(location.secret_access_key):
        missing = f"{group}SecretAccessKey" if location.access_key_id else f"{group}AccessKeyId"
        raise SettingsError(
            missing,
            "",
            f"the other half of the key pair is set: accepted: both {group}AccessKeyId and "
            f"{group}SecretAccessKey (secret), or neither (an instance role)",
        )
    if location.ca_certificate:
        if urlsplit(location.endpoint).scheme != "https":
            raise SettingsError(
                f"{group}CaCertificate",
                "<PEM>",
                f"it is used only to verify an https:// {group}Endpoint ({group}Endpoint is "
                f"{location.endpoint!r}): accepted: empty, or an https:// endpoint",
            )
        try:
            parse_certificates(location.ca_certificate)
        except CertificateError as error:
            raise SettingsError(f"{group}CaCertificate", "<PEM>", f"accepted: PEM certificates; {error}") from None


def _check_tls(settings: StackSettings) -> None:
    """What each TLS mode needs, checked before anything is declared."""
    tls = settings.tls
    mode = tls.mode
    if mode == "acme":
        host = settings.server.public_host
        if is_ip_address(host) or host == "localhost" or host.endswith(".localhost") or "." not in host:
            raise SettingsError(
                "publicHost",
                host,
                "tlsMode acme needs a public DNS name that resolves to this host (not an IP address or localhost); "
                "accepted otherwise: tlsMode internal or provided",
            )
        if not is_email(tls.acme_email):
            raise SettingsError(
                "acmeEmail",
                tls.acme_email,
                "tlsMode acme needs a contact address for the ACME account: accepted: an e-mail address",
            )
        url = tls.acme_directory_url
        if url and (urlsplit(url).scheme != "https" or not urlsplit(url).hostname):
            raise SettingsError(
                "acmeDirectoryUrl", url, "accepted: empty (Let's Encrypt) or an https:// ACME directory URL"
            )
    if tls.acme_ca_certificate:
        try:
            parse_certificates(tls.acme_ca_certificate)
        except CertificateError as error:
            raise SettingsError("acmeCaCertificate", "<PEM>", f"accepted: PEM certificates; {error}") from None
    if mode == "provided":
        _check_provided_certificate(settings)


def _check_provided_certificate(settings: StackSettings) -> None:
    tls = settings.tls
    if not tls.certificate:
        raise SettingsError(
            "tlsCertificate", "", "tlsMode provided needs it: accepted: the PEM certificate chain, leaf first"
        )
    if not tls.private_key:
        raise SettingsError(
            "tlsPrivateKey", "", "tlsMode provided needs it: accepted: the PEM private key, set with --secret"
        )
    try:
        check_key_pair(
            tls.certificate,
            tls.private_key,
            settings.server.public_host,
            datetime.datetime.now(datetime.UTC),
        )
    except CertificateError as error:
        raise SettingsError(error.key, error.shown, error.accepted) from None
