#!/bin/sh
# A subset of the official postgres image's entrypoint: on an empty $PGDATA run initdb once, apply
# /docker-entrypoint-initdb.d/*.sql and *.sh through a server listening on a private socket only,
# then exec the command. The superuser password only ever comes from POSTGRES_PASSWORD_FILE.
set -eu

die() {
  echo "docker-entrypoint: $*" >&2
  exit 1
}

# As in the official image, bare flags are arguments to postgres.
case "${1:-}" in -*) set -- postgres "$@" ;; esac

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD_FILE:-}" ] ||
    die "POSTGRES_PASSWORD_FILE is not set; it must name a file holding the superuser password"
  [ -f "$POSTGRES_PASSWORD_FILE" ] && [ -r "$POSTGRES_PASSWORD_FILE" ] ||
    die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is not a file readable by uid $(id -u)"
  export POSTGRES_USER="${POSTGRES_USER:-postgres}"
  export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

  # POSTGRES_INITDB_ARGS is a list of arguments, so it is split on purpose.
  # shellcheck disable=SC2086
  initdb --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" ${POSTGRES_INITDB_ARGS:-}
  # As in the official image, network clients authenticate with a password.
  printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

  # Init scripts may run under --auth-local=scram-sha-256; psql reads the password from the
  # environment, never from argv, and it is unset before the server proper starts.
  PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
  # Unlike the official image, the init server's socket is private: a health check such as
  # `pg_isready -h /var/run/postgresql` must not pass before the real server runs.
  PGHOST=$(mktemp -d)
  export PGPASSWORD PGHOST
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=$PGHOST" -w start

  init_psql() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username="$POSTGRES_USER" "$@"
  }
  if [ "$POSTGRES_DB" != postgres ]; then
    init_psql --dbname=postgres --set=db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sql)
        echo "docker-entrypoint: running $f"
        init_psql --dbname="$POSTGRES_DB" -f "$f"
        ;;
      *.sh)
        echo "docker-entrypoint: running $f"
        # Like the official image: executable scripts run, others are sourced.
        if [ -x "$f" ]; then "$f"; else . "$f"; fi
        ;;
      */\*) ;; # the directory is empty
      *) echo "docker-entrypoint: ignoring $f" ;;
    esac
  done

  pg_ctl -D "$PGDATA" -m fast -w stop
  rmdir "$PGHOST"
  unset PGPASSWORD PGHOST
  echo "docker-entrypoint: initialization complete"
fi

exec "$@"
