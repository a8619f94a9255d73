#!/usr/bin/env bash
# The workload of ../shared/peers/dvc_pipeline.sh on Weir: a 10-stage linear
# pipeline whose stage i runs `python -c` to append a line to stage i-1's
# file. Times `weir run` (wall clock, CLI start-up included) for
#   first    : fresh project, nothing cached -> runs all stages
#   nochange : immediately again -> every stage is a cache hit
#   change5  : stage 5's command edited -> stages 5-10 run again
# in a brand-new project per trial; prints the medians over TRIALS (default 3)
# as one JSON line. Run the DVC script right before or after, on the same
# machine, and compare the two JSON lines as ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
WEIR="$PWD/target/release/weir" TRIALS="${TRIALS:-3}" STAGES="${STAGES:-10}" CHANGED_STAGE="${CHANGED_STAGE:-5}" \
python3 - <<'PY'
import json, os, statistics, subprocess, tempfile, time
WEIR, TRIALS, N, CH = os.environ["WEIR"], int(os.environ["TRIALS"]), int(os.environ["STAGES"]), int(os.environ["CHANGED_STAGE"])

def pipeline(changed=False):
    lines = ["version: 1", "name: dvc-workload", "steps:"]
    for i in range(1, N + 1):
        tag = " changed" if changed and i == CH else ""
        src = "'data/s0.txt'" if i == 1 else "os.environ['WEIR_INPUTS_DIR']+'/prev'"
        cmd = (f"python3 -c \"import os; open(os.environ['WEIR_OUTPUTS_DIR']+'/out','w')"
               f".write(open({src}).read()+'stage {i}{tag}\\n')\"")
        lines += [f"  s{i}:", f"    run: {json.dumps(cmd)}", "    outputs: [out]"]
        lines += ["    code: [data/s0.txt]"] if i == 1 else [f"    inputs: {{ prev: s{i-1}.out }}"]
    return "\n".join(lines) + "\n"

def run(repo):
    t = time.perf_counter()
    out = subprocess.run([WEIR, "run", "pipeline.yaml", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    dt = time.perf_counter() - t
    steps = json.loads(out.stdout)["steps"]
    return dt, sum(1 for s in steps if s["cached_from"] is None)

res = {k: [] for k in ("first", "nochange", "change5")}
ran = {k: [] for k in res}
for _ in range(TRIALS):
    repo = tempfile.mkdtemp(prefix="weir-dvc-")
    os.makedirs(f"{repo}/data")
    open(f"{repo}/data/s0.txt", "w").write("seed\n")
    open(f"{repo}/pipeline.yaml", "w").write(pipeline())
    for key in res:
        if key == "change5":
            open(f"{repo}/pipeline.yaml", "w").write(pipeline(changed=True))
        dt, n = run(repo)
        res[key].append(dt); ran[key].append(n)
out = {"script": "weir_dvc_workload", "stages": N, "trials": TRIALS}
for k in res:
    out[f"{k}_s_median"] = round(statistics.median(res[k]), 3)
    out[f"{k}_s_all"] = [round(x, 3) for x in res[k]]
    out[f"{k}_stages_run"] = ran[k]
print(json.dumps(out))
PY
