#!/usr/bin/env bash
# A 32-trial GBDT study on the flights data (bench/gbdt/ray_study.yaml: TPE,
# ASHA, 2 trials at a time) on the local executor and on a Ray cluster of
# two 1-CPU worker nodes on loopback (bench/lib/ray_stores.sh), each run
# against fresh stores of its own (PostgreSQL + S3, nothing cached). On Ray
# every trial is a Ray job of its own. Both clusters are this machine's
# cores: the figure is Ray's cost per trial, not a speed-up.
# Prints one JSON line: the study's wall time, best validation AUC and
# trial states on each executor. TRIALS and PARALLEL override 32 and 2.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
# shellcheck source=bench/lib/ray_stores.sh
. bench/lib/ray_stores.sh
for executor in local ray; do
  new_db "ray_study_$executor"
  WEIR_DB="$db_url" WEIR_ARTIFACTS="s3://bench/ray-study-$executor" WEIR_RAY_ADDRESS="$address" \
    target/release/weir run bench/gbdt/ray_study.yaml --executor "$executor" \
    -p trials="${TRIALS:-32}" -p parallel="${PARALLEL:-2}" --json >"$work/$executor.json"
done
python3 - "${PARALLEL:-2}" "$work/local.json" "$work/ray.json" <<'PY'
import json, sys
parallel = int(sys.argv[1])
res = {"script": "ray_study", "parallel": parallel}
for name, path in zip(("local", "ray"), sys.argv[2:]):
    out = json.load(open(path))
    m = {p["key"]: p["value"] for step, p in out["metrics"] if step == "study" and p.get("step", 0) == 0}
    res[name] = {"study_wall_s": round(m["tune.wall_seconds"], 1), "best_valid_auc": round(m["tune.best_value"], 5),
                 "trials": int(m["tune.trials"]), "complete": int(m["tune.complete"]),
                 "pruned": int(m["tune.pruned"]), "failed": int(m["tune.failed"])}
res["ray_over_local"] = round(res["ray"]["study_wall_s"] / res["local"]["study_wall_s"], 2)
# Wall time beyond local, per trial slot: what each trial costs on Ray.
res["ray_extra_s_per_trial"] = round((res["ray"]["study_wall_s"] - res["local"]["study_wall_s"]) * parallel / res["ray"]["trials"], 2)
print(json.dumps(res))
PY
