#!/usr/bin/env bash
# The same GBDT study on the flights data with ASHA and without
# (bench/gbdt/tune.yaml: TPE, TRIALS trials (default 32), 2 at a time), one
# study after the other, for each sampler seed in SEEDS (default 7), with
# BRACKETS ASHA brackets (default 1). Prints one JSON line per seed: best
# validation AUC, wall time and trial states of each.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
for seed in ${SEEDS:-7}; do
WEIR_HOME="$home" target/release/weir run bench/gbdt/tune.yaml --max-parallel 1 -p seed="$seed" -p brackets="${BRACKETS:-1}" -p trials="${TRIALS:-32}" --json >"$home/out.json"
python3 - "$home/out.json" "$seed" "${BRACKETS:-1}" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
m = {}
for step, point in out["metrics"]:
    if point.get("step", 0) == 0:
        m.setdefault(step, {})[point["key"]] = point["value"]
res = {"script": "tuning_asha", "seed": int(sys.argv[2]), "brackets": int(sys.argv[3])}
for s in ("with_asha", "without_asha"):
    x = m[s]
    res[s] = {"best_valid_auc": round(x["tune.best_value"], 5), "wall_s": round(x["tune.wall_seconds"], 1),
              "trials": int(x["tune.trials"]), "complete": int(x["tune.complete"]),
              "pruned": int(x["tune.pruned"]), "failed": int(x["tune.failed"])}
res["auc_gap"] = round(res["without_asha"]["best_valid_auc"] - res["with_asha"]["best_valid_auc"], 5)
res["time_ratio_asha_over_full"] = round(res["with_asha"]["wall_s"] / res["without_asha"]["wall_s"], 2)
print(json.dumps(res))
PY
done
