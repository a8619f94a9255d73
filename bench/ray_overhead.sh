#!/usr/bin/env bash
# The Ray executor's cost per step, against a real Ray cluster on loopback
# (scripts/ray-cluster.sh: a head and two 1-CPU workers), with metadata in
# PostgreSQL and artifacts in moto (S3), the same stores for both executors.
#   - Ray alone: a trivial job (`touch FILE`) submitted through the Jobs API,
#     timed until FILE exists (polled every 5 ms: the entrypoint ran) and
#     until Ray says SUCCEEDED (polled every 10 ms);
#   - a chain of N steps (each reads the previous one's output) run with
#     --no-cache on the local executor: its wall time per step;
#   - the same chain on Ray, each step timed from inside: the `weir` the
#     nodes run is a wrapper that notes when Ray started it, so each step's
#     time splits into Ray's part (the job submitted, until its entrypoint
#     started) and Weir's: the runner between one step's recorded end and
#     the next submission, and the step runtime from its start to its
#     recorded outcome. A fixed share of a run (process start, the cluster
#     check before it starts) is left out, as Ray's own figure leaves it.
# Weir's cost per step on Ray beyond Ray's own latency = runner + runtime
# (the runtime's work, staging and storing through S3, is what the local
# executor's steps do too). Medians over TRIALS runs' steps (default 3).
# Prints one JSON line. Needs the venvs of scripts/test.sh (moto, ray), psql
# and a PostgreSQL at PGURL.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
# shellcheck source=bench/lib/ray_stores.sh
. bench/lib/ray_stores.sh
new_db ray_overhead

cat >"$work/weir-timed" <<SH
#!/bin/sh
echo "\$2 \$(date +%s%3N)" >> "$work/started"
exec "$PWD/target/release/weir" "\$@"
SH
chmod +x "$work/weir-timed"

WEIR="$PWD/target/release/weir" TRIALS="${TRIALS:-3}" N="${N:-10}" RAY_ADDRESS_URL="$address" \
WEIR_DB="$db_url" WEIR_ARTIFACTS="s3://bench/ray-overhead" WEIR_RAY_ADDRESS="$address" \
WORK="$work" python3 - <<'PY'
import json, os, statistics, subprocess, time, urllib.request

WEIR, TRIALS, N = os.environ["WEIR"], int(os.environ["TRIALS"]), int(os.environ["N"])
ADDRESS, WORK, DB = os.environ["RAY_ADDRESS_URL"], os.environ["WORK"], os.environ["WEIR_DB"]

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

def run(executor, env=None):
    t = time.perf_counter()
    subprocess.run([WEIR, "run", spec, "--no-cache", "--executor", executor, "--json"],
                   check=True, stdout=subprocess.DEVNULL, cwd=WORK, env={**os.environ, **(env or {})})
    return (time.perf_counter() - t) * 1e3

def steps_of_last_run():
    """(id, started_at, ended_at, job) of the latest run's steps, in order."""
    out = subprocess.run(
        ["psql", DB, "-At", "-F", " ", "-c",
         "SELECT s.id, s.started_at, s.ended_at, s.job FROM step_runs s "
         "WHERE s.run_id = (SELECT id FROM runs ORDER BY started_at DESC LIMIT 1) "
         "ORDER BY s.started_at"],
        check=True, capture_output=True, text=True).stdout
    return [line.split(" ") for line in out.splitlines() if line]

local = statistics.median(run("local") / N for _ in range(TRIALS))
ray_ran, ray_succeeded = ray_job_ms()
runner, ray_part, runtime, walls = [], [], [], []
for _ in range(TRIALS):
    started_log = f"{WORK}/started"
    if os.path.exists(started_log):
        os.remove(started_log)
    walls.append(run("ray", {"WEIR_RAY_WEIR_BIN": f"{WORK}/weir-timed"}) / N)
    started = dict(line.split() for line in open(started_log))
    previous_end = None
    for step_id, begun, ended, job in steps_of_last_run():
        submitted = int(job.rsplit("-", 1)[1])  # the job id ends with its submission time
        ray_part.append(int(started[step_id]) - submitted)
        runtime.append(int(ended) - int(started[step_id]))
        if previous_end is not None:
            runner.append(submitted - previous_end)
        previous_end = int(ended)
med = lambda xs: round(statistics.median(xs), 1)
print(json.dumps({
    "steps": N, "trials": TRIALS,
    "ray_job_ran_ms": round(ray_ran, 1),
    "ray_job_succeeded_ms": round(ray_succeeded, 1),
    "local_ms_per_step": round(local, 1),
    "ray_wall_ms_per_step": round(statistics.median(walls), 1),
    "ray_submit_to_entrypoint_ms": med(ray_part),
    "weir_runner_between_steps_ms": med(runner),
    "weir_runtime_ms": med(runtime),
    "weir_beyond_ray_ms_per_step": round(statistics.median(runner) + statistics.median(runtime), 1),
}))
PY
