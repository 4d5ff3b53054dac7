"""Readies the databases before `mlflow server` starts.

Run by the entrypoint with MLFLOW_BACKEND_STORE_URI set. It:
- with artifacts in a bucket (MLFLOW_ARTIFACTS_DESTINATION s3://...), first checks that the
  store answers, the bucket exists and the credentials are accepted, and otherwise stops
  the start with one line naming the config key, before anything is written;
- upgrades an existing tracking schema (`mlflow db upgrade`), so redeploying with a
  newer `mlflowVersion` never leaves the server refusing to start; when a migration
  is pending and MLFLOW_PRE_UPGRADE_BACKUP is true, it first has the stack's backup
  container take a backup, and logs its id, so the upgrade can be rolled back;
- refuses, before serving, a release older than the schema in the database (a
  downgrade of `mlflowVersion`), naming the release the data needs;
- creates the tables of a fresh database here, in one process: left to the server,
  every uvicorn worker races to create them and all but one fail; servers starting at
  once (replicas on a cluster) take turns under a Postgres advisory lock, so one asks
  for the backup and migrates, and the others find the schema current;
- when basic auth is on (MLFLOW_AUTH_CONFIG_PATH set), writes the auth config that
  points at the auth database (DatabaseBootstrap creates it: this role may not) and
  sets the admin's password to the declared one on every start: MLflow itself sets
  it only when it creates the admin, so kept, restored or rotated data would keep
  an old one.

Secrets stay in files and in this process. The URI carries no password: before
anything connects, the role's password goes from POSTGRES_PASSWORD_FILE into libpq's
password file (PGPASSFILE, on the container's tmpfs), which every later connection
of this container reads, the server's workers' included. The admin password is read
from MLFLOW_AUTH_ADMIN_PASSWORD_FILE. Neither is ever in a process's environment.
"""

from __future__ import annotations

import configparser
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.engine import make_url

_CONNECT_ATTEMPTS = 30
_AUTH_DATABASE_SUFFIX = "_auth"
# Recorded on the schema's version table (so it travels with pg_dump): which
# release last wrote the schema, for the downgrade message.
_WRITTEN_BY = "mlflow-platform: schema written by MLflow "
# Where `--serve-artifacts` puts runs when no --default-artifact-root is given; the
# Default experiment created here records it as its artifact location.
_PROXIED_ARTIFACT_ROOT = "mlflow-artifacts:/"
# The backup container (mlflow/backup/mlflow-backup) polls for a session of the MLflow role
# with this application name, takes a backup, and NOTIFYs its id on this channel.
_BACKUP_REQUEST_APPLICATION_NAME = "mlflow-backup-request"
_BACKUP_NOTIFY_CHANNEL = "mlflow_backup"
# The advisory lock servers take while they prepare the databases (any 64-bit key no other
# client uses; this one spells "mlflowdb"). A cluster starts several servers of a new release at
# once: without it, each would ask for a pre-upgrade backup and run the migration, and on a
# fresh database all but one would fail creating the same tables.
_PREPARE_LOCK_KEY = 0x6D6C666C6F776462


def _pgpass_field(value: str) -> str:
    # libpq's password file separates fields with ':' and escapes with '\\'.
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _write_password_file(path: str, uri: str, password_file: str) -> None:
    """One line for the URI's host, port and role, any database (tracking and auth)."""
    url = make_url(uri)
    password = Path(password_file).read_text(encoding="utf-8").rstrip("\n")
    host, port, role = (
        _pgpass_field(part) for part in (url.host or "localhost", str(url.port or 5432), url.username or "")
    )
    line = ":".join([host, port, "*", role, _pgpass_field(password)])
    # libpq ignores a password file that its group or others can read.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _engine(uri: str, **kwargs: object) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(uri, pool_pre_ping=True, **kwargs)


def _wait_for_database(engine: sqlalchemy.Engine) -> None:
    """Postgres is health-gated before first start, but not after a restart of its own."""
    for attempt in range(1, _CONNECT_ATTEMPTS + 1):
        try:
            with engine.connect():
                return
        except sqlalchemy.exc.OperationalError as error:
            # A wrong password will not fix itself: fail now, not after a minute.
            if attempt == _CONNECT_ATTEMPTS or "password authentication failed" in str(error):
                raise
            print(f"prepare_db: database not ready ({type(error).__name__}), retrying", file=sys.stderr)
            time.sleep(2)


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory
    from mlflow.store import db_migrations

    directory = ScriptDirectory(os.path.dirname(db_migrations.__file__))
    return {script.revision for script in directory.walk_revisions()}


def _refuse_downgrade(connection: sqlalchemy.Connection) -> None:
    """A release older than the schema cannot run on it: say which release the data needs."""
    import mlflow

    revision = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    if revision is None or revision in _known_revisions():
        return
    comment = connection.execute(
        sqlalchemy.text("SELECT obj_description('alembic_version'::regclass, 'pg_class')")
    ).scalar()
    needed = str(comment).removeprefix(_WRITTEN_BY) if comment and str(comment).startswith(_WRITTEN_BY) else None
    raise SystemExit(
        f"prepare_db: config key 'mlflowVersion' is {mlflow.__version__}, but the tracking database's schema "
        f"(revision {revision}) was written by "
        + (f"MLflow {needed}" if needed else f"a newer MLflow release than {mlflow.__version__}")
        + f", which {mlflow.__version__} cannot read; set mlflowVersion to "
        + (f"{needed} or newer" if needed else "the release the stack ran before")
        + " (a downgrade needs a backup taken before the upgrade)"
    )


def _record_release(engine: sqlalchemy.Engine) -> None:
    import mlflow

    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"COMMENT ON TABLE alembic_version IS '{_WRITTEN_BY}{mlflow.__version__}'"))


@contextmanager
def _alone(uri: str) -> Iterator[None]:
    """Holds the database's prepare lock: one server prepares at a time, the others wait here and
    then find nothing left to do. Held by a session, so a server that dies releases it."""
    engine = _engine(uri, isolation_level="AUTOCOMMIT")
    _wait_for_database(engine)
    key = {"key": _PREPARE_LOCK_KEY}
    try:
        with engine.connect() as connection:
            if not connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
                print("prepare_db: another server is preparing the database; waiting for it", file=sys.stderr)
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
    finally:
        engine.dispose()


def _prepare_tracking_schema(uri: str) -> None:
    engine = _engine(uri)
    _wait_for_database(engine)
    with engine.connect() as connection:
        has_schema = sqlalchemy.inspect(connection).has_table("alembic_version")
        if has_schema:
            _refuse_downgrade(connection)
    engine.dispose()
    if has_schema:
        from mlflow.cli import cli

        if os.environ.get("MLFLOW_PRE_UPGRADE_BACKUP") == "true" and _upgrade_pending(uri):
            backup_id = _request_backup(uri, float(os.environ.get("MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT", "300")))
            print(f"prepare_db: pre-upgrade backup {backup_id} taken; to roll back, restore it", file=sys.stderr)

        print("prepare_db: upgrading the tracking schema", file=sys.stderr)
        cli.main(args=["db", "upgrade", uri], prog_name="mlflow", standalone_mode=False)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # Creates the tables on a fresh database, and verifies the schema is current.
    SqlAlchemyStore(uri, _PROXIED_ARTIFACT_ROOT)  # type: ignore[no-untyped-call]  # mlflow ships no types
    engine = _engine(uri)
    _record_release(engine)
    engine.dispose()


def _upgrade_pending(uri: str) -> bool:
    """Whether the database's schema revision differs from this MLflow's newest migration."""
    from pathlib import Path

    import mlflow.store.db_migrations
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(Path(mlflow.store.db_migrations.__file__).parent)).get_current_head()
    engine = _engine(uri)
    with engine.connect() as connection:
        current = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    return current != head


def _request_backup(uri: str, timeout: float) -> str:
    """Asks the backup container for a backup through Postgres, which both reach; returns its id.

    No upgrade without it: a timeout or a failed backup stops the start here.
    """
    engine = _engine(uri, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"LISTEN {_BACKUP_NOTIFY_CHANNEL}"))
        # Set after LISTEN, so the backup container never answers before we listen.
        connection.execute(sqlalchemy.text(f"SET application_name = '{_BACKUP_REQUEST_APPLICATION_NAME}'"))
        print(f"prepare_db: schema upgrade pending; waiting up to {timeout:.0f}s for a backup", file=sys.stderr)
        # psycopg 3's own connection delivers the notifications.
        driver_connection = connection.connection.driver_connection
        assert driver_connection is not None
        for notice in driver_connection.notifies(timeout=timeout, stop_after=1):
            if notice.payload == "failed":
                raise SystemExit("prepare_db: the pre-upgrade backup failed (see the backup container's log)")
            if notice.payload.startswith("refused: "):
                raise SystemExit(f"prepare_db: the backup container {notice.payload}; the schema was not upgraded")
            return str(notice.payload)
    engine.dispose()
    raise SystemExit(
        f"prepare_db: no pre-upgrade backup within {timeout:.0f}s: is the backup container running? "
        "The schema was not upgraded."
    )


def _auth_database_uri(uri: str) -> str:
    tracking_url = make_url(uri)
    auth_url = tracking_url.set(database=f"{tracking_url.database}{_AUTH_DATABASE_SUFFIX}")
    return auth_url.render_as_string(hide_password=False)


def _apply_admin_password(database_uri: str, username: str, password: str) -> None:
    """The declared admin password in force, whatever the auth database held."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore

    store = AuthStore()
    store.init_db(database_uri)  # type: ignore[no-untyped-call]  # creates or upgrades the auth tables
    if not store.has_user(username):
        store.create_user(username, password, is_admin=True)
        print(f"prepare_db: created admin user '{username}'", file=sys.stderr)
    else:
        if not store.authenticate_user(username, password):
            store.update_user(username, password=password)
            print(f"prepare_db: set the declared password of admin user '{username}'", file=sys.stderr)
        if not store.get_user(username).is_admin:
            store.update_user(username, is_admin=True)
    store.engine.dispose()


def _write_auth_config(path: str, database_uri: str, admin_password: str) -> None:
    config = configparser.ConfigParser()
    # ConfigParser interpolates '%': a percent-encoded password must be doubled.
    config["mlflow"] = {
        "default_permission": os.environ.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ"),
        "database_uri": database_uri.replace("%", "%%"),
        "admin_username": os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"),
        # The only copy outside its secret file, in this 0600 file on the tmpfs: MLflow reads
        # it here when MLFLOW_AUTH_ADMIN_PASSWORD is not set, which keeps it out of every
        # worker's environment.
        "admin_password": admin_password.replace("%", "%%"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # Seconds a worker trusts a password it verified instead of hashing it again on
        # every request (API clients send no session cookie); 0, MLflow's default, is off.
        "auth_cache_ttl_seconds": os.environ.get("MLFLOW_AUTH_CACHE_TTL_SECONDS", "0"),
    }
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        config.write(handle)


# How long the start-up check waits for the store: long enough for a slow link, short
# enough that a wrong endpoint ends the start in seconds rather than after the health check's wait.
_STORE_TIMEOUT_SECONDS = 10


def store_location() -> str:
    """The store as messages name it: the endpoint, or AWS S3 when there is none."""
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or "AWS S3"


def store_client(session: Any, *, timeout: int, attempts: int) -> Any:
    """An S3 client that reaches the bucket as `mlflow server` does: the endpoint and addressing
    style from the environment, the key pair from AWS_SHARED_CREDENTIALS_FILE (boto3's chain)."""
    import botocore.config

    return session.client(
        "s3",
        endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
        config=botocore.config.Config(
            # MLflow's own client settings (mlflow/store/artifact/s3_artifact_repo.py).
            signature_version="s3v4",
            s3={"addressing_style": os.environ.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE", "auto")},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": attempts, "mode": "standard"},
        ),
    )


class ArtifactStoreError(SystemExit):
    """The bucket cannot be used: one line naming the config key and what is wrong."""


def _check_artifact_store(destination: str) -> None:
    """Before anything is written: the store answers, the bucket exists, the key pair may list the prefix.

    Left to MLflow, a wrong endpoint, bucket or key surfaces only at the first artifact
    upload, as a 500 to a client, after runs were already recorded in the database.
    ListObjectsV2 rather than HeadBucket: a HEAD answer has no body, so a refusal is a bare
    403 whether the key is unknown, its secret wrong or the bucket closed to it; a listing's
    error code tells them apart (and MLflow needs the listing anyway).
    """
    try:
        import boto3
        import botocore.exceptions
    except ImportError:
        import mlflow

        version = mlflow.__version__
        raise ArtifactStoreError(
            f"prepare_db: config key 'artifactStore' is 's3', but this image (MLflow {version}) has no boto3: "
            f"its lock predates the S3 store; run 'make lock-image MLFLOW_VERSION={version}' and deploy again"
        ) from None

    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    where = store_location()
    session = boto3.Session()
    client = store_client(session, timeout=_STORE_TIMEOUT_SECONDS, attempts=2)
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except botocore.exceptions.SSLError as error:
        raise ArtifactStoreError(
            f"prepare_db: config key 'artifactEndpoint' is {where!r}, whose TLS certificate is not trusted "
            f"({type(error).__name__}); give its CA in artifactCaCertificate"
        ) from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as error:
        raise ArtifactStoreError(
            f"prepare_db: config key 'artifactEndpoint' is {where!r}, which does not answer "
            f"({type(error).__name__}); check the URL and that this container has a route to it"
        ) from None
    except botocore.exceptions.NoCredentialsError:
        raise ArtifactStoreError(
            "prepare_db: config keys 'artifactAccessKeyId' and 'artifactSecretAccessKey' are empty and no "
            "other credentials (an instance role) were found; set both"
        ) from None
    except botocore.exceptions.ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.response.get("Error", {}).get("Code", "")
        credentials = session.get_credentials()
        # The key id is no secret (it names the key); the secret key is never shown.
        key_id = credentials.access_key if credentials is not None else ""
        raise ArtifactStoreError(_refusal(code, status, bucket, where, key_id)) from None
    print(f"prepare_db: artifact store {destination} at {where} is reachable", file=sys.stderr)


def _refusal(code: str, status: object, bucket: str, where: str, key_id: str) -> str:
    """The one line for a store's refusal: the config key to change and why."""
    if code == "NoSuchBucket" or status == 404:
        return (
            f"prepare_db: config key 'artifactBucket' is {bucket!r}, which does not exist at {where}; "
            "create it first (the stack never creates or deletes buckets)"
        )
    if code == "InvalidAccessKeyId":
        return f"prepare_db: config key 'artifactAccessKeyId' is {key_id!r}, which {where} does not know"
    if code == "SignatureDoesNotMatch":
        return (
            f"prepare_db: config key 'artifactSecretAccessKey' is not the secret of artifactAccessKeyId "
            f"{key_id!r} ({where} refused the signature)"
        )
    if code == "AccessDenied" or status == 403:
        return (
            f"prepare_db: config key 'artifactBucket' is {bucket!r}, which {where} does not let "
            f"artifactAccessKeyId {key_id!r} list (the bucket is missing, or its policy does not grant "
            "ListBucket, GetObject, PutObject and DeleteObject on the prefix)"
        )
    return f"prepare_db: config key 'artifactBucket' is {bucket!r}: {where} answered HTTP {status} {code}"


def _read_secret(variable: str) -> str:
    return Path(os.environ[variable]).read_text(encoding="utf-8").rstrip("\n")


def main() -> None:
    # First: a store that cannot be used stops the start before the database is touched.
    destination = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if destination.startswith("s3://"):
        _check_artifact_store(destination)
    uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
    if os.environ.get("PGPASSFILE") and os.environ.get("POSTGRES_PASSWORD_FILE"):
        _write_password_file(os.environ["PGPASSFILE"], uri, os.environ["POSTGRES_PASSWORD_FILE"])
    with _alone(uri):
        _prepare_tracking_schema(uri)
        auth_config_path = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
        if auth_config_path:
            auth_uri = _auth_database_uri(uri)
            admin_password = _read_secret("MLFLOW_AUTH_ADMIN_PASSWORD_FILE")
            _write_auth_config(auth_config_path, auth_uri, admin_password)
            # Concurrent servers would each create a missing admin: one would fail on the unique name.
            _apply_admin_password(auth_uri, os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), admin_password)


if __name__ == "__main__":
    main()
