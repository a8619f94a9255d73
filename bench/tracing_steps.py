"""Tracing's cost per pipeline step: chains of N `echo` steps run with
tracing off and on (spans to the OTLP sink at argv[1]), R rounds alternated
(off-on, then on-off), each run in a fresh WEIR_HOME with --no-cache. Prints
one JSON line: per-step wall time and CPU (the whole process tree, from
getrusage) per mode, and the median of the paired differences, which the
machine's drift between rounds affects least."""
import json, os, resource, statistics, subprocess, sys, tempfile, time
WEIR = os.environ["WEIR"]
N = int(os.environ.get("N", "50")); R = int(os.environ.get("R", "8"))
sink = sys.argv[1]
def pipeline(n):
    lines = ["version: 1", f"name: chain-{n}", "steps:"]
    for i in range(1, n + 1):
        lines += [f"  s{i}:", f"    run: echo {i} > $WEIR_OUTPUTS_DIR/out", "    outputs: [out]"]
        if i > 1: lines.append(f"    inputs: {{ prev: s{i-1}.out }}")
    return "\n".join(lines) + "\n"
def once(traced):
    home = tempfile.mkdtemp(prefix="weir-ab-")
    open(f"{home}/p.yaml", "w").write(pipeline(N))
    env = dict(os.environ, WEIR_HOME=f"{home}/.weir")
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    if traced: env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([WEIR, "run", "p.yaml", "--no-cache", "--json"], cwd=home, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall / N * 1e3, cpu / N * 1e3
res = {"off": [], "on": []}
once(False)
for r in range(R):
    for mode in (("off", False), ("on", True)) if r % 2 == 0 else (("on", True), ("off", False)):
        res[mode[0]].append(once(mode[1]))
out = {}
for m, xs in res.items():
    out[m] = {"wall_ms_per_step_median": round(statistics.median(x[0] for x in xs), 2),
              "cpu_ms_per_step_median": round(statistics.median(x[1] for x in xs), 2),
              "wall_all": [round(x[0], 2) for x in xs], "cpu_all": [round(x[1], 2) for x in xs]}
paired = lambda i: round(statistics.median(b[i] - a[i] for a, b in zip(res["off"], res["on"])), 2)
out["paired_wall_ms_per_step"] = paired(0)
out["paired_cpu_ms_per_step"] = paired(1)
out["steps"], out["rounds"] = N, R
print(json.dumps(out))
