#!/usr/bin/env bash
# The Ray executor's cost per step, against a real Ray cluster on loopback
# (scripts/ray-cluster.sh: a head and two 1-CPU workers), with metadata in
# PostgreSQL and artifacts in moto (S3), the same stores for both executors:
#   - Ray's own job latency: a trivial job (`touch FILE`) submitted through
#     the Jobs API, timed until FILE exists (polled every 5 ms: the entrypoint
#     ran) and until Ray says SUCCEEDED (polled every 10 ms);
#   - a chain of N steps (each reads the previous one's output) run with
#     --no-cache on the local executor and on Ray; per step = wall / N.
# Weir's cost on Ray beyond Ray's own latency = Ray per step - the time for
# Ray to run a trivial entrypoint; it holds the step runtime's own work (the
# local figure, which also holds the runner's) and the runner's polling.
# Prints one JSON line; medians over TRIALS (default 3). Needs the venvs of
# scripts/test.sh (moto, ray) and a PostgreSQL at PGURL.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
# shellcheck source=bench/lib/ray_stores.sh
. bench/lib/ray_stores.sh
new_db ray_overhead

WEIR="$PWD/target/release/weir" TRIALS="${TRIALS:-3}" N="${N:-10}" RAY_ADDRESS_URL="$address" \
WEIR_DB="$db_url" WEIR_ARTIFACTS="s3://bench/ray-overhead" WEIR_RAY_ADDRESS="$address" \
WORK="$work" python3 - <<'PY'
import json, os, statistics, subprocess, time, urllib.request

WEIR, TRIALS, N = os.environ["WEIR"], int(os.environ["TRIALS"]), int(os.environ["N"])
ADDRESS, WORK = os.environ["RAY_ADDRESS_URL"], os.environ["WORK"]

def ray_job_ms(samples=10):
    """Submit a trivial job; time until its entrypoint has run (the file it
    touches appears, polled every 5 ms) and until Ray reports it SUCCEEDED."""
    ran, succeeded = [], []
    for i in range(samples):
        marker = f"{WORK}/ran-{i}"
        body = json.dumps({"entrypoint": f"touch {marker}", "entrypoint_num_cpus": 1,
                           "submission_id": f"bench-{os.getpid()}-{i}-{time.time_ns()}"}).encode()
        t = time.perf_counter()
        req = urllib.request.Request(f"{ADDRESS}/api/jobs/", data=body,
                                     headers={"Content-Type": "application/json"})
        job = json.load(urllib.request.urlopen(req))["submission_id"]
        while not os.path.exists(marker):
            time.sleep(0.005)
        ran.append((time.perf_counter() - t) * 1e3)
        while json.load(urllib.request.urlopen(f"{ADDRESS}/api/jobs/{job}"))["status"] != "SUCCEEDED":
            time.sleep(0.01)
        succeeded.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ran), statistics.median(succeeded)

def pipeline(n):
    lines = ["version: 1", f"name: ray-chain-{n}", "steps:"]
    for i in range(1, n + 1):
        lines += [f"  s{i}:", f"    run: echo {i} > $WEIR_OUTPUTS_DIR/out", "    outputs: [out]"]
        if i > 1:
            lines.append(f"    inputs: {{ prev: s{i-1}.out }}")
    return "\n".join(lines) + "\n"

spec = f"{WORK}/chain.yaml"
open(spec, "w").write(pipeline(N))

def per_step_ms(executor):
    walls = []
    for _ in range(TRIALS):
        t = time.perf_counter()
        subprocess.run([WEIR, "run", spec, "--no-cache", "--executor", executor, "--json"],
                       check=True, stdout=subprocess.DEVNULL, cwd=WORK)
        walls.append((time.perf_counter() - t) * 1e3 / N)
    return statistics.median(walls)

ray_ran, ray_succeeded = ray_job_ms()
local = per_step_ms("local")
on_ray = per_step_ms("ray")
print(json.dumps({
    "steps": N, "trials": TRIALS,
    "ray_job_ran_ms": round(ray_ran, 1),
    "ray_job_succeeded_ms": round(ray_succeeded, 1),
    "local_ms_per_step": round(local, 1),
    "ray_ms_per_step": round(on_ray, 1),
    "weir_beyond_ray_ms_per_step": round(on_ray - ray_ran, 1),
}))
PY
