#!/usr/bin/env bash
# Full-text search and the read cache, measured (issue 15), release build:
#   - DOCS documents (title + body, words drawn by Zipf's law) imported into one
#     collection with both fields searchable;
#   - 200 queries (common word, rare word, two words, a phrase, a prefix) through
#     Lintel's API (`?search=`, 20 a page, no total), one client then CLIENTS, for
#     SECONDS each; then the same queries straight on the store: SQLite FTS5 with
#     Lintel's own MATCH expression on its index (the ceiling), and PostgreSQL's own
#     to_tsvector/to_tsquery('english') on a GIN-indexed copy of the rows;
#   - GET of one record by id, with the read cache off and on.
# Lintel's search runs with the cache off (cache.max_bytes = 0), so every query
# reaches the index. Client and server share the machine: the figures are a floor.
#
#   bench/search.sh                         # 100,000 documents, SQLite then PostgreSQL
#   DOCS=10000 SECONDS_=5 bench/search.sh   # smaller
#   STORES=sqlite bench/search.sh
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
WORK=$BENCH_DIR/.work
DOCS=${DOCS:-100000}
SECONDS_=${SECONDS_:-10}
CLIENTS=${CLIENTS:-8}
PORT=${PORT:-18094}
TARGET=${CARGO_TARGET_DIR:-$REPO_DIR/target}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_DB=lintel_bench_search
PG_URL=${PG_ADMIN_URL%/*}/$PG_DB

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'search.sh: error: %s\n' "$*" >&2; exit 1; }
PID=
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

mkdir -p "$WORK"
log "building Lintel and the load client (release)"
(cd "$REPO_DIR" && cargo build --release --locked -p lintel --bin lintel --example search_bench >&2)
BIN=$TARGET/release/examples/search_bench

# start STORE CACHE_BYTES [fresh]
start() {
  local store=$1 cache=$2 fresh=${3:-}
  DATA=$WORK/search-$store-data
  if [[ -n "$fresh" ]]; then
    rm -rf "$DATA" && mkdir -p "$DATA"
    TOKEN=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    if [[ "$store" == postgres ]]; then
      pg_isready -h 127.0.0.1 -p 5432 -q || die "PostgreSQL is not ready on 127.0.0.1:5432"
      psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
      psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
    fi
  fi
  printf '[rate_limit]\nenabled = false\n[cache]\nmax_bytes = %d\n' "$cache" >"$DATA/lintel.toml"
  local envs=(-u LINTEL_DATABASE_URL)
  [[ "$store" == postgres ]] && envs+=("LINTEL_DATABASE_URL=$PG_URL")
  env "${envs[@]}" LINTEL_ADMIN_TOKEN="$TOKEN" LINTEL_LOG__LEVEL=warn \
    "$TARGET/release/lintel" serve --config "$DATA/lintel.toml" --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
    >"$WORK/search-$store.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$PORT/v1/ready" >/dev/null 2>&1 && return 0
    kill -0 "$PID" 2>/dev/null || die "the server exited; see $WORK/search-$store.log"
    sleep 0.2
  done
  die "the server did not answer"
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; }

URL=http://127.0.0.1:$PORT
for store in ${STORES:-sqlite postgres}; do
  log "$store: loading $DOCS documents"
  start "$store" 0 fresh
  "$BIN" "$URL" "$TOKEN" load "$DOCS"
  if [[ "$store" == sqlite ]]; then direct="sqlite:$DATA/data.db"; else direct="postgres:$PG_URL"; fi
  log "$store: search, ${SECONDS_}s per line"
  "$BIN" "$URL" "$TOKEN" search "$direct" "$SECONDS_" "$CLIENTS"
  "$BIN" "$URL" "$TOKEN" get "cache off" "$SECONDS_" "$CLIENTS"
  stop
  start "$store" $((64 * 1024 * 1024))
  # One pass to fill the cache, then the measured one.
  "$BIN" "$URL" "$TOKEN" get "warm-up" 2 "$CLIENTS" >/dev/null
  "$BIN" "$URL" "$TOKEN" get "cache on" "$SECONDS_" "$CLIENTS"
  stop
done
