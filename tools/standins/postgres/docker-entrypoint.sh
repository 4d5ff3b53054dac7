#!/bin/sh
# Entrypoint of the local postgres stand-in (tests only). It follows the official
# postgres image's contract, the part the Pulumi program uses:
#   POSTGRES_USER (default postgres), POSTGRES_DB (default: the user),
#   POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD, PGDATA;
#   initdb only when PGDATA holds no cluster yet, scram-sha-256 over TCP;
#   started as root it takes PGDATA and drops to postgres (999:999); started as
#   999:999 (e.g. with every capability dropped) it runs as it is.
# The password is never printed, put on a command line or left in a file of ours.
set -eu

die() {
  printf 'docker-entrypoint.sh: %s\n' "$*" >&2
  exit 1
}

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# `docker run IMAGE -c name=value` means `postgres -c name=value`.
case "${1:-}" in
  -*) set -- postgres "$@" ;;
esac

# Any other command (psql, bash, ...) runs as given.
if [ "${1:-}" != postgres ]; then
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
  # The server refuses to run as root: hand it PGDATA and the socket directory,
  # then run this script again as postgres.
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  chown postgres:postgres /var/run/postgresql
  chmod 3777 /var/run/postgresql
  HOME=/var/lib/postgresql
  export HOME
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

# As postgres (or another uid the operator chose). initdb would create PGDATA
# itself, but a pre-existing empty one (a fresh volume) must be ours and private.
mkdir -p "$PGDATA"
chmod 0700 "$PGDATA" 2>/dev/null || :

# As the official image's file_env does on every start: POSTGRES_PASSWORD_FILE is read
# into POSTGRES_PASSWORD, exported (so the server execed below has it in its environment,
# as with the official image), and the _FILE variable unset.
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  [ -z "${POSTGRES_PASSWORD:-}" ] || die "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, not both"
  [ -r "$POSTGRES_PASSWORD_FILE" ] || die "POSTGRES_PASSWORD_FILE ($POSTGRES_PASSWORD_FILE) is not readable by uid $(id -u)"
  POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
  export POSTGRES_PASSWORD
  unset POSTGRES_PASSWORD_FILE
fi

init_cluster() {
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}

  [ -n "${POSTGRES_PASSWORD:-}" ] \
    || die "the database is uninitialized and no password is set: set POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD"
  # initdb reads the superuser password only from a file. printf is a shell
  # builtin, so the password appears on no command line.
  pwfile=$(umask 077 && mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"

  printf 'docker-entrypoint.sh: initializing a new cluster in %s for user %s\n' "$PGDATA" "$user"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" \
    --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --locale=C.UTF-8
  rm -f "$pwfile"

  # initdb's host lines cover only loopback; other containers connect over the
  # network, with a password.
  printf '\n# Added by docker-entrypoint.sh: password logins from any address.\nhost all all all scram-sha-256\n' \
    >>"$PGDATA/pg_hba.conf"

  if [ "$db" != postgres ]; then
    # A server reachable only through its socket, so nobody connects before
    # initialization is over.
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses='' -p 5432" --wait --timeout=60 \
      --silent start
    psql -X -v ON_ERROR_STOP=1 --no-password --username="$user" --dbname=postgres \
      --set=db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait --timeout=60 --silent stop
  fi
  printf 'docker-entrypoint.sh: initialization done\n'
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  init_cluster
else
  printf 'docker-entrypoint.sh: %s already holds a cluster; skipping initialization\n' "$PGDATA"
fi

exec "$@"
