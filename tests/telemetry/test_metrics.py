"""Every /metrics page Weir serves (`weir server`, `weir serve`, `weir run
--metrics-addr`) read by the official Prometheus client's OpenMetrics parser,
with the conventions checked: snake_case names under `weir_` (or the standard
`process_`), base units in histogram names, counters exposed as `_total`."""
import json
import os
import re
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIR = os.environ.get("WEIR_BIN", os.path.join(ROOT, "target", "debug", "weir"))
NAME = re.compile(r"^(weir|process)_[a-z0-9_]+$")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url):
    r = requests.get(url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name, f in families.items():
        assert NAME.match(name), name
        if f.type == "histogram":
            assert re.search(r"_(seconds|bytes|rows)$", name), name
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), name
    return families


def value(families, name, sample, **labels):
    for s in families[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def wait_ready(url, proc, path):
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(url + path, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}{path} never answered")


@pytest.fixture()
def home():
    h = tempfile.mkdtemp(prefix="weir-metrics-")
    return h, dict(os.environ, WEIR_HOME=h, WEIR_LOG="warn")


def test_tracking_server_metrics(home):
    _, env = home
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([WEIR, "server", "--addr", url.removeprefix("http://")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc, "/health")
        api = url + "/api/2.0/mlflow"
        exp = requests.post(api + "/experiments/create", json={"name": "m"}).json()["experiment_id"]
        run = requests.post(api + "/runs/create", json={"experiment_id": exp}).json()["run"]["info"]["run_id"]
        for i in range(5):
            r = requests.post(api + "/runs/log-batch", json={
                "run_id": run, "metrics": [{"key": "loss", "value": 1.0 / (i + 1), "timestamp": i, "step": i}]})
            assert r.status_code == 200, r.text
        assert requests.get(api + "/runs/get", params={"run_id": "nope"}).status_code == 404
        requests.get(url + "/no/such/page")
        m = scrape(url)
        route = "/api/2.0/mlflow/runs/log-batch"
        assert value(m, "weir_server_http_requests", "weir_server_http_requests_total",
                     method="POST", route=route, code="200") == 5
        assert value(m, "weir_server_http_requests", "weir_server_http_requests_total",
                     route="/api/2.0/mlflow/runs/get", code="404") == 1
        # A path no route knows is one label value, whatever the path.
        assert value(m, "weir_server_http_requests", "weir_server_http_requests_total", route="unmatched") == 1
        assert value(m, "weir_server_http_request_duration_seconds",
                     "weir_server_http_request_duration_seconds_count", route=route) == 5
        assert m["weir_store_statement_duration_seconds"].type == "histogram"
        statements = sum(s.value for s in m["weir_store_statement_duration_seconds"].samples
                         if s.name.endswith("_count"))
        assert statements >= 7
        assert value(m, "process_resident_memory_bytes", "process_resident_memory_bytes") > 1 << 20
        assert value(m, "process_cpu_seconds", "process_cpu_seconds_total") > 0
        assert m["weir_server_store_connections"].type == "gauge"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_inference_server_metrics(home):
    h, env = home
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    path = os.path.join(h, "m.onnx")
    with open(path, "wb") as f:
        f.write(to_onnx(LogisticRegression().fit(X, y), X[:1], options={"zipmap": False}).SerializeToString())
    subprocess.run([WEIR, "models", "register", "m", path], env=env, check=True, capture_output=True)
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([WEIR, "serve", "m", "--addr", url.removeprefix("http://")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc, "/v2/health/ready")
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 3], "data": X[:2].ravel().tolist()}]}
        for _ in range(3):
            assert requests.post(url + "/v2/models/m/infer", json=body).status_code == 200
        m = scrape(url)
        assert value(m, "weir_serve_requests", "weir_serve_requests_total", model="m", code="200") == 3
        assert m["weir_serve_request_duration_seconds"].type == "histogram"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_runner_metrics_while_a_run_goes_on(home):
    h, env = home
    with open(os.path.join(h, "p.yaml"), "w") as f:
        f.write("version: 1\nname: watched\nsteps:\n"
                "  first:\n    run: echo one > \"$WEIR_OUTPUTS_DIR/x\"\n    outputs: [x]\n"
                "  slow:\n    run: sleep 4\n    inputs: { x: first.x }\n")
    port = free_port()
    proc = subprocess.Popen([WEIR, "run", os.path.join(h, "p.yaml"), "--json", "--metrics-addr", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    seen = None
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            m = scrape(url)
        except requests.ConnectionError:
            time.sleep(0.1)
            continue
        # The cost is read from the store after a step ends: it may trail by a moment.
        if value(m, "weir_runner_steps", "weir_runner_steps", state="running") == 1 and \
                value(m, "weir_runner_steps", "weir_runner_steps", state="succeeded") == 1 and \
                value(m, "weir_runner_run_cost_dollars", "weir_runner_run_cost_dollars") > 0:
            seen = m
            break
        time.sleep(0.1)
    assert seen is not None, "the slow step never showed as running beside the finished one"
    assert value(seen, "weir_runner_cache_lookups", "weir_runner_cache_lookups_total", state="miss") == 2
    assert value(seen, "weir_runner_step_duration_seconds", "weir_runner_step_duration_seconds_count",
                 state="succeeded") == 1
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out)["status"] == "succeeded"
