"""Server time of each dashboard page at scale: the requests a page makes,
timed one after another over a kept-alive loopback connection, REPEATS
loads per page; prints one JSON object (p50/p95 per page and per request).

  python3 bench/ui/pages.py http://127.0.0.1:PORT weir|mlflow EXPERIMENT_ID [REPEATS]

Both servers get the same MLflow REST calls; the metric history is each
UI's own: Weir's /api/ui/metric-history (LTTB, 1,000 points) and MLflow's
get-history-bulk-interval (what its charts read, 320 points).
"""
import http.client
import json
import statistics
import sys
import time
from urllib.parse import urlencode, urlparse

base, kind, exp = sys.argv[1], sys.argv[2], sys.argv[3]
repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 20
u = urlparse(base)
# A page whose requests take longer than this is recorded as timed out.
TIMEOUT_S = float(__import__("os").environ.get("PAGE_TIMEOUT_S", "120"))
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT_S)
API = "/ajax-api/2.0/mlflow"


def call(method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    t = time.perf_counter()
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    r = conn.getresponse()
    data = r.read()
    ms = (time.perf_counter() - t) * 1e3
    if r.status >= 500 or (r.status >= 400 and "pipeline-run" not in path):
        raise SystemExit(f"{method} {path} -> {r.status}: {data[:300]!r}")
    return ms, (json.loads(data) if data and r.status < 400 else {})


def search(body):
    return call("POST", f"{API}/runs/search", {"experiment_ids": [exp], "max_results": 50, **body})


_, first = search({"order_by": ["attributes.start_time DESC"]})
runs = first["runs"]
run_id, other_id = runs[0]["info"]["run_id"], runs[1]["info"]["run_id"]
keys = sorted(m["key"] for m in runs[0]["data"]["metrics"])


def history(rid, key):
    if kind == "weir":
        return call("GET", "/api/ui/metric-history?" + urlencode({"run_id": rid, "metric_key": key, "max_points": 1000}))
    q = urlencode({"run_ids": rid, "metric_key": key, "max_results": 320})
    return call("GET", f"{API}/metrics/get-history-bulk-interval?{q}")


def runs_page():
    return [("experiments/get", call("GET", f"{API}/experiments/get?experiment_id={exp}")[0]),
            ("runs/search", search({"order_by": ["attributes.start_time DESC"]})[0])]


def runs_sorted():
    return [("runs/search order by metric", search({"order_by": ["metrics.`valid.auc` DESC"]})[0])]


def runs_filtered():
    return [("runs/search filter", search({"filter": "metrics.`valid.auc` > 0.8 and params.model = 'gbdt'",
                                           "order_by": ["attributes.start_time DESC"]})[0])]


def runs_page_2():
    ms, _ = search({"order_by": ["attributes.start_time DESC"], "page_token": first.get("next_page_token")})
    return [("runs/search page 2", ms)]


def run_page():
    parts = [("runs/get", call("GET", f"{API}/runs/get?run_id={run_id}")[0]),
             ("experiments/get", call("GET", f"{API}/experiments/get?experiment_id={exp}")[0]),
             ("child runs", search({"filter": f"tags.mlflow.parentRunId = '{run_id}'"})[0]),
             ("artifacts/list", call("GET", f"{API}/artifacts/list?run_id={run_id}")[0])]
    if kind == "weir":
        parts.append(("pipeline-run", call("GET", f"/api/ui/pipeline-run?run_id={run_id}")[0]))
    parts += [(f"history {k}", history(run_id, k)[0]) for k in keys]
    return parts


def compare_page():
    parts = [("runs/get", call("GET", f"{API}/runs/get?run_id={r}")[0]) for r in (run_id, other_id)]
    parts += [(f"history {k}", history(r, k)[0]) for k in keys for r in (run_id, other_id)]
    return parts


# The sort by a metric last: a server that does not answer it in time may
# still be working on it, and would slow every page measured after it.
pages = {"runs table": runs_page, "runs filtered": runs_filtered, "runs page 2": runs_page_2,
         "run": run_page, "compare 2 runs": compare_page, "runs sorted by a metric": runs_sorted}
out = {"server": kind, "repeats": repeats, "pages": {}}
for name, page in pages.items():
    try:
        page()  # warm
    except TimeoutError:
        # The server is still busy with it: a fresh connection for the next.
        conn.close()
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT_S)
        out["pages"][name] = {"timed_out_after_s": TIMEOUT_S}
        print(f"{name}: no answer within {TIMEOUT_S:.0f} s", file=sys.stderr)
        continue
    totals, per = [], {}
    for _ in range(repeats):
        parts = page()
        totals.append(sum(ms for _, ms in parts))
        for what, ms in parts:
            per.setdefault(what.split(" ")[0] if what.startswith("history") else what, []).append(ms)
    q = lambda xs: statistics.quantiles(xs, n=20, method="inclusive")[18] if len(xs) > 1 else xs[0]
    out["pages"][name] = {
        "requests": len(parts),
        "p50_ms": round(statistics.median(totals), 1),
        "p95_ms": round(q(totals), 1),
        "slowest_request_p95_ms": max((round(q(v), 1), k) for k, v in per.items()),
    }
    print(f"{name}: p50 {out['pages'][name]['p50_ms']} ms, p95 {out['pages'][name]['p95_ms']} ms "
          f"({len(parts)} requests; slowest {out['pages'][name]['slowest_request_p95_ms']})", file=sys.stderr)
print(json.dumps(out))
