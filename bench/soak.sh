#!/usr/bin/env bash
# Load and soak: `weir serve` held at SERVE_RPS (default 1,000) requests/s of
# OIP inference on an endpoint, and `weir server` at LOG_RPS (default 200)
# MLflow log-batch calls/s, for DURATION seconds (default 1,800), measured in
# CHUNK-second slices (default 60). A third of the way in, a healthy canary
# (version 2) is rolled out and promotes itself; two thirds in, a bad one
# (version 3, a model that cannot take the endpoint's requests) is rolled out
# and rolls itself back; five sixths in, another like it (version 4).
# Prints one JSON line per slice (requests/s, p99, failures, both servers'
# resident memory) to stderr and a summary line to stdout: failed requests
# other than the bad candidate's own (want 0), RSS growth from the end of the
# first slice to the end of the last, and from the end of the warm-up (the
# first sixth) to the end (want <= 5 %), p99 per slice.
# Needs wrk (scripts/test.sh installs it). Uses the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-1800}"
export CHUNK="${CHUNK:-60}"
SERVE_RPS="${SERVE_RPS:-1000}"
LOG_RPS="${LOG_RPS:-200}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet --locked -p weir-cli
WEIR="$PWD/target/release/weir"
DATA="$PWD/crates/weir-onnx/tests/data"

WORK="$(mktemp -d /tmp/weir-soak.XXXXXX)"
export WEIR_HOME="$WORK/home"
cd "$WORK"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for model in gbdt_classifier.onnx gbdt_classifier.onnx mlp_regressor.onnx mlp_regressor.onnx; do
  "$WEIR" models register bc "$DATA/$model" >/dev/null
done
"$WEIR" deploy web --model bc --version 1 >/dev/null
SERVE_PORT=$(free_port)
TRACK_PORT=$(free_port)
setsid "$WEIR" serve --addr "127.0.0.1:$SERVE_PORT" >serve.log 2>&1 &
SERVE_PID=$!
setsid "$WEIR" server --addr "127.0.0.1:$TRACK_PORT" >server.log 2>&1 &
SERVER_PID=$!
trap 'kill -- -"$SERVE_PID" -"$SERVER_PID" 2>/dev/null || true' EXIT
until curl -fs "http://127.0.0.1:$SERVE_PORT/v2/health/ready" >/dev/null 2>&1; do sleep 0.05; done
until curl -fs "http://127.0.0.1:$TRACK_PORT/health" >/dev/null 2>&1; do sleep 0.05; done
RUN_ID=$(curl -fs -X POST "http://127.0.0.1:$TRACK_PORT/api/2.0/mlflow/runs/create" \
  -H 'Content-Type: application/json' -d '{"experiment_id": "0", "run_name": "soak"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["run"]["info"]["run_id"])')

# wrk has no rate option; each connection waits `delay` ms after each answer,
# so CONNS connections hold about CONNS * 1000 / (delay + latency) requests/s.
# Aimed 5 % over the target, so the latency and wrk's own time per request
# (about 0.6 ms here) do not leave the rate under it.
pace() { # CONNS RPS -> delay in ms
  python3 -c "import sys; c, r = int(sys.argv[1]), float(sys.argv[2]); print(max(0, round(c * 1000 / (r * 1.05) - 0.3, 2)))" "$1" "$2"
}
SERVE_CONNS=16
LOG_CONNS=4
report='
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"connect\": %d, \"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end'
cat >serve.lua <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30], "data": [$(python3 -c 'print(", ".join(["1.0"] * 30))')]}]}'
delay = function() return $(pace $SERVE_CONNS "$SERVE_RPS") end
$report
EOF
cat >log.lua <<EOF
local n = 0
request = function()
  n = n + 1
  local t = os.time() * 1000
  local body = string.format('{"run_id": "$RUN_ID", "metrics": [{"key": "loss", "value": %f, "timestamp": %d, "step": %d}, {"key": "acc", "value": 0.5, "timestamp": %d, "step": %d}], "params": [], "tags": []}', 1 / n, t, n, t, n)
  return wrk.format("POST", "/api/2.0/mlflow/runs/log-batch", {["Content-Type"] = "application/json"}, body)
end
delay = function() return $(pace $LOG_CONNS "$LOG_RPS") end
$report
EOF

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
slices=$(( DURATION / CHUNK ))
: >slices.jsonl
for i in $(seq 1 "$slices"); do
  wrk -t2 -c"$SERVE_CONNS" -d"${CHUNK}s" --timeout 5s -s serve.lua \
    "http://127.0.0.1:$SERVE_PORT/v2/models/web/infer" >serve_wrk.txt 2>&1 &
  serve_wrk=$!
  wrk -t1 -c"$LOG_CONNS" -d"${CHUNK}s" --timeout 5s -s log.lua \
    "http://127.0.0.1:$TRACK_PORT" >log_wrk.txt 2>&1 &
  log_wrk=$!
  event=""
  if [ "$i" -eq $(( slices / 3 + 1 )) ]; then
    sleep 2
    "$WEIR" deploy web --model bc --version 2 --steps 25,50,100 --interval 10s --min-requests 50 >/dev/null
    event="canary of version 2 (healthy)"
  elif [ "$i" -eq $(( 2 * slices / 3 + 1 )) ]; then
    sleep 2
    "$WEIR" deploy web --model bc --version 3 --steps 10,100 --interval 10s --min-requests 50 >/dev/null
    event="canary of version 3 (fails every request)"
  elif [ "$i" -eq $(( 5 * slices / 6 + 1 )) ]; then
    # The same again: a server that goes through many rollouts must not
    # grow with each (what the first bad one loads stays loaded only
    # while an endpoint routes to it).
    sleep 2
    "$WEIR" deploy web --model bc --version 4 --steps 10,100 --interval 10s --min-requests 50 >/dev/null
    event="canary of version 4 (fails every request)"
  fi
  wait "$serve_wrk" "$log_wrk"
  phase=$("$WEIR" rollout status web --json | python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["phase"], s["stable"])')
  python3 - "$i" "$(rss_kb "$SERVE_PID")" "$(rss_kb "$SERVER_PID")" "$event" "$phase" <<'PY' | tee -a slices.jsonl >&2
import json, sys
def wrk(path):
    line = next(l for l in open(path) if l.startswith("WRKJSON "))
    w = json.loads(line[len("WRKJSON "):])
    secs = w["duration_us"] / 1e6
    failed = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
    return {"rps": round(w["requests"] / secs, 1), "p50_ms": round(w["p50_us"] / 1e3, 2),
            "p99_ms": round(w["p99_us"] / 1e3, 2), "requests": w["requests"], "failed": failed}
print(json.dumps({"slice": int(sys.argv[1]), "serve": wrk("serve_wrk.txt"), "log_batch": wrk("log_wrk.txt"),
                  "serve_rss_mb": round(int(sys.argv[2]) / 1024, 1),
                  "server_rss_mb": round(int(sys.argv[3]) / 1024, 1),
                  "event": sys.argv[4] or None, "rollout": sys.argv[5]}))
PY
done

curl -fs "http://127.0.0.1:$SERVE_PORT/metrics" >metrics.txt
"$WEIR" rollout history web --json >history.json
python3 - <<'PY'
import json, os, re, statistics
slices = [json.loads(l) for l in open("slices.jsonl")]
metrics = open("metrics.txt").read()
bad = sum(float(m.group(1)) for m in re.finditer(
    r'weir_serve_endpoint_requests_total\{endpoint="web",version="[34]",code="[45]\d\d"\} (\S+)', metrics))
history = json.load(open("history.json"))
text = json.dumps(history)
serve_failed = sum(s["serve"]["failed"] for s in slices)
p99 = [s["serve"]["p99_ms"] for s in slices]
first, last = slices[0], slices[-1]
growth = lambda k, since=first: round(100 * (last[k] - since[k]) / since[k], 1)
# The allocator's arenas fill over the first minutes at full load (one per
# thread that serves); growth after that is what a leak would show.
warm = slices[max(0, len(slices) // 6 - 1)]
print(json.dumps({
    "script": "soak", "slices": len(slices), "slice_s": int(os.environ["CHUNK"]),
    "serve_requests": sum(s["serve"]["requests"] for s in slices),
    "serve_rps_mean": round(statistics.mean(s["serve"]["rps"] for s in slices), 1),
    "serve_failed": serve_failed, "failed_by_bad_candidate": int(bad),
    "serve_failed_otherwise": serve_failed - int(bad),
    "log_batch_calls": sum(s["log_batch"]["requests"] for s in slices),
    "log_batch_rps_mean": round(statistics.mean(s["log_batch"]["rps"] for s in slices), 1),
    "log_batch_failed": sum(s["log_batch"]["failed"] for s in slices),
    "serve_p99_ms": {"min": min(p99), "median": statistics.median(p99), "max": max(p99)},
    "serve_rss_mb": [first["serve_rss_mb"], last["serve_rss_mb"]], "serve_rss_growth_pct": growth("serve_rss_mb"),
    "serve_rss_growth_after_warmup_pct": [warm["slice"], growth("serve_rss_mb", warm)],
    "server_rss_mb": [first["server_rss_mb"], last["server_rss_mb"]], "server_rss_growth_pct": growth("server_rss_mb"),
    "promoted_v2": "version 2 is stable" in text,
    "rolled_back_v3": "version 3 rolled back" in text,
    "rolled_back_v4": "version 4 rolled back" in text,
}))
PY
