"""Seeds a Weir (or MLflow) tracking server over its REST API with the runs
the dashboard tests look at: an experiment of runs with params, metrics with
histories, tags, a parent with children, artifacts, and hostile input (a
`<script>` run name, a metric key with slashes and unicode, 10,000 params).
Prints the ids it made as JSON. Standard library only.

  python3 tests/ui/seed.py http://127.0.0.1:5000
"""
import json
import math
import sys
import urllib.request

BASE = sys.argv[1].rstrip("/")
API = f"{BASE}/api/2.0/mlflow"


def call(path, body):
    req = urllib.request.Request(f"{API}/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def put_artifact(run, path, data):
    root = run["info"]["artifact_uri"]
    assert root.startswith("mlflow-artifacts:/"), root
    url = f"{BASE}/api/2.0/mlflow-artifacts/artifacts/{root[len('mlflow-artifacts:/'):].lstrip('/')}/{path}"
    req = urllib.request.Request(url, data=data, method="PUT")
    urllib.request.urlopen(req).read()


def new_run(exp, name, start, tags=()):
    run = call("runs/create", {"experiment_id": exp, "run_name": name, "start_time": start,
                               "tags": [{"key": k, "value": v} for k, v in tags]})["run"]
    return run


def log(run_id, metrics=(), params=(), tags=()):
    metrics, params = list(metrics), list(params)
    while metrics or params or tags:
        call("runs/log-batch", {"run_id": run_id, "metrics": metrics[:1000], "params": params[:100],
                                "tags": [{"key": k, "value": v} for k, v in tags]})
        metrics, params, tags = metrics[1000:], params[100:], ()


def finish(run_id, end, status="FINISHED"):
    call("runs/update", {"run_id": run_id, "status": status, "end_time": end})


def main():
    exp = call("experiments/create", {"name": "flights-tuning"})["experiment_id"]
    t0 = 1_796_000_000_000
    ids = {"experiment": exp, "runs": {}}
    for i, (lr, leaves) in enumerate([(0.05, 31), (0.1, 63), (0.2, 15), (0.02, 127), (0.3, 7)]):
        run = new_run(exp, f"gbdt-{i}", t0 + i * 60_000, tags=[("model", "gbdt")])
        rid = run["info"]["run_id"]
        points = []
        for step in range(100):
            ts = t0 + i * 60_000 + step * 100
            loss = 0.7 * math.exp(-lr * step / 5) + 0.3 + 0.01 * math.sin(step + i)
            points += [{"key": "train/loss", "value": loss, "timestamp": ts, "step": step},
                       {"key": "valid.auc", "value": 0.6 + 0.1 * (1 - math.exp(-lr * step / 4)) - 0.001 * leaves / 10, "timestamp": ts, "step": step}]
        log(rid, points, [{"key": "learning_rate", "value": str(lr)}, {"key": "num_leaves", "value": str(leaves)},
                          {"key": "objective", "value": "binary"}])
        put_artifact(run, "model/MLmodel", b"flavors: {}\n")
        put_artifact(run, "metrics.json", json.dumps({"auc": 0.7}).encode())
        finish(rid, t0 + i * 60_000 + 30_000)
        ids["runs"][f"gbdt-{i}"] = rid
    # A parent with trials as children, as a study logs them.
    parent = new_run(exp, "study", t0 + 600_000)
    pid = parent["info"]["run_id"]
    for n in range(3):
        child = new_run(exp, f"trial-{n}", t0 + 600_000 + n, tags=[("mlflow.parentRunId", pid)])
        log(child["info"]["run_id"], [{"key": "valid.auc", "value": 0.7 + n / 100, "timestamp": t0, "step": 0}])
        finish(child["info"]["run_id"], t0 + 601_000 + n)
    finish(pid, t0 + 700_000)
    ids["runs"]["study"] = pid
    # Hostile and large input.
    evil = new_run(exp, "<script>window.__pwned = 1</script><img src=x onerror=window.__pwned=1>", t0 + 800_000,
                   tags=[("note", "<b>bold?</b>")])
    eid = evil["info"]["run_id"]
    log(eid, [{"key": "loss/ü/τ", "value": float(s) / 10, "timestamp": t0 + s, "step": s} for s in range(20)],
        [{"key": f"p{k:05d}", "value": f"v{k}"} for k in range(10_000)])
    finish(eid, t0 + 801_000)
    ids["runs"]["evil"] = eid
    # A long metric: 100,000 points.
    big = new_run(exp, "long-metric", t0 + 900_000)
    bid = big["info"]["run_id"]
    log(bid, [{"key": "loss", "value": math.sin(s / 500) + s / 50_000, "timestamp": t0 + s, "step": s} for s in range(100_000)])
    finish(bid, t0 + 999_000)
    ids["runs"]["long"] = bid
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
