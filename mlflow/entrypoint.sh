#!/bin/sh
# Starts the MLflow tracking server. Secrets arrive as files (uploaded by the
# Pulumi program, mode 0400, owned by this user) and stay files: none is baked
# into the image, set in the container's environment, put on a command line or
# exported to a process. `mlflow server` hands its configuration to uvicorn and
# every worker through the environment (/proc/<pid>/environ), so what goes there
# must hold no secret:
# - the database URIs carry no password: libpq reads it from PGPASSFILE, written
#   here to this container's private tmpfs;
# - the admin password goes from its file into the basic-auth config (tmpfs, 0600);
# - the Flask secret key is read from its file by each worker (mlflow/platform_auth.py).
set -eu

: "${POSTGRES_HOST:?POSTGRES_HOST must name the Postgres host}"
: "${POSTGRES_PORT:=5432}"
: "${POSTGRES_DB:?POSTGRES_DB must name the tracking database}"
: "${POSTGRES_USER:?POSTGRES_USER must name the database user}"
: "${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE must point at the password file}"

# Fail here, naming the file, rather than in the middle of prepare_db.py.
require_readable() {
  if [ ! -r "$2" ]; then
    printf 'mlflow-entrypoint: %s (%s) is not a readable file\n' "$1" "$2" >&2
    exit 1
  fi
}
require_readable POSTGRES_PASSWORD_FILE "$POSTGRES_PASSWORD_FILE"

umask 077
private_dir=${TMPDIR:-/tmp}
# prepare_db.py writes the role's password there, from POSTGRES_PASSWORD_FILE, before
# anything connects; libpq (psycopg) reads it whenever a URI has no password.
PGPASSFILE="$private_dir/pgpass"
export PGPASSFILE

db_user=$(printf '%s' "$POSTGRES_USER" | python -c 'import sys, urllib.parse; sys.stdout.write(urllib.parse.quote(sys.stdin.read(), safe=""))')
# postgresql+psycopg names the driver (psycopg 3) instead of relying on
# SQLAlchemy's default for a bare postgresql:// URI, which changed in 2.1.
MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://${db_user}@${POSTGRES_HOST}:${POSTGRES_PORT}/${POSTGRES_DB}"
export MLFLOW_BACKEND_STORE_URI

if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:-}" ]; then
  : "${MLFLOW_FLASK_SERVER_SECRET_KEY_FILE:?basic auth needs MLFLOW_FLASK_SERVER_SECRET_KEY_FILE}"
  require_readable MLFLOW_AUTH_ADMIN_PASSWORD_FILE "$MLFLOW_AUTH_ADMIN_PASSWORD_FILE"
  require_readable MLFLOW_FLASK_SERVER_SECRET_KEY_FILE "$MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"
  MLFLOW_AUTH_CONFIG_PATH="$private_dir/mlflow-basic-auth.ini"
  export MLFLOW_AUTH_CONFIG_PATH
fi

# Writes the password file, upgrades an older schema before serving (a changed
# `mlflowVersion`), and writes the auth config when enabled.
python /opt/mlflow-entrypoint/prepare_db.py

# With artifacts in a bucket MLflow spools each proxied upload and download whole in a
# temporary directory (its S3 repository takes no stream): there, on a disk volume, not
# on the /tmp tmpfs, which counts against the memory limit. Switched only now, so the
# password and auth files prepare_db.py wrote stay on the tmpfs.
if [ -n "${MLFLOW_SPOOL_DIR:-}" ]; then
  TMPDIR=$MLFLOW_SPOOL_DIR
  export TMPDIR
fi

# prometheus_client's multiprocess files must not outlive the workers that wrote them.
# After a crash the restarted container still has the old ones, and its new workers
# failed on them in a restart loop: each start gets a fresh directory of its own.
expose=""
for argument in "$@"; do
  shift
  if [ "$expose" = next ]; then
    argument=$(mktemp -d "$argument/run.XXXXXX")
    # prometheus_client reads its directory from here, MLflow's flag from the argument.
    PROMETHEUS_MULTIPROC_DIR=$argument
    export PROMETHEUS_MULTIPROC_DIR
    expose=made
  elif [ "$argument" = "--expose-prometheus" ]; then
    expose=next
  fi
  set -- "$@" "$argument"
done

exec mlflow server "$@"
