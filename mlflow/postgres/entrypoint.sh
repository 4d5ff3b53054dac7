#!/bin/sh
# Entrypoint of the Postgres container, uploaded by the Pulumi program: it checks
# that the image's major version can open the data directory, then hands over to
# the official image's entrypoint (docker-entrypoint.sh), which execs postgres.
# Without this check a changed `postgresImage` major fails with Postgres's own
# "database files are incompatible with server", which names neither the config
# key nor the way out.
#
# The superuser's password file is for initdb alone, on an empty data directory
# (and DatabaseBootstrap removes that password right after). The image's entrypoint
# reads it into POSTGRES_PASSWORD, exported, and execs the server with it: the
# password would sit in the server's /proc/<pid>/environ for as long as it runs.
# So the server never starts with it: once a cluster is there the file is not passed
# on, and on an empty data directory the image's entrypoint initialises the cluster
# and starts a server that listens on no TCP address, which this script stops as
# soon as it is up (seconds, once per volume), before the real server starts.
set -eu

: "${PGDATA:?PGDATA must name the data directory}"
image_major=${PG_MAJOR:-$(postgres --version | sed -E 's/^[^0-9]*([0-9]+).*/\1/')}

if [ -s "$PGDATA/PG_VERSION" ]; then
  data_major=$(cat "$PGDATA/PG_VERSION")
  if [ "$data_major" != "$image_major" ]; then
    printf '%s\n' \
      "mlflow-platform: config key 'postgresImage' is ${POSTGRES_IMAGE_REFERENCE:-this image} (PostgreSQL ${image_major}), but the data volume holds a PostgreSQL ${data_major} cluster, which PostgreSQL ${image_major} cannot open." \
      "mlflow-platform: set postgresImage back to a ${data_major}.x image, or move the data to ${image_major} first: README.md, section 'Upgrading Postgres to a new major version'." >&2
    exit 78
  fi
  unset POSTGRES_PASSWORD_FILE
  exec docker-entrypoint.sh "$@"
fi

# Later -c settings win: the initialising run is reachable only through its socket, so
# neither the health check (over TCP) nor a client sees it; DatabaseBootstrap waits for health.
docker-entrypoint.sh "$@" -c listen_addresses= &
initialising=$!
# This script is PID 1 until the server starts: pass a `docker stop` on.
trap 'kill -TERM "$initialising" 2>/dev/null || :' TERM
# Up once the entrypoint has exec'd the server (the same pid, now named postgres) and
# the server accepts connections; the image's own temporary server runs under other pids.
until [ "$(cat "/proc/$initialising/comm" 2>/dev/null)" = postgres ] && pg_isready -q; do
  if ! kill -0 "$initialising" 2>/dev/null; then
    status=0
    wait "$initialising" || status=$?
    printf 'mlflow-platform: initialising the data directory failed (exit %s); see the lines above\n' "$status" >&2
    exit 1
  fi
  sleep 0.2
done
# SIGTERM: a smart shutdown, immediate with no session open (no client can have one). Not
# SIGINT: a non-interactive shell starts background commands with SIGINT ignored.
kill -TERM "$initialising"
wait "$initialising" || :
printf 'mlflow-platform: cluster initialised; starting the server without the password in its environment\n' >&2
unset POSTGRES_PASSWORD_FILE
exec docker-entrypoint.sh "$@"
