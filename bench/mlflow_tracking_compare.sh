#!/usr/bin/env bash
# The workload of ../shared/peers/mlflow_tracking.sh, unchanged, against
# `weir server`: the peer script's Python part is taken from the peer script
# itself and pointed at a Weir server started here (release build, fresh
# store). Run the peer script right before or after, on the same machine, and
# compare the two JSON lines as ratios.
#   BACKEND=sqlite|postgres (default sqlite; postgres uses a fresh database on
#   127.0.0.1:5432), plus the peer script's knobs (LOG_SECONDS, SEARCH_RUNS...).
# Adds to the JSON: the backend, the server's peak RSS (VmHWM) and time to ready.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${PEERS_DIR:-$(cd .. && pwd)/shared/peers}"
PEERS_VENV="${PEERS_VENV:-/tmp/peers/venv}"
BACKEND="${BACKEND:-sqlite}"
[ -x "$PEERS_VENV/bin/python" ] || { echo "run $PEERS/mlflow_tracking.sh first (it creates $PEERS_VENV)" >&2; exit 1; }
cargo build --release --quiet

WORK="$(mktemp -d /tmp/weir-tracking-bench.XXXXXX)"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export WEIR_HOME="$WORK/home"
DB=""
if [ "$BACKEND" = postgres ]; then
  DB="weir_bench_$$"
  psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE $DB"
  export WEIR_DB="postgres://postgres@127.0.0.1:5432/$DB"
fi
T0=$(date +%s.%N)
setsid target/release/weir server --addr "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
cleanup() {
  kill -- -"$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  [ -n "$DB" ] && psql postgres://postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE IF EXISTS $DB" || true
}
trap cleanup EXIT
until curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do sleep 0.01; done
STARTUP_S=$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{printf "%.3f", a-b}')
IDLE_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")

sed -n "/^\"\$PY\" - <<'EOF'$/,/^EOF$/p" "$PEERS/mlflow_tracking.sh" | sed '1d;$d' >"$WORK/workload.py"
export SERVER_PID MLF_URL="http://127.0.0.1:$PORT" STARTUP_S SETTLE_S=0 \
  LOG_SECONDS="${LOG_SECONDS:-20}" CONC_SECONDS="${CONC_SECONDS:-10}" CONC_THREADS="${CONC_THREADS:-8}" \
  SEARCH_RUNS="${SEARCH_RUNS:-5000}" SEARCH_REPEATS="${SEARCH_REPEATS:-5}" \
  CLIENT_CALLS="${CLIENT_CALLS:-2000}" SETUP_THREADS="${SETUP_THREADS:-4}"
LINE="$("$PEERS_VENV/bin/python" "$WORK/workload.py" | tail -1)"
PEAK_RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
python3 - "$LINE" "$BACKEND" "$PEAK_RSS_KB" "$IDLE_RSS_KB" <<'PY'
import json, sys
out = json.loads(sys.argv[1])
out["script"] = "weir_tracking"
out["backend"] = sys.argv[2]
out["server_peak_rss_mb"] = round(int(sys.argv[3]) / 1024, 1)
out["server_idle_rss_mb"] = round(int(sys.argv[4]) / 1024, 1)
out["note"] = "weir server (release), one process; same workload as mlflow_tracking.sh"
print(json.dumps(out))
PY
