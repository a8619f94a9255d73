#!/usr/bin/env bash
# Data-parallel GBDT on the flights data (bench/gbdt/workers.yaml: 200
# rounds, 63 leaves, 17 features, ~250k training rows): one process with one
# thread, two processes with one thread each, and one process with two
# threads, TRIALS times each (default 3) in turn. Prints one JSON line per
# fit: the train step's wall time (process start, reading and binning
# included), the fit time rank 0 reports, the test AUC and the model digest
# (equal digests: the same model file, byte for byte).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
weir() { WEIR_HOME="$home" target/release/weir "$@"; }
# Ingest, join and split once; every fit below reuses them from the cache.
weir run bench/gbdt/workers.yaml -p trial=254 --json >/dev/null
for t in $(seq "${TRIALS:-3}"); do
  for wt in 1:1 2:1 1:2; do
    w=${wt%:*}; th=${wt#*:}
    weir run bench/gbdt/workers.yaml -p workers="$w" -p threads="$th" -p trial=$((254 - t)) --json >"$home/out.json"
    run=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$home/out.json")
    weir runs show "$run" --json >"$home/show.json"
    python3 - "$home/show.json" "$w" "$th" "$t" <<'PY'
import json, sys
show = json.load(open(sys.argv[1]))
steps = {s["step"]: s for s in show["steps"]}
train, evaluate = steps["train"], steps["evaluate"]
wall = (train["ended_at"] - train["started_at"]) / 1000
print(json.dumps({"script": "gbdt_workers", "trial": int(sys.argv[4]), "workers": int(sys.argv[2]),
    "threads": int(sys.argv[3]), "train_wall_s": round(wall, 2),
    "fit_s": round(train["metrics"]["train.fit_seconds"], 2),
    "test_auc": evaluate["metrics"]["test.auc"], "model": train["outputs"]["model"]["digest"][:16]}))
PY
  done
done
