"""What the Python client of ../shared/peers/mlflow_tracking.sh costs itself.

The peer workload's client runs on the same 2 cores as the server, and its own
CPU time bounds what any server can show through it. This runs the same three
operations, built the same way (requests sessions, the same bodies), against a
running tracking server and reports the client's CPU time per operation
(time.process_time, all threads) and the highest rate the client alone allows:

  logbatch: runs/create + log-batch of 1,000 metrics, one thread
  create:   runs/create + log-batch of 5 params and 5 metrics, 4 threads,
            5,000 runs (the peer's search set-up)
  search:   the JSON parse of one runs/search reply (1,000 runs)

Usage: python bench/tracking_client_cost.py http://127.0.0.1:PORT  [N=300]
Prints one JSON line.
"""
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

URL = sys.argv[1].rstrip("/") + "/api/2.0/mlflow"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
local = threading.local()


def post(path, body):
    s = getattr(local, "s", None)
    if s is None:
        s = local.s = requests.Session()
    r = s.post(f"{URL}/{path}", json=body, timeout=120)
    r.raise_for_status()
    return r.json()


def now_ms():
    return int(time.time() * 1000)


def logbatch_iteration(exp):
    run_id = post("runs/create", {"experiment_id": exp, "start_time": now_ms()})["run"]["info"]["run_id"]
    ts = now_ms()
    metrics = [{"key": f"m{k}", "value": random.random(), "timestamp": ts, "step": s}
               for k in range(10) for s in range(100)]
    post("runs/log-batch", {"run_id": run_id, "metrics": metrics})


rng = random.Random(42)


def spec():
    return {"params": [{"key": f"p{j}", "value": str(rng.randint(0, 100))} for j in range(5)],
            "metrics": [{"key": k, "value": rng.random(), "timestamp": 0, "step": 0}
                        for k in ("acc", "loss", "f1", "auc", "prec")]}


def make_run(exp, sp):
    run_id = post("runs/create", {"experiment_id": exp, "start_time": now_ms()})["run"]["info"]["run_id"]
    post("runs/log-batch", {"run_id": run_id, "params": sp["params"], "metrics": sp["metrics"]})


def measured(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


exp = post("experiments/create", {"name": f"client-cost-{now_ms()}"})["experiment_id"]
logbatch_iteration(exp)
cpu, wall = measured(lambda: [logbatch_iteration(exp) for _ in range(N)])
out = {"logbatch": {"iterations": N, "client_cpu_ms_per_iteration": round(cpu / N * 1e3, 3),
                    "client_bound_metrics_per_s": round(1000 / (cpu / N)),
                    "measured_metrics_per_s": round(1000 * N / wall)}}

specs = [spec() for _ in range(5000)]  # as the peer's search set-up
with ThreadPoolExecutor(4) as ex:
    cpu, wall = measured(lambda: list(ex.map(lambda sp: make_run(exp, sp), specs)))
out["create"] = {"runs": len(specs), "client_cpu_ms_per_run": round(cpu / len(specs) * 1e3, 3),
                 "client_bound_runs_per_s": round(len(specs) / cpu),
                 "measured_runs_per_s": round(len(specs) / wall)}

body = {"experiment_ids": [exp], "filter": "metrics.acc > 0.5", "max_results": 1000,
        "order_by": ["metrics.acc DESC"]}
s = requests.Session()
parse = []
for _ in range(5):
    r = s.post(f"{URL}/runs/search", json=body, timeout=120)
    t = time.perf_counter()
    got = len(r.json()["runs"])
    parse.append(time.perf_counter() - t)
parse.sort()
out["search"] = {"returned": got, "reply_bytes": len(r.content),
                 "client_json_parse_ms_median": round(parse[2] * 1e3, 1)}
print(json.dumps(out))
