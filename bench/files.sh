#!/usr/bin/env bash
# Files, measured (issue 13), Lintel beside PocketBase on the same workload:
#   - one BIG_MB file uploaded (multipart, streamed) and downloaded, in MB/s;
#   - SMALL files of 1-4 KiB uploaded and downloaded by THREADS clients, in files/s;
#   - the server's peak RSS (VmHWM) after each phase: it must not grow with file size.
# Both servers keep files on the local disk, in a fresh data folder each.
#
#   bench/files.sh                              # 100 MB, 10,000 small files, 8 clients
#   BIG_MB=20 SMALL=2000 bench/files.sh         # smaller
#   SKIP_PB=1 bench/files.sh                    # without PocketBase
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
WORK=$BENCH_DIR/.work
BIG_MB=${BIG_MB:-100}
SMALL=${SMALL:-10000}
THREADS=${THREADS:-8}
SKIP_PB=${SKIP_PB:-}
PORT=${PORT:-18090}
PB_PORT=${PB_PORT:-18091}
LINTEL_BIN=${LINTEL_BIN:-}
PB_VERSION=${PB_VERSION:-0.40.6}
PIDS=()

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'files.sh: error: %s\n' "$*" >&2; exit 1; }
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
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

RESULTS=$WORK/files-results.txt
: >"$RESULTS"

log "Lintel: one ${BIG_MB} MB file, then $SMALL small files with $THREADS clients"
data=$WORK/files-lintel-data
rm -rf "$data" && mkdir -p "$data"
TOKEN=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '[rate_limit]\nenabled = false\n' >"$data/lintel.toml"
env -u LINTEL_DATABASE_URL LINTEL_ADMIN_TOKEN="$TOKEN" LINTEL_LOG__LEVEL=warn \
  "$LINTEL_BIN" serve --config "$data/lintel.toml" --data-dir "$data" --listen "127.0.0.1:$PORT" \
  >"$WORK/files-lintel.log" 2>&1 &
LINTEL_PID=$!
PIDS+=("$LINTEL_PID")
wait_ready "http://127.0.0.1:$PORT/v1/ready" "$LINTEL_PID"
curl -fsS -X POST "http://127.0.0.1:$PORT/v1/collections" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' \
  -d '{"name":"docs","rules":{"list":"","view":"","create":"","update":"","delete":""},"fields":[{"name":"title","type":"text"},{"name":"doc","type":"file","maxSize":1073741824}]}' \
  >/dev/null || die "creating the collection failed"
python3 "$BENCH_DIR/files.py" lintel "http://127.0.0.1:$PORT" "$BIG_MB" "$SMALL" "$THREADS" "$LINTEL_PID" | tee -a "$RESULTS"
kill "$LINTEL_PID" 2>/dev/null || true
wait "$LINTEL_PID" 2>/dev/null || true

if [[ -z "$SKIP_PB" ]]; then
  pb_start files
  curl -fsS -X POST "http://127.0.0.1:$PB_PORT/api/collections" -H "Authorization: $PB_TOKEN" -H 'content-type: application/json' \
    -d '{"name":"docs","type":"base","createRule":"","listRule":"","viewRule":"","fields":[{"name":"title","type":"text"},{"name":"doc","type":"file","maxSelect":1,"maxSize":1073741824}]}' \
    >/dev/null || die "creating the PocketBase collection failed"
  log "PocketBase $PB_VERSION: the same"
  python3 "$BENCH_DIR/files.py" pocketbase "http://127.0.0.1:$PB_PORT" "$BIG_MB" "$SMALL" "$THREADS" "$PB_PID" | tee -a "$RESULTS"
fi

log "results in $RESULTS"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = {r["side"]: r for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip())}
for side, r in rows.items():
    print(f"{side}: big upload {r['big_upload_mb_s']} MB/s, download {r['big_download_mb_s']} MB/s; "
          f"small upload {r['small_upload_per_s']}/s, download {r['small_download_per_s']}/s; "
          f"peak RSS {r['rss_start_kib']//1024} MiB at start, {r['rss_after_big_upload_kib']//1024} after the big upload, "
          f"{r['rss_after_big_download_kib']//1024} after its download, {r['rss_peak_kib']//1024} at the end")
if "lintel" in rows and "pocketbase" in rows:
    l, p = rows["lintel"], rows["pocketbase"]
    for k in ("big_upload_mb_s", "big_download_mb_s", "small_upload_per_s", "small_download_per_s"):
        print(f"ratio lintel/pocketbase {k}: {l[k] / p[k]:.2f}")
    print(f"ratio lintel/pocketbase peak RSS: {l['rss_peak_kib'] / p['rss_peak_kib']:.2f}")
PY
