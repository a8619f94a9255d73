#!/usr/bin/env bash
# The workload of ../shared/peers/mlflow_serving.sh against `weir serve`: the
# same scikit-learn model (the peer script's ONNX export), the same 1,000
# single-row /invocations bodies and the same wrk Lua script, at the same
# concurrencies. Run the peer script first (it writes those files under
# /tmp/peers/serving and measures `mlflow models serve`), then this, back to
# back on the same machine, and compare the two JSON lines as ratios.
#   DURATION=15 CONCURRENCY="1 8 64" (the peer script's knobs); THREADS=N runs
#   the server with --threads N (default: one per core)
# Prints one JSON line: requests/s and latency per concurrency, time from
# start to ready, resident memory after the load, the in-process compute floor
# (tract, one row) and the server's overhead over it at c=1.
set -euo pipefail
cd "$(dirname "$0")/.."
SV="${PEERS_ROOT:-/tmp/peers}/serving"
DURATION="${DURATION:-15}"
CONCURRENCY="${CONCURRENCY:-1 8 64}"
for f in model.onnx bodies.jsonl expected.csv requests.csv post_bodies.lua; do
  [ -f "$SV/$f" ] || { echo "run ../shared/peers/mlflow_serving.sh first (missing $SV/$f)" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet -p weir-cli
cargo build --release --quiet -p weir-onnx --example latency

WORK="$(mktemp -d /tmp/weir-serving-bench.XXXXXX)"
export WEIR_HOME="$WORK/home"
target/release/weir models register cancer "$SV/model.onnx" >&2
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
T0=$(date +%s.%N)
setsid target/release/weir serve cancer --addr "127.0.0.1:$PORT" ${THREADS:+--threads "$THREADS"} >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
trap 'kill -- -"$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT
until curl -fs "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1; do sleep 0.005; done
READY_S=$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{printf "%.3f", a-b}')

# The peer script's correctness check: the first 50 bodies give sklearn's labels.
python3 - "$PORT" "$SV" <<'PY'
import json, sys, urllib.request
port, sv = sys.argv[1], sys.argv[2]
bodies = open(f"{sv}/bodies.jsonl").read().splitlines()[:50]
want = [int(l) for l in open(f"{sv}/expected.csv").read().split()[1:51]]
got = []
for b in bodies:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=b.encode(),
                                 headers={"Content-Type": "application/json"})
    got.append(json.load(urllib.request.urlopen(req))["predictions"][0]["label"])
assert got == want, (got, want)
PY

RESULTS="$WORK/wrk.jsonl"
for C in $CONCURRENCY; do
  T=$(( C < 2 ? C : 2 ))
  echo "wrk -t$T -c$C -d${DURATION}s" >&2
  wrk -t"$T" -c"$C" -d"${DURATION}s" --timeout 10s --latency -s "$SV/post_bodies.lua" \
    "http://127.0.0.1:$PORT/invocations" >"$WORK/wrk_c$C.txt"
  grep -E "Requests/sec|Non-2xx|Socket errors" "$WORK/wrk_c$C.txt" >&2 || true
  echo "{\"c\":$C,\"wrk\":$(grep '^WRKJSON ' "$WORK/wrk_c$C.txt" | sed 's/^WRKJSON //')}" >>"$RESULTS"
done
# Server-side time per request (body read, parse, score, serialise, count),
# from the request-duration histogram of /metrics.
curl -fs "http://127.0.0.1:$PORT/metrics" >"$WORK/metrics.txt"
RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
PEAK_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
FLOOR="$(target/release/examples/latency "$SV/model.onnx" "$SV/requests.csv" 20000)"

python3 - "$RESULTS" "$READY_S" "$RSS_KB" "$PEAK_KB" "$FLOOR" "$WORK/metrics.txt" <<'PY'
import json, os, re, sys
load = {}
for line in open(sys.argv[1]):
    r = json.loads(line); w = r["wrk"]; secs = w["duration_us"] / 1e6
    load[f"c{r['c']}"] = {"req_per_s": round(w["requests"] / secs, 1), "p50_ms": round(w["p50_us"] / 1e3, 3),
                          "p90_ms": round(w["p90_us"] / 1e3, 3), "p99_ms": round(w["p99_us"] / 1e3, 3),
                          "requests": w["requests"],
                          "errors": sum(w[k] for k in w if k.startswith("err_"))}
floor = json.loads(sys.argv[5])
out = {"script": "weir_serving", "server": "weir serve (release), the ONNX export",
       "threads": os.environ.get("THREADS") or "default (one per core)",
       "ready_s": float(sys.argv[2]), "rss_mb_after_load": round(int(sys.argv[3]) / 1024, 1),
       "peak_rss_mb": round(int(sys.argv[4]) / 1024, 1), "load": load,
       "floor_tract_one_row_us_median": floor["median_us"]}
buckets = []
for line in open(sys.argv[6]):
    if not line.startswith("weir_serve_request_duration_seconds_bucket{") or 'model="cancer"' not in line:
        continue
    le = re.search(r'le="([^"]+)"', line).group(1)
    if le != "+Inf":
        buckets.append((float(le), int(float(line.split()[-1]))))
total = max((c for _, c in buckets), default=0)
if total:
    out["server_side_p50_us_at_most"] = round(next(le for le, c in sorted(buckets) if c >= total / 2) * 1e6, 1)
    out["server_side_share_under_25us"] = round(next((c for le, c in sorted(buckets) if abs(le - 25e-6) < 1e-9), 0) / total, 3)
if "c1" in load:
    out["overhead_us_p50_c1"] = round(load["c1"]["p50_ms"] * 1e3 - floor["median_us"], 1)
print(json.dumps(out))
PY
