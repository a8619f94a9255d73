#!/usr/bin/env bash
# Weir's drift check against Evidently's, on the workload of
# ../shared/peers/evidently_drift.sh: a reference of 100,000 x 20 normal
# columns against a current table of 100,000 x 20 where five columns moved
# (+1, +0.5, +0.2 sd, sd x1.5, +0.05 sd). The same numbers (numpy's
# default_rng(0) and (1)) are written to Parquet for `weir drift`, and the
# peer script times Evidently's DataDriftPreset on them in memory.
#
# Weir's figure is the whole command: reading both files, profiling every
# column and comparing, as a user runs it. Evidently's is report.run() alone
# (its tables already in memory). Both with their default method and with
# KS and PSI; the columns each flags are listed.
#
# Usage: bash bench/drift_compare.sh   (env: WEIR, ROWS=100000, REPEATS=3)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers}"
WEIR="${WEIR:-$ROOT/target/release/weir}"
export ROWS="${ROWS:-100000}" REPEATS="${REPEATS:-3}"
VENV="${PEERS_EVIDENTLY_VENV:-/tmp/peers/venv-evidently}"
[ -x "$WEIR" ] || { echo "build weir first: cargo build --release -p weir-cli" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# The peer script installs Evidently into its venv; pyarrow writes Parquet.
PEERS_EVIDENTLY_VENV="$VENV" bash "$PEERS/evidently_drift.sh" > "$WORK/evidently.txt"
"$VENV/bin/python" -c "import pyarrow" 2>/dev/null || "$VENV/bin/python" -m pip install -q pyarrow >&2

"$VENV/bin/python" - "$WORK" "$WEIR" <<'PY'
import json, os, resource, statistics, subprocess, sys, time
import numpy as np, pandas as pd
work, weir = sys.argv[1], sys.argv[2]
N, REPS = int(os.environ["ROWS"]), int(os.environ["REPEATS"])
cols = [f"f{i:02d}" for i in range(20)]
ref = pd.DataFrame(np.random.default_rng(0).normal(size=(N, 20)), columns=cols)
cur = pd.DataFrame(np.random.default_rng(1).normal(size=(N, 20)), columns=cols)
cur["f00"] += 1.0; cur["f01"] += 0.5; cur["f02"] += 0.2; cur["f03"] *= 1.5; cur["f04"] += 0.05
ref.to_parquet(f"{work}/ref.parquet"); cur.to_parquet(f"{work}/cur.parquet")

def run(method):
    walls, cpus, out = [], [], None
    for _ in range(REPS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run([weir, "drift", f"{work}/ref.parquet", f"{work}/cur.parquet", "--method", method, "--json"],
                           capture_output=True, text=True, check=True, cwd=work)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        out = json.loads(p.stdout)
    return {"wall_s_median": round(statistics.median(walls), 3), "cpu_s_median": round(statistics.median(cpus), 3),
            "methods": sorted({c["method"] for c in out["columns"]}),
            "flagged": sorted(c["column"] for c in out["columns"] if c["drifted"]),
            "scores_shifted": {c["column"]: round(c["score"], 6) for c in out["columns"] if c["column"] < "f05"}}

ev = json.loads(open(f"{work}/evidently.txt").read().strip().splitlines()[-1])
weir_runs = {m: run(m) for m in ("auto", "ks", "psi")}
result = {"script": "drift_compare", "rows": N, "columns": 20, "weir": weir_runs,
          "evidently": {"default": {k: ev["default"][k] for k in ("run_wall_s_median", "run_cpu_s_median", "methods_picked", "flagged")},
                        "ks": {k: ev["ks"][k] for k in ("run_wall_s", "flagged")} if "ks" in ev else None,
                        "psi": {k: ev["psi"][k] for k in ("run_wall_s", "flagged")} if "psi" in ev else None},
          "ratio_default_wall": round(ev["default"]["run_wall_s_median"] / weir_runs["auto"]["wall_s_median"], 1),
          "ratio_default_cpu": round(ev["default"]["run_cpu_s_median"] / weir_runs["auto"]["cpu_s_median"], 1),
          "same_flagged_default": ev["default"]["flagged"] == weir_runs["auto"]["flagged"],
          "ks_flags_wasserstein_misses": sorted(set(weir_runs["ks"]["flagged"]) - set(weir_runs["auto"]["flagged"])),
          "loadavg": list(os.getloadavg()), "evidently_version": ev["versions"]["evidently"]}
print(json.dumps(result))
PY
