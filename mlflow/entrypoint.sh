#!/bin/sh
# Starts the MLflow tracking server. Secrets arrive as files (uploaded by the
# Pulumi program, mode 0400, owned by this user) and are read here, at start, so
# none is baked into the image, set in the container's environment or put on
# any command line: MLflow reads the store URI from MLFLOW_BACKEND_STORE_URI,
# which exists only in this process's own environment.
set -eu

: "${POSTGRES_HOST:?POSTGRES_HOST must name the Postgres host}"
: "${POSTGRES_PORT:=5432}"
: "${POSTGRES_DB:?POSTGRES_DB must name the tracking database}"
: "${POSTGRES_USER:?POSTGRES_USER must name the database user}"
: "${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE must point at the password file}"

# Percent-encode a file's content (trailing newline dropped) for use in a URI.
urlencode_file() {
  python -c 'import sys, urllib.parse; sys.stdout.write(urllib.parse.quote(sys.stdin.read().rstrip("\n"), safe=""))' <"$1"
}

umask 077
db_user=$(printf '%s' "$POSTGRES_USER" | python -c 'import sys, urllib.parse; sys.stdout.write(urllib.parse.quote(sys.stdin.read(), safe=""))')
db_password=$(urlencode_file "$POSTGRES_PASSWORD_FILE")
# postgresql+psycopg names the driver (psycopg 3) instead of relying on
# SQLAlchemy's default for a bare postgresql:// URI, which changed in 2.1.
MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://${db_user}:${db_password}@${POSTGRES_HOST}:${POSTGRES_PORT}/${POSTGRES_DB}"
export MLFLOW_BACKEND_STORE_URI
unset db_password

if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:-}" ]; then
  : "${MLFLOW_FLASK_SERVER_SECRET_KEY_FILE:?basic auth needs MLFLOW_FLASK_SERVER_SECRET_KEY_FILE}"
  MLFLOW_AUTH_ADMIN_PASSWORD=$(cat "$MLFLOW_AUTH_ADMIN_PASSWORD_FILE")
  MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$MLFLOW_FLASK_SERVER_SECRET_KEY_FILE")
  MLFLOW_AUTH_CONFIG_PATH="${TMPDIR:-/tmp}/mlflow-basic-auth.ini"
  export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_CONFIG_PATH
fi

# Creates the auth database on first start, upgrades an older schema before
# serving (a changed `mlflowVersion`), and writes the auth config when enabled.
python /opt/mlflow-entrypoint/prepare_db.py

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
