#!/usr/bin/env bash
# What Lintel's rate limiter costs on the record GET path, in CPU instructions per
# request (valgrind's callgrind: the same count on every run, whatever else the
# machine is doing, unlike requests per second on a shared 2-core VM).
#
# Lintel runs twice: with the limiter off, and with one rule that counts every request
# but never trips. Each serves N1 and then N2 GETs of one record over one keep-alive
# connection; the difference between the two runs' totals, divided by N2 - N1, is the
# cost of one request without start-up.
#
#   bench/limiter-cost.sh                 # builds the release binary first
#   LINTEL_BIN=path/to/lintel bench/limiter-cost.sh
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N1=${N1:-500}
N2=${N2:-2500}
PORT=${PORT:-18192}
command -v valgrind >/dev/null || { echo "limiter-cost.sh: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
if [[ -z "${LINTEL_BIN:-}" ]]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lintel-target}
  (cd "$REPO_DIR" && cargo build --release -p lintel) >&2
  LINTEL_BIN=$CARGO_TARGET_DIR/release/lintel
fi

# instructions MODE N: total instructions of a Lintel process that served N GETs.
instructions() {
  local mode=$1 n=$2 d pid
  d=$(mktemp -d)
  if [[ $mode == off ]]; then
    printf '[rate_limit]\nenabled = false\n' >"$d/lintel.toml"
  else
    printf '%s\n' '[[rate_limit.rules]]' 'name = "bench"' 'path = "/**"' 'key = "ip"' \
      'algorithm = "token_bucket"' 'limit = 1000000000' 'period_secs = 1' 'burst = 1000000000' >"$d/lintel.toml"
  fi
  env -u LINTEL_DATABASE_URL LINTEL_ADMIN_TOKEN=tok LINTEL_LOG__LEVEL=warn \
    valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" \
    "$LINTEL_BIN" serve --config "$d/lintel.toml" --data-dir "$d" --listen "127.0.0.1:$PORT" >"$d/log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/v1/ready" >/dev/null && break; sleep 0.2; done
  python3 - "$PORT" "$n" <<'PY'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
h = {"authorization": "Bearer tok", "content-type": "application/json"}
c.request("POST", "/v1/collections", json.dumps({"name": "posts", "fields": [{"name": "title", "type": "text"}], "rules": {"view": ""}}), h)
c.getresponse().read()
c.request("POST", "/v1/collections/posts/records", json.dumps({"title": "hello"}), h)
rid = json.loads(c.getresponse().read())["id"]
for _ in range(n):
    c.request("GET", f"/v1/collections/posts/records/{rid}")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  awk '/^summary:/ {print $2}' "$d/cg.out"
  rm -rf "$d"
}

declare -A per
for mode in off never; do
  a=$(instructions "$mode" "$N1")
  b=$(instructions "$mode" "$N2")
  per[$mode]=$(( (b - a) / (N2 - N1) ))
  echo "$mode: ${per[$mode]} instructions per GET"
done
python3 -c "off, on = ${per[off]}, ${per[never]}; print(f'limiter cost: {on - off} instructions per GET = {100 * (on - off) / off:.1f}% (throughput ratio {off / on:.3f})')"
