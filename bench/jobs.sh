#!/usr/bin/env bash
# The job queue and bulk import, measured (issue 11):
#   - jobs/s through claim and complete batches (100 per call) on SQLite and PostgreSQL;
#   - import rows/s: one NDJSON import of ROWS rows into Lintel against the same rows
#     through PocketBase's batch API.
# The create-throughput cost of the event log is measured by bench/run.sh with two
# builds (LINTEL_BIN=...): see docs/benchmarks.md.
#
#   bench/jobs.sh                          # everything
#   JOBS=20000 ROWS=50000 bench/jobs.sh    # smaller
#   STORES=sqlite bench/jobs.sh            # SQLite only (also: postgres)
#   SKIP_PB=1 bench/jobs.sh                # without PocketBase
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
WORK=$BENCH_DIR/.work
JOBS=${JOBS:-50000}
WORKERS=${WORKERS:-2}
ROWS=${ROWS:-100000}
PB_BATCH=${PB_BATCH:-1000}
STORES=${STORES:-sqlite,postgres}
SKIP_PB=${SKIP_PB:-}
PORT=${PORT:-18090}
PB_PORT=${PB_PORT:-18091}
LINTEL_BIN=${LINTEL_BIN:-}
PB_VERSION=${PB_VERSION:-0.40.6}
PG_ADMIN_URL=postgres://postgres@127.0.0.1:5432/test
PG_DB=lintel_jobs_bench
PG_URL=postgres://postgres@127.0.0.1:5432/$PG_DB
PIDS=()

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'jobs.sh: error: %s\n' "$*" >&2; exit 1; }
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ ",$STORES," == *,postgres,* ]]; then
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

mkdir -p "$WORK"
# shellcheck source=pocketbase.sh
source "$BENCH_DIR/pocketbase.sh"
if [[ -z "$LINTEL_BIN" ]]; then
  log "building Lintel (release)"
  (cd "$REPO_DIR" && cargo build --release --locked -p lintel >&2)
  LINTEL_BIN=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/lintel
fi
[[ -x "$LINTEL_BIN" ]] || die "no Lintel binary at $LINTEL_BIN"

wait_ready() {
  local url=$1 pid=$2
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || die "the server exited; see its log in $WORK"
    curl -fsS "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$url did not answer"
}

start_lintel() {
  local store=$1 data=$WORK/jobs-$1-data
  rm -rf "$data" && mkdir -p "$data"
  TOKEN=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  printf '[rate_limit]\nenabled = false\n[jobs]\nconcurrency = 4\n' >"$data/lintel.toml"
  local envs=(-u LINTEL_DATABASE_URL)
  if [[ "$store" == postgres ]]; then
    pg_isready -h 127.0.0.1 -p 5432 -q || die "PostgreSQL is not ready on 127.0.0.1:5432"
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
    envs+=("LINTEL_DATABASE_URL=$PG_URL")
  fi
  env "${envs[@]}" LINTEL_ADMIN_TOKEN="$TOKEN" LINTEL_LOG__LEVEL=warn \
    "$LINTEL_BIN" serve --config "$data/lintel.toml" --data-dir "$data" --listen "127.0.0.1:$PORT" \
    >"$WORK/jobs-$store.log" 2>&1 &
  LINTEL_PID=$!
  PIDS+=("$LINTEL_PID")
  wait_ready "http://127.0.0.1:$PORT/v1/ready" "$LINTEL_PID"
  curl -fsS -X POST "http://127.0.0.1:$PORT/v1/collections" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d '{"name":"posts","rules":{"list":"","view":"","create":"","update":"","delete":""},"fields":[{"name":"title","type":"text","required":true},{"name":"views","type":"integer"},{"name":"published","type":"bool"}]}' \
    >/dev/null || die "creating the collection failed"
}

stop_lintel() {
  kill "$LINTEL_PID" 2>/dev/null || true
  wait "$LINTEL_PID" 2>/dev/null || true
}

RESULTS=$WORK/jobs-results.txt
: >"$RESULTS"
IFS=, read -r -a stores <<<"$STORES"
for store in "${stores[@]}"; do
  log "Lintel on $store: $JOBS jobs, $WORKERS workers claiming and completing 100 at a time"
  start_lintel "$store"
  printf 'lintel-%s jobs %s\n' "$store" "$(python3 "$BENCH_DIR/jobs.py" jobs "http://127.0.0.1:$PORT" "$TOKEN" "$JOBS" "$WORKERS")" | tee -a "$RESULTS"
  log "Lintel on $store: importing $ROWS rows (NDJSON, mode=atomic)"
  printf 'lintel-%s import %s\n' "$store" "$(python3 "$BENCH_DIR/jobs.py" import-lintel "http://127.0.0.1:$PORT" "$TOKEN" "$ROWS")" | tee -a "$RESULTS"
  stop_lintel
done

if [[ -z "$SKIP_PB" ]]; then
  pb_start jobs
  curl -fsS -X POST "http://127.0.0.1:$PB_PORT/api/collections" -H "Authorization: $PB_TOKEN" -H 'content-type: application/json' \
    -d '{"name":"posts","type":"base","createRule":"","listRule":"","viewRule":"","fields":[{"name":"title","type":"text","required":true},{"name":"views","type":"number","onlyInt":true},{"name":"published","type":"bool"}]}' \
    >/dev/null || die "creating the PocketBase collection failed"
  log "PocketBase $PB_VERSION: importing $ROWS rows through /api/batch, $PB_BATCH per request"
  printf 'pocketbase import %s\n' "$(python3 "$BENCH_DIR/jobs.py" import-pocketbase "http://127.0.0.1:$PB_PORT" bench@example.com bench-password-1234 "$ROWS" "$PB_BATCH")" | tee -a "$RESULTS"
fi

log "results in $RESULTS"
python3 - "$RESULTS" <<'EOF'
import json, sys
lines = [l.split(" ", 2) for l in open(sys.argv[1]) if l.strip()]
by = {(a, b): json.loads(c) for a, b, c in lines}
for (side, what), r in by.items():
    if what == "jobs":
        print(f"{side}: {r['claim_complete_per_s']} jobs/s through claim+complete ({r['workers']} workers, 100 a call); enqueue {r['enqueue_per_s']}/s in batches of 100")
for (side, what), r in by.items():
    if what == "import":
        print(f"{side}: import {r['rows']} rows in {r['seconds']} s = {r['rows_per_s']} rows/s")
pb = by.get(("pocketbase", "import"))
for (side, what), r in by.items():
    if what == "import" and pb and side != "pocketbase":
        print(f"ratio {side}/pocketbase import rows/s: {r['rows_per_s'] / pb['rows_per_s']:.2f}")
EOF
