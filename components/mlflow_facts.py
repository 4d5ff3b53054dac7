"""Facts about the MLflow image built from mlflow/: its user, its paths, the files it reads.

One place for what mlflow/Dockerfile, mlflow/entrypoint.sh, prepare_db.py, bootstrap_db.py
and gc.py expect, so the server, the bootstrap, the backups and gc agree on them
without importing each other.
"""

from __future__ import annotations

from components.context import DATABASE_CA_FILE, DatabaseEndpoint
from components.workload import SECRETS_DIR, File, config_file, secret_file

# Relative to the project directory, where `pulumi up` runs: an absolute path
# would differ per machine and show as a change in every teammate's preview.
BUILD_CONTEXT = "./mlflow"
# The image's dedicated user (mlflow/Dockerfile).
MLFLOW_UID = "10001"
MLFLOW_USER = f"{MLFLOW_UID}:{MLFLOW_UID}"
SERVER_PORT = 5000
ARTIFACTS_DIR = "/mlflow/artifacts"
# With a bucket: where the entrypoint points TMPDIR once the secrets are written, so the
# server spools proxied artifacts on a scratch volume, not in memory (mlflow/entrypoint.sh).
SPOOL_DIR = "/mlflow/spool"
ADMIN_USERNAME = "admin"
# The basic-auth app's database is the tracking database's name plus this (prepare_db.py).
AUTH_DATABASE_SUFFIX = "_auth"
# `mlflow-backup verify`'s scratch database: the tracking database's name plus this (bootstrap_db.py).
SCRATCH_DATABASE_SUFFIX = "_tmp"
# Secret files the entrypoint, prepare_db.py, bootstrap_db.py and gc.py read.
DB_PASSWORD_FILE = f"{SECRETS_DIR}/postgres-password"
ADMIN_PASSWORD_FILE = f"{SECRETS_DIR}/admin-password"
FLASK_SECRET_FILE = f"{SECRETS_DIR}/flask-secret-key"
DB_CA_FILE = DATABASE_CA_FILE
# The external database's admin URL (secret): only the bootstrap gets it.
DB_ADMIN_URL_FILE = f"{SECRETS_DIR}/database-admin-url"
# MLflow's basic auth, as the image registers it (mlflow/platform_auth.py): each worker
# reads the Flask key from FLASK_SECRET_FILE, so no process has it in its environment.
AUTH_APP_NAME = "platform-basic-auth"
BOOTSTRAP_SCRIPT = "/opt/mlflow-entrypoint/bootstrap_db.py"
GC_COMMAND = "/usr/local/bin/mlflow-gc"
# mlflow/Dockerfile's ENTRYPOINT: starts `mlflow server` with the arguments it is given.
MLFLOW_ENTRYPOINT = "/usr/local/bin/mlflow-entrypoint"
# What a server needs besides its workers, and what each uvicorn worker adds. Measured
# after start with 2 workers, auth on and job execution off, the server holds 582 MiB
# (tests/test_e2e_secrets.py reports it; see the README's Performance section): the CLI
# and uvicorn's supervisor plus ~200 MiB per worker. These leave headroom: 256 MiB, plus
# 256 per worker (so 512 for one worker, 768 for two); mlflowMemoryMb may not be less.
BASE_MEMORY_MB = 256
WORKER_MEMORY_MB = 256


def database_environment(database: DatabaseEndpoint) -> list[str]:
    """Where the database is, for the image's entrypoint, prepare_db.py and gc.py; the password as a file."""
    return [
        f"POSTGRES_HOST={database.host}",
        f"POSTGRES_PORT={database.port}",
        f"POSTGRES_DB={database.database}",
        f"POSTGRES_USER={database.role}",
        f"POSTGRES_PASSWORD_FILE={DB_PASSWORD_FILE}",
        *database_tls_environment(database),
    ]


def database_tls_environment(database: DatabaseEndpoint) -> list[str]:
    """libpq's defaults for every connection a process opens (psycopg, SQLAlchemy, psql, pg_dump):
    to an external database only over TLS, to the host its certificate names, signed by its CA.
    verify-full, not require: require encrypts but would talk to whoever answers at that address."""
    if not database.ca_certificate:
        return []
    return ["PGSSLMODE=verify-full", f"PGSSLROOTCERT={DB_CA_FILE}"]


def database_files(database: DatabaseEndpoint) -> list[File]:
    """The role's password (secret) and, for an external database, its CA (public)."""
    files = [secret_file(DB_PASSWORD_FILE, database.password)]
    if database.ca_certificate:
        files.append(config_file(DB_CA_FILE, database.ca_certificate))
    return files
