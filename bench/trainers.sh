#!/usr/bin/env bash
# Weir's linear, transformed-linear and MLP trainers on the flights data
# (bench/trainers/pipeline.yaml; the rows and time split of bench/gbdt). One
# step at a time. Prints one JSON line: fit seconds, epochs or iterations,
# validation and test AUC of each.   THREADS (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
WEIR_HOME="$home" target/release/weir run bench/trainers/pipeline.yaml \
  --max-parallel 1 -p threads="${THREADS:-2}" --json >"$home/out.json"
python3 - "$home/out.json" "${THREADS:-2}" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
m = {}
for step, point in out["metrics"]:
    if point.get("step", 0) == 0:
        m[f"{step}:{point['key']}"] = point["value"]
report = {"script": "trainers", "threads": int(sys.argv[2]), "train_rows": int(m["linear:train.rows"])}
for name in ["linear", "transformed", "mlp"]:
    report[name] = {
        "fit_s": round(m[f"{name}:train.fit_seconds"], 2),
        "iterations": int(m[f"{name}:train.iterations"]),
        "best_iteration": int(m[f"{name}:train.best_iteration"]),
        "rows_per_s": round(m[f"{name}:train.rows_per_second"]),
        "valid_auc": round(m[f"{name}:valid.auc"], 4),
        "test_auc": round(m[f"{name}_test:test.auc"], 4),
        "peak_memory_mb": round(m.get(f"{name}:train.peak_memory_mb", 0), 1),
    }
print(json.dumps(report))
PY
