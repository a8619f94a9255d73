#!/usr/bin/env bash
# What tracing costs, and what the quickstart costs at the default prices.
#  - Serving: the quickstart's model behind `weir serve`, one-row /invocations
#    requests from wrk at c=1, with tracing off and on (an OTLP sink on
#    loopback, --trace-sample 0.01), alternated ROUNDS times; p50 from wrk and
#    the server's own mean time per request (its /metrics histogram).
#  - Steps: bench/tracing_steps.py, chains of 50 steps with tracing off and on,
#    20 rounds alternated; the median of the paired differences per step.
#  - Cost: the quickstart run (`weir cost RUN`) and the serving replica's cost
#    per 1,000 inferences over the traced-off load (`weir cost --by endpoint`).
#   DURATION=10 ROUNDS=2
# Prints one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet -p weir-cli
WEIR="$PWD/target/release/weir"
WORK="$(mktemp -d /tmp/weir-tracing-bench.XXXXXX)"
export WEIR_HOME="$WORK/home"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# An OTLP/HTTP sink: accepts every export and discards it.
SINK_PORT=$(free_port)
python3 - "$SINK_PORT" >"$WORK/sink.log" 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
SINK_PID=$!
SERVER_PID=""
stop_server() {
  [ -n "$SERVER_PID" ] && { kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
  SERVER_PID=""
}
trap 'stop_server; kill "$SINK_PID" 2>/dev/null || true' EXIT

echo "quickstart (release) ..." >&2
RUN_JSON=$("$WEIR" run examples/flights/pipeline.yaml --json)
RUN_ID=$(echo "$RUN_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
QUICKSTART_COST=$("$WEIR" cost "$RUN_ID" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["cost"])')

BODY='{"dataframe_split": {"columns": ["carrier", "origin", "dest", "hour", "distance", "sched_dep_time", "sched_arr_time", "temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"], "data": [["UA", "EWR", "IAH", 17, 1400, 1700, 2015, 39.0, 28.0, 64.4, 12.7, null, 0.0, 1012.0, 10.0]]}}'
cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$BODY]==]
done = function(summary, latency, requests)
  io.write(string.format("WRKJSON {\"rps\": %.1f, \"p50_us\": %d, \"p99_us\": %d, \"errors\": %d}\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

serve_round() {  # serve_round MODE -> one JSON object
  local mode=$1 port
  port=$(free_port)
  if [ "$mode" = on ]; then
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" setsid "$WEIR" serve flights-delay \
      --addr "127.0.0.1:$port" --trace-sample 0.01 >"$WORK/serve-$mode.log" 2>&1 &
  else
    env -u OTEL_EXPORTER_OTLP_ENDPOINT setsid "$WEIR" serve flights-delay \
      --addr "127.0.0.1:$port" >"$WORK/serve-$mode.log" 2>&1 &
  fi
  SERVER_PID=$!
  until curl -fs "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1; do sleep 0.01; done
  wrk -t1 -c1 -d2s -s "$WORK/post.lua" "http://127.0.0.1:$port/invocations" >/dev/null
  wrk -t1 -c1 -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$port/invocations" >"$WORK/wrk-$mode.txt"
  local server_us
  server_us=$(curl -fs "http://127.0.0.1:$port/metrics" | python3 -c '
import sys
s = c = 0.0
for line in sys.stdin:
    if line.startswith("weir_serve_request_duration_seconds_sum"): s += float(line.split()[-1])
    if line.startswith("weir_serve_request_duration_seconds_count"): c += float(line.split()[-1])
print(round(s / c * 1e6, 2))')
  stop_server
  echo "{\"mode\": \"$mode\", \"server_mean_us\": $server_us, \"wrk\": $(grep '^WRKJSON ' "$WORK/wrk-$mode.txt" | sed 's/^WRKJSON //')}"
}

SERVING="["
for r in $(seq "$ROUNDS"); do
  for mode in off on; do
    echo "serving, tracing $mode, round $r ..." >&2
    SERVING="$SERVING$(serve_round $mode),"
  done
done
SERVING="${SERVING%,}]"
PER_1K=$("$WEIR" cost --by endpoint --json | python3 -c '
import json, sys
rows = json.load(sys.stdin)
cost = sum(r["cost"] for r in rows); requests = sum(r["requests"] for r in rows)
print(json.dumps({"replicas": sum(r["replicas"] for r in rows), "requests": requests, "cost": cost,
                  "per_1000": cost / requests * 1000 if requests else None}))')

echo "steps, tracing off and on, alternated ..." >&2
STEPS=$(WEIR="$WEIR" N="${STEPS_N:-50}" R="${STEPS_ROUNDS:-20}" python3 bench/tracing_steps.py "http://127.0.0.1:$SINK_PORT")

echo "{\"quickstart_cost\": $QUICKSTART_COST, \"serving_cost\": $PER_1K, \"serving\": $SERVING, \"steps\": $STEPS}"
