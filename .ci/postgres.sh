#!/usr/bin/env bash
# Private, throwaway PostgreSQL cluster for the test suite.
#
# Used by .ci/run (CI) and by the `postgres_url` fixture in tests/conftest.py
# (developer machines), so both start the server exactly the same way.
#
#   .ci/postgres.sh bindir        print the PostgreSQL bin directory (exit 1 if none)
#   .ci/postgres.sh start DIR     initdb into DIR (created if needed), start the server
#                                 on 127.0.0.1:<free port> with its unix socket inside DIR,
#                                 trust auth, create database ndp_test; print its URL
#                                 (the only thing written to stdout)
#   .ci/postgres.sh stop DIR      stop that server and delete DIR (no-op if nothing runs)
#
# Environment: NDP_PG_BINDIR (force a bin dir), NDP_PG_PORT (force a port),
# NDP_PG_OS_USER (OS user that runs the server when invoked as root; default postgres,
# because initdb/postgres refuse to run as root).
#
# The cluster is tuned for throwaway tests (fsync=off etc.): never point it at data you keep.
set -euo pipefail

DB_NAME=ndp_test
MARKER=.ndp-throwaway-pg-cluster
PG_OS_USER=${NDP_PG_OS_USER:-postgres}

log() { printf '[postgres.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_bindir() {
    local d
    if [[ -n ${NDP_PG_BINDIR:-} ]]; then
        [[ -x $NDP_PG_BINDIR/initdb && -x $NDP_PG_BINDIR/pg_ctl ]] || return 1
        printf '%s\n' "$NDP_PG_BINDIR"; return 0
    fi
    # Debian/Ubuntu layout; newest major version wins.
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $d && -x $d/initdb && -x $d/pg_ctl ]]; then printf '%s\n' "$d"; return 0; fi
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n $d && -x $d/initdb && -x $d/pg_ctl ]]; then printf '%s\n' "$d"; return 0; fi
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"; return 0
    fi
    return 1
}

# Run a command as the unprivileged server owner when we are root.
as_pg() {
    if [[ $(id -u) -ne 0 ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        su -s /bin/sh "$PG_OS_USER" -c "$(printf '%q ' "$@")"
    fi
}

free_port() {
    if [[ -n ${NDP_PG_PORT:-} ]]; then printf '%s\n' "$NDP_PG_PORT"; return; fi
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local p
    for p in $(seq 55432 55531); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then printf '%s\n' "$p"; return; fi
    done
    die "no free port in 55432-55531"
}

cmd_start() {
    local dir=$1 bindir port url
    bindir=$(find_bindir) || die "PostgreSQL server binaries (initdb, pg_ctl) not found; install them (Debian: apt-get install postgresql) or set NDP_PG_BINDIR"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    touch "$dir/$MARKER"
    # Unset libpq variables from the caller's environment that would redirect our clients.
    unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS PGDATA

    if [[ $(id -u) -eq 0 ]]; then
        id "$PG_OS_USER" >/dev/null 2>&1 \
            || die "running as root but OS user '$PG_OS_USER' does not exist (initdb refuses root); set NDP_PG_OS_USER"
        chown "$PG_OS_USER" "$dir"
        chmod 700 "$dir"
        as_pg test -w "$dir" \
            || die "'$PG_OS_USER' cannot write $dir (is a parent directory not traversable? set TMPDIR)"
    fi
    cd "$dir"   # so the server user never inherits an unreadable cwd

    if [[ ! -s $dir/data/PG_VERSION ]]; then
        port=$(free_port)
        log "initdb ($bindir) into $dir/data"
        as_pg mkdir -p "$dir/sock"
        as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale \
            --no-sync >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        as_pg tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# --- throwaway test cluster (.ci/postgres.sh) ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        printf '%s\n' "$port" >"$dir/port"
    fi
    port=$(cat "$dir/port")

    if ! as_pg "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        log "starting server on 127.0.0.1:$port"
        if ! as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >&2; then
            log "server log (tail):"; tail -n 40 "$dir/postgres.log" >&2 || true
            die "pg_ctl start failed"
        fi
    fi

    if [[ $("$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -XAtq \
            -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") != 1 ]]; then
        "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Xq -v ON_ERROR_STOP=1 \
            -c "CREATE DATABASE $DB_NAME" >&2 || die "CREATE DATABASE $DB_NAME failed"
    fi
    url="postgresql://postgres@127.0.0.1:$port/$DB_NAME"
    log "ready: $url"
    printf '%s\n' "$url"
}

cmd_stop() {
    local dir=$1 bindir pid
    [[ -d $dir ]] || return 0
    [[ -e $dir/$MARKER ]] || die "$dir was not created by this script; refusing to touch it"
    cd /
    if [[ -f $dir/data/postmaster.pid ]]; then
        bindir=$(find_bindir) || bindir=
        if [[ -n $bindir ]]; then
            as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >&2 \
                || as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >&2 || true
        fi
        if [[ -f $dir/data/postmaster.pid ]]; then
            pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)
            if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
                log "pg_ctl stop failed; sending SIGKILL to postmaster $pid"
                kill -KILL "$pid" 2>/dev/null || true
                sleep 1
            fi
        fi
    fi
    rm -rf -- "$dir"
    log "stopped and removed $dir"
}

case ${1:-} in
    bindir) find_bindir || { log "no PostgreSQL server binaries found"; exit 1; } ;;
    start)  [[ $# -eq 2 ]] || die "usage: $0 start DIR"; cmd_start "$2" ;;
    stop)   [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
    *)      die "usage: $0 {bindir | start DIR | stop DIR}" ;;
esac
