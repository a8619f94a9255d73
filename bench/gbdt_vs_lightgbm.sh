#!/usr/bin/env bash
# Weir's GBDT (weir/train-gbdt) against LightGBM (pip) on the flights data:
# the same rows, time split, features, hyper-parameters and thread count
# (bench/gbdt/pipeline.yaml). One step at a time, so the trainers never share
# the CPUs. Prints one JSON line: fit seconds, test AUC and rounds of each.
#   THREADS (default 2), ROUNDS (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${WEIR_BENCH_VENV:-$HOME/.cache/weir-bench/venv}"
if ! "$VENV/bin/python" -c 'import lightgbm, sklearn, pyarrow, pandas' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q lightgbm==4.6.0 scikit-learn==1.9.1 pyarrow pandas==3.1.1 >&2
fi
cargo build --release --quiet
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
PATH="$VENV/bin:$PATH" WEIR_HOME="$home" target/release/weir run bench/gbdt/pipeline.yaml \
  --max-parallel 1 -p threads="${THREADS:-2}" -p rounds="${ROUNDS:-500}" --json >"$home/out.json"
python3 - "$home/out.json" "${THREADS:-2}" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
m = {}
for step, point in out["metrics"]:
    if point.get("step", 0) == 0:
        m[f"{step}:{point['key']}"] = point["value"]
weir_fit = m["weir_gbdt:train.fit_seconds"]
lgb_fit = m["lightgbm:lightgbm.fit_seconds"]
print(json.dumps({
    "script": "gbdt_vs_lightgbm", "threads": int(sys.argv[2]), "train_rows": int(m["weir_gbdt:train.rows"]),
    "weir": {"fit_s": round(weir_fit, 2), "bin_s": round(m["weir_gbdt:train.bin_seconds"], 2), "test_auc": round(m["weir_test:test.auc"], 4),
             "valid_auc": round(m["weir_gbdt:valid.auc"], 4),
             "rounds": int(m["weir_gbdt:train.iterations"]), "best_round": int(m["weir_gbdt:train.best_iteration"]),
             "peak_memory_mb": round(m.get("weir_gbdt:train.peak_memory_mb", 0), 1)},
    "lightgbm": {"fit_s": round(lgb_fit, 2), "test_auc": round(m["lightgbm:lightgbm.test_auc"], 4),
                 "valid_auc": round(m["lightgbm:lightgbm.valid_auc"], 4),
                 "best_round": int(m["lightgbm:lightgbm.best_iteration"])},
    "fit_time_ratio_weir_over_lightgbm": round(weir_fit / lgb_fit, 2),
    "test_auc_gap_lightgbm_minus_weir": round(m["lightgbm:lightgbm.test_auc"] - m["weir_test:test.auc"], 4),
}))
PY
