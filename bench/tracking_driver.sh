#!/usr/bin/env bash
# The requests of ../shared/peers/mlflow_tracking.sh sent by a Rust client
# (crates/weir-server/examples/tracking_load.rs) to an MLflow server and then
# to `weir server`, back to back, each on a fresh SQLite store. The peer
# script's Python client caps what it can show (bench/tracking_client_cost.py);
# this driver costs the client ~0.5 ms of CPU a log-batch iteration (typed bodies,
# unparsed replies; Weir's server spends ~1.4 ms on it), so the ratios
# are the servers'. Run the peer script first: it creates the venv with MLflow.
#   Knobs: the peer script's (LOG_SECONDS, CONC_SECONDS, SEARCH_RUNS, ...);
#   ONLY=weir or ONLY=mlflow runs one side; BACKEND=postgres puts Weir on a
#   fresh database on 127.0.0.1:5432; MLFLOW_BACKEND=postgres does the same for
#   MLflow (psycopg[binary] is added to its venv); both default to SQLite, as
#   in the peer. On PostgreSQL the database's own CPU is in neither server's.
# Last stdout line: one JSON object {"mlflow": {...}, "weir": {...}, "ratios": {...}}.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_VENV="${PEERS_VENV:-/tmp/peers/venv}"
ONLY="${ONLY:-}"
cargo build --release --quiet -p weir-cli
cargo build --release --quiet -p weir-server --example tracking_load
DRIVER="$PWD/target/release/examples/tracking_load"
WORK="$(mktemp -d /tmp/weir-tracking-driver.XXXXXX)"
export LOG_SECONDS="${LOG_SECONDS:-20}" CONC_SECONDS="${CONC_SECONDS:-10}" CONC_THREADS="${CONC_THREADS:-8}" \
  SEARCH_RUNS="${SEARCH_RUNS:-5000}" SEARCH_REPEATS="${SEARCH_REPEATS:-5}" \
  CLIENT_CALLS="${CLIENT_CALLS:-2000}" SETUP_THREADS="${SETUP_THREADS:-4}"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SERVER_PID=""
DBS=""
new_db() {  # new_db NAME: a fresh PostgreSQL database, dropped on exit
  psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE $1"
  DBS="$DBS $1"
}
stop_server() {
  [ -n "$SERVER_PID" ] && { kill -- -"$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
  SERVER_PID=""
}
cleanup() {
  stop_server
  for db in $DBS; do
    psql postgres://postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE IF EXISTS $db" || true
  done
}
trap cleanup EXIT

# measure NAME CMD...: starts the server in its own session, waits for
# /health, runs the driver, prints the driver's JSON plus time to ready and RSS.
measure() {
  local name="$1" port="$2"; shift 2
  local t0; t0=$(date +%s.%N)
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  until curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORK/$name.log" >&2; exit 1; }
    sleep 0.01
  done
  local ready; ready=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.3f", a-b}')
  # MLflow's workers keep starting after /health answers; wait for quiet.
  sleep "${SETTLE_S:-$([ "$name" = mlflow ] && echo 15 || echo 0)}"
  echo "== $name: ready in ${ready}s" >&2
  local line
  line="$(MLF_URL="http://127.0.0.1:$port" SERVER_PID="$SERVER_PID" "$DRIVER" | tail -1)"
  local rss_kb=0
  for p in $(pgrep -s "$SERVER_PID"); do
    rss_kb=$((rss_kb + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  stop_server
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["ready_s"]=float(sys.argv[2]); d["server_rss_mb_end"]=round(int(sys.argv[3])/1024,1); print(json.dumps(d))' \
    "$line" "$ready" "$rss_kb" >"$WORK/$name.json"
}

if [ "$ONLY" != weir ]; then
  [ -x "$PEERS_VENV/bin/mlflow" ] || { echo "run ../shared/peers/mlflow_tracking.sh first (it installs MLflow into $PEERS_VENV)" >&2; exit 1; }
  PORT="$(free_port)"; mkdir -p "$WORK/mlflow/artifacts"
  MLFLOW_STORE="sqlite:///$WORK/mlflow/mlflow.db"
  if [ "${MLFLOW_BACKEND:-sqlite}" = postgres ]; then
    "$PEERS_VENV/bin/python" -c 'import psycopg' 2>/dev/null || "$PEERS_VENV/bin/pip" install -q 'psycopg[binary]'
    new_db "mlflow_driver_$$"
    MLFLOW_STORE="postgresql://postgres@127.0.0.1:5432/mlflow_driver_$$"
  fi
  measure mlflow "$PORT" "$PEERS_VENV/bin/mlflow" server \
    --backend-store-uri "$MLFLOW_STORE" --default-artifact-root "$WORK/mlflow/artifacts" \
    --host 127.0.0.1 --port "$PORT"
fi
if [ "$ONLY" != mlflow ]; then
  PORT="$(free_port)"
  if [ "${BACKEND:-sqlite}" = postgres ]; then
    new_db "weir_driver_$$"
    export WEIR_DB="postgres://postgres@127.0.0.1:5432/weir_driver_$$"
  fi
  WEIR_HOME="$WORK/weir" measure weir "$PORT" target/release/weir server --addr "127.0.0.1:$PORT"
fi

python3 - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
out = {}
for side in ("mlflow", "weir"):
    p = os.path.join(work, side + ".json")
    if os.path.exists(p):
        out[side] = json.load(open(p))
out.get("weir", {})["backend"] = os.environ.get("BACKEND", "sqlite")
out.get("mlflow", {})["backend"] = os.environ.get("MLFLOW_BACKEND", "sqlite")
if len(out) == 2:
    m, w = out["mlflow"], out["weir"]
    r = lambda a, b: round(a / b, 1) if b else None
    out["ratios"] = {
        "logbatch_metrics_per_s": r(w["logbatch_seq"]["metrics_per_s"], m["logbatch_seq"]["metrics_per_s"]),
        "logbatch_conc_metrics_per_s": r(w["logbatch_conc"]["metrics_per_s"], m["logbatch_conc"]["metrics_per_s"]),
        "run_creation_runs_per_s": r(w["search"]["setup_runs_per_s"], m["search"]["setup_runs_per_s"]),
        "search_latency": r(m["search"]["latency_ms_median"], w["search"]["latency_ms_median"]),
        "log_metric_calls_per_s": r(w["log_metric"]["calls_per_s"], m["log_metric"]["calls_per_s"]),
        "server_cpu_per_metric": r(m["logbatch_seq"]["server_cpu_us_per_metric"], w["logbatch_seq"]["server_cpu_us_per_metric"]),
        "server_cpu_per_run": r(m["search"]["setup_server_cpu_ms_per_run"], w["search"]["setup_server_cpu_ms_per_run"]),
        "server_cpu_per_search": r(m["search"]["server_cpu_ms_per_search"], w["search"]["server_cpu_ms_per_search"]),
    }
    print(json.dumps(out["ratios"]), file=sys.stderr)
print(json.dumps(out))
PY
