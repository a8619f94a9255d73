#!/usr/bin/env bash
# Times the quickstart (examples/flights) end to end with a release build, in a
# fresh WEIR_HOME, REPEAT times (default 3), and prints one JSON object per run:
# wall seconds, peak RSS of `weir run`, per-step seconds and the test metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
repeat="${REPEAT:-3}"
for i in $(seq "$repeat"); do
  home=$(mktemp -d)
  start=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$home/rss" env WEIR_HOME="$home" target/release/weir run examples/flights/pipeline.yaml --json >"$home/out.json"
  end=$(date +%s.%N)
  python3 - "$home" "$start" "$end" <<'PY'
import json, sys
home, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
out = json.load(open(f"{home}/out.json"))
rss_kb = int(open(f"{home}/rss").read().split()[-1])
metrics = {m["key"]: m["value"] for step, m in out["metrics"] if step == "evaluate"}
print(json.dumps({
    "wall_s": round(end - start, 2),
    "peak_rss_mb_largest_process": round(rss_kb / 1024, 1),
    "status": out["status"],
    "steps_s": {s["step"]: round(s["seconds"], 2) for s in out["steps"]},
    "test_auc": round(metrics.get("test.auc", float("nan")), 4),
    "test_log_loss": round(metrics.get("test.log_loss", float("nan")), 4),
}))
PY
  rm -rf "$home"
done
