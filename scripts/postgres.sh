#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests and benchmarks.
#   scripts/postgres.sh start DIR [--fast]   starts one in DIR on a free loopback
#                                            port; prints its URL (--fast: no fsync)
#   scripts/postgres.sh stop DIR             stops it
#   scripts/postgres.sh restart DIR [fast|immediate] [PAUSE]
#                                            stops it (immediate: as in a crash),
#                                            waits PAUSE seconds, starts it again
#                                            on the same port
# Installs PostgreSQL from Debian's packages when it is missing. The server
# runs as the unprivileged `postgres` user (created by the package).
set -euo pipefail

bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

install() {
    if [ -z "$(bin_dir)" ] || [ ! -x "$(bin_dir)/initdb" ]; then
        echo "postgres.sh: installing PostgreSQL" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
    start)
        dir="${2:?usage: postgres.sh start DIR [--fast]}"
        install
        bin="$(bin_dir)"
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres "$dir"
        port="$(free_port)"
        as_postgres "$bin/initdb" -D "$dir/data" -A trust -U shepherd --no-instructions >/dev/null
        extra=""
        [ "${3:-}" = "--fast" ] && extra="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        options="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 $extra"
        echo "$options" > "$dir/options"
        as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -o "$options" start >/dev/null
        echo "postgres://shepherd@127.0.0.1:$port/postgres"
        ;;
    restart)
        dir="${2:?usage: postgres.sh restart DIR [fast|immediate] [PAUSE]}"
        bin="$(bin_dir)"
        as_postgres "$bin/pg_ctl" -D "$dir/data" -m "${3:-fast}" -w stop >/dev/null
        sleep "${4:-0}"
        as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -o "$(cat "$dir/options")" start >/dev/null
        ;;
    stop)
        dir="${2:?usage: postgres.sh stop DIR}"
        bin="$(bin_dir)"
        [ -d "$dir/data" ] && as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
        ;;
    *)
        echo "usage: postgres.sh start DIR [--fast] | stop DIR | restart DIR [fast|immediate] [PAUSE]" >&2
        exit 2
        ;;
esac
