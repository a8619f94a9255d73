#!/usr/bin/env bash
# The dashboard at scale (issue 22): seeds RUNS runs x METRICS metrics x STEPS
# steps into a fresh embedded store through the store's own write path, starts
# `weir server` (release) on it, and measures each page's server time (the
# requests the page makes, p50/p95 over REPEATS loads: bench/ui/pages.py)
# and first meaningful paint in headless Chromium (bench/ui/paint.mjs).
# With MLFLOW=1 the same for MLflow's server and UI on a store of the same
# runs, params, tags and latest metrics (bench/ui/seed_mlflow.py), for ratios.
#   RUNS=100000 METRICS=20 STEPS=100 REPEATS=20 MLFLOW=0 [WEIR_BIN=...] bash bench/ui_scale.sh
# The seeded store is kept in $WORK (default /tmp/weir-ui-scale) and reused
# when it holds the same sizes; the last line printed is one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-100000}" METRICS="${METRICS:-20}" STEPS="${STEPS:-100}" REPEATS="${REPEATS:-20}"
WORK="${WORK:-/tmp/weir-ui-scale}"
PEERS="${PEERS_DIR:-$(cd .. && pwd)/shared/peers}"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
[ -d tests/ui/node_modules/playwright-core ] || (cd tests/ui && npm ci --silent)

# WEIR_BIN: a release `weir` already built (CI's), instead of building one.
if [ -z "${WEIR_BIN:-}" ]; then
  cargo build --release --quiet -p weir-cli
  WEIR_BIN=target/release/weir
fi
cargo build --release --quiet -p weir-store --example seed_tracking
mkdir -p "$WORK"
SIZE="$RUNS x $METRICS x $STEPS"
if [ "$(cat "$WORK/weir.size" 2>/dev/null)" != "$SIZE" ]; then
  rm -rf "$WORK/weir.db"* "$WORK/weir.size" "$WORK/seed.json"
  log "seeding $SIZE into $WORK/weir.db"
  target/release/examples/seed_tracking "sqlite://$WORK/weir.db" "$RUNS" "$METRICS" "$STEPS" >"$WORK/seed.json"
  echo "$SIZE" >"$WORK/weir.size"
fi
SEED="$(cat "$WORK/seed.json")"
EXP="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["experiment_id"])' "$SEED")"
DB_BYTES="$(du -cb "$WORK"/weir.db* | tail -1 | cut -f1)"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -- -"$p" 2>/dev/null || true; done; }
trap cleanup EXIT

PORT="$(port)"
WEIR_HOME="$WORK/home" WEIR_DB="sqlite://$WORK/weir.db" setsid "$WEIR_BIN" server --addr "127.0.0.1:$PORT" >"$WORK/weir-server.log" 2>&1 &
PIDS+=($!)
until curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do sleep 0.1; done
BASE="http://127.0.0.1:$PORT"
log "weir server on $BASE; timing pages"
WEIR_PAGES="$(python3 bench/ui/pages.py "$BASE" weir "$EXP" "$REPEATS")"
read -r RUN1 RUN2 < <(python3 - "$BASE" "$EXP" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/api/2.0/mlflow/runs/search", method="POST",
    data=json.dumps({"experiment_ids": [sys.argv[2]], "max_results": 2}).encode(), headers={"Content-Type": "application/json"})
runs = json.load(urllib.request.urlopen(req))["runs"]
print(runs[0]["info"]["run_id"], runs[1]["info"]["run_id"])
PY
)
log "first paint in Chromium"
WEIR_PAINT="$(node bench/ui/paint.mjs "$(python3 - "$BASE" "$EXP" "$RUN1" "$RUN2" <<'PY'
import json, sys
b, e, r1, r2 = sys.argv[1:]
print(json.dumps([
  {"name": "runs table", "url": f"{b}/#/experiments/{e}", "ready": "#runs tbody tr"},
  {"name": "run", "url": f"{b}/#/experiments/{e}/runs/{r1}", "ready": "#charts .uplot"},
  {"name": "compare 2 runs", "url": f"{b}/#/compare-runs?runs=" + json.dumps([r1, r2]), "ready": "#charts .uplot"},
]))
PY
)")"
WEIR_RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[0]}/status")
kill -- -"${PIDS[0]}"; PIDS=()

MLFLOW_PAGES=null MLFLOW_PAINT=null
if [ "${MLFLOW:-0}" = 1 ]; then
  . "$PEERS/_common.sh"
  ensure_pkgs mlflow
  if [ "$(cat "$WORK/mlflow.size" 2>/dev/null)" != "$SIZE" ]; then
    rm -f "$WORK/mlflow.db" "$WORK/mlflow.size"
    "$PEERS_VENV/bin/mlflow" db upgrade "sqlite:///$WORK/mlflow.db" >/dev/null 2>&1
    log "seeding MLflow's store (same runs, params, tags, latest metrics)"
    "$PY" bench/ui/seed_mlflow.py "$WORK/mlflow.db" "sqlite://$WORK/weir.db" "${MLFLOW_HISTORY_RUNS:-1000}"
    echo "$SIZE" >"$WORK/mlflow.size"
  fi
  MPORT="$(port)"
  setsid "$PEERS_VENV/bin/mlflow" server --backend-store-uri "sqlite:///$WORK/mlflow.db" \
    --default-artifact-root "$WORK/mlflow-artifacts" --host 127.0.0.1 --port "$MPORT" >"$WORK/mlflow.log" 2>&1 &
  PIDS+=($!)
  until curl -fs "http://127.0.0.1:$MPORT/health" >/dev/null 2>&1; do sleep 0.5; done
  MEXP="$(sqlite3 "$WORK/mlflow.db" "SELECT experiment_id FROM experiments WHERE name = 'scale'" 2>/dev/null || "$PY" -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT experiment_id FROM experiments WHERE name = 'scale'\").fetchone()[0])" "$WORK/mlflow.db")"
  log "MLflow's UI: first paint"
  MLFLOW_PAINT="$(node bench/ui/paint.mjs "$(python3 - "http://127.0.0.1:$MPORT" "$MEXP" <<'PY'
import json, sys
b, e = sys.argv[1:]
print(json.dumps([{"name": "runs table", "url": f"{b}/#/experiments/{e}/runs", "ready": "text=run-"}]))
PY
)" 3 || echo null)"
  log "mlflow server on 127.0.0.1:$MPORT; timing pages (after its first paint: see pages.py)"
  MLFLOW_PAGES="$(python3 bench/ui/pages.py "http://127.0.0.1:$MPORT" mlflow "$MEXP" "$REPEATS")"
fi

python3 - "$SEED" "$DB_BYTES" "$WEIR_PAGES" "$WEIR_PAINT" "$WEIR_RSS_KB" "$MLFLOW_PAGES" "$MLFLOW_PAINT" <<'PY'
import json, sys
seed, size, wp, wpaint, rss, mp, mpaint = sys.argv[1:]
out = {"script": "ui_scale", "store": json.loads(seed), "store_bytes": int(size),
       "weir": {"pages": json.loads(wp)["pages"], "paint": json.loads(wpaint), "peak_rss_mb": int(rss) // 1024}}
if mp != "null":
    m = json.loads(mp)["pages"]
    out["mlflow"] = {"pages": m, "paint": json.loads(mpaint)}
    # A page MLflow did not answer in time counts its timeout: a lower bound.
    out["ratio_p95_mlflow_over_weir"] = {
        k: (round(m[k]["p95_ms"] / v["p95_ms"], 1) if "p95_ms" in m[k]
            else f">{round(m[k]['timed_out_after_s'] * 1e3 / v['p95_ms'])}")
        for k, v in out["weir"]["pages"].items() if k in m}
print(json.dumps(out))
PY
