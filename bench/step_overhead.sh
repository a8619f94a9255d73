#!/usr/bin/env bash
# Weir's own cost per executed step: chained pipelines of N `echo` steps
# (N = 10, 50, 200 by default) run with --no-cache in a fresh WEIR_HOME, and
# the same commands run bare (`sh -c`, spawned the way a step runtime spawns
# them). Per-step overhead = (wall time - N x bare command) / N; the slope of
# wall time over N shows the cost grows linearly with the number of steps.
# Prints one JSON line; medians over TRIALS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
WEIR="$PWD/target/release/weir" TRIALS="${TRIALS:-3}" SIZES="${SIZES:-10 50 200}" \
python3 - <<'PY'
import json, os, statistics, subprocess, tempfile, time

WEIR, TRIALS = os.environ["WEIR"], int(os.environ["TRIALS"])
SIZES = [int(n) for n in os.environ["SIZES"].split()]

def pipeline(n):
    lines = ["version: 1", f"name: chain-{n}", "steps:"]
    for i in range(1, n + 1):
        lines += [f"  s{i}:", f"    run: echo {i} > $WEIR_OUTPUTS_DIR/out", "    outputs: [out]"]
        if i > 1:
            lines.append(f"    inputs: {{ prev: s{i-1}.out }}")
    return "\n".join(lines) + "\n"

def bare_command_ms(samples=300):
    out = tempfile.mkdtemp(prefix="weir-bare-")
    env = dict(os.environ, WEIR_OUTPUTS_DIR=out)
    t = time.perf_counter()
    for i in range(samples):
        subprocess.run(["sh", "-c", f"echo {i} > $WEIR_OUTPUTS_DIR/out"], env=env, check=True)
    return (time.perf_counter() - t) / samples * 1e3

def run_ms(n):
    walls = []
    for _ in range(TRIALS):
        home = tempfile.mkdtemp(prefix="weir-overhead-")
        open(f"{home}/p.yaml", "w").write(pipeline(n))
        env = dict(os.environ, WEIR_HOME=f"{home}/.weir")
        t = time.perf_counter()
        subprocess.run([WEIR, "run", "p.yaml", "--no-cache", "--json"], cwd=home, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t)
    return statistics.median(walls) * 1e3

bare = bare_command_ms()
walls = {n: run_ms(n) for n in SIZES}
# Least-squares slope of wall time over step count: the marginal cost of a step.
mx = statistics.mean(SIZES); my = statistics.mean(walls.values())
slope = sum((n - mx) * (walls[n] - my) for n in SIZES) / sum((n - mx) ** 2 for n in SIZES)
print(json.dumps({
    "script": "weir_step_overhead",
    "bare_command_ms": round(bare, 2),
    "wall_ms": {str(n): round(w, 1) for n, w in walls.items()},
    "overhead_per_step_ms": {str(n): round((w - n * bare) / n, 2) for n, w in walls.items()},
    "marginal_ms_per_step": round(slope, 2),
    "marginal_overhead_ms_per_step": round(slope - bare, 2),
    "fixed_ms": round(my - slope * mx, 1),
}))
PY
