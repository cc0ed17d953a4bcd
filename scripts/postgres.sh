#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1, for the search's distributed test and for trying several search workers on one
# machine. Not for real studies: fsync is off and anyone on this machine may connect as `postgres` without a password.
#
#   eval "$(scripts/postgres.sh start)"      # prints (and so exports) ASR_KD_PG_DIR and ASR_KD_PG_URL
#   asr-kd search --run-dir runs/x --fraction 1.0 --storage "$ASR_KD_PG_URL" &
#   scripts/postgres.sh stop "$ASR_KD_PG_DIR"  # stops the server and deletes its directory
#
# start [DIR]  DIR: where the cluster lives (default: a new /tmp/asr-kd-pg.XXXXXX); port: $ASR_KD_PG_PORT or a free one.
# initdb refuses to run as root, so as root the server runs as user `postgres` (or `nobody` when there is none).
# Exit status 3: no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin.
set -euo pipefail

find_bin() {
  command -v "$1" 2>/dev/null && return 0
  local c; c=$(ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1)
  [ -n "$c" ] && echo "$c"
}

os_user() {
  if [ "$(id -u)" != 0 ]; then id -un; elif id postgres >/dev/null 2>&1; then echo postgres; else echo nobody; fi
}

as_user() {   # run "$@" as the server's OS user
  if [ "$(id -u)" != 0 ]; then "$@"
  elif command -v runuser >/dev/null 2>&1; then runuser -u "$(os_user)" -- "$@"
  else su -s /bin/sh "$(os_user)" -c "$(printf '%q ' "$@")"; fi
}

need_bins() {
  INITDB=$(find_bin initdb || true); PG_CTL=$(find_bin pg_ctl || true)
  if [ -z "$INITDB" ] || [ -z "$PG_CTL" ]; then echo "postgres.sh: no PostgreSQL server binaries (initdb, pg_ctl) found" >&2; exit 3; fi
  BIN=$(dirname "$(readlink -f "$INITDB")")
}

start() {
  need_bins
  local dir="${1:-$(mktemp -d /tmp/asr-kd-pg.XXXXXX)}"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  local port="${ASR_KD_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
  [ "$(id -u)" = 0 ] && chown "$(os_user)" "$dir"
  as_user "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { echo "postgres.sh: initdb failed, see $dir/initdb.log:" >&2; tail -n 20 "$dir/initdb.log" >&2; exit 1; }
  as_user "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null \
    || { echo "postgres.sh: server did not start, see $dir/server.log:" >&2; tail -n 20 "$dir/server.log" >&2; exit 1; }
  as_user "$BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres optuna
  echo "export ASR_KD_PG_DIR=$dir"
  echo "export ASR_KD_PG_URL=postgresql+psycopg2://postgres@127.0.0.1:$port/optuna"
}

stop() {
  need_bins
  local dir="${1:?usage: postgres.sh stop DIR}"
  [ -d "$dir/data" ] || { echo "postgres.sh: $dir holds no server (no $dir/data)" >&2; exit 1; }
  as_user "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
