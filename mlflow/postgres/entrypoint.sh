#!/bin/sh
# Entrypoint of the Postgres container, uploaded by the Pulumi program: it checks
# that the image's major version can open the data directory, then hands over to
# the official image's entrypoint (docker-entrypoint.sh), which execs postgres.
# Without this check a changed `postgresImage` major fails with Postgres's own
# "database files are incompatible with server", which names neither the config
# key nor the way out.
#
# The superuser's password file is for initdb alone, on an empty data directory
# (and DatabaseBootstrap removes that password right after). Once a cluster is
# there it is not passed on: the image's entrypoint would otherwise read it on
# every start and export it into the server's environment.
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
fi

exec docker-entrypoint.sh "$@"
