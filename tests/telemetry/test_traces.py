"""Traces over OTLP/HTTP, received by a collector stand-in that decodes each
request with the official OpenTelemetry protos (opentelemetry-proto): a
pipeline run is a trace (run -> step attempts -> stage/execute/upload, trials
under their study, a `run:` step's TRACEPARENT pointing at its span), an
inference request joins its caller's trace, and a collector that is down
drops spans with a counter while nothing waits."""
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIR = os.environ.get("WEIR_BIN", os.path.join(ROOT, "target", "debug", "weir"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector:
    """OTLP/HTTP traces receiver: POST /v1/traces, protobuf bodies."""

    def __init__(self):
        self.spans = []
        self.services = set()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/traces", self.path
                assert self.headers["Content-Type"] == "application/x-protobuf"
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with lock:
                    for rs in request.resource_spans:
                        service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
                        outer.services.add(service)
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                outer.spans.append((service, span))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name):
        return [s for _, s in self.spans if s.name == name]

    def one(self, name):
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for _, s in self.spans])
        return found[0]

    def close(self):
        self.server.shutdown()


def attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else (
            v.int_value if v.HasField("int_value") else v.double_value if v.HasField("double_value") else v.bool_value)
    return out


@pytest.fixture()
def collector():
    c = Collector()
    yield c
    c.close()


def env_for(home, endpoint):
    return dict(os.environ, WEIR_HOME=home, WEIR_LOG="warn", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_BSP_SCHEDULE_DELAY="100")


PIPELINE = """version: 1
name: traced
steps:
  ingest:
    uses: weir/ingest
    with: { path: data.csv }
  split:
    uses: weir/split
    inputs: { table: ingest.table }
    with: { method: random, valid: 0.25, test: 0.25, seed: 1 }
  train:
    uses: weir/train-gbdt
    inputs: { train: split.train, valid: split.valid }
    with: { target: "y > 0", num_rounds: 10, threads: 1 }
    tune:
      space:
        learning_rate: loguniform(0.05, 0.5)
      objective: { metric: valid.auc, goal: maximize }
      trials: 2
      sampler: random
  shell:
    run: echo "$TRACEPARENT" > "$WEIR_OUTPUTS_DIR/parent"
    outputs: [parent]
"""


def write_pipeline(home):
    rng = np.random.default_rng(0)
    with open(os.path.join(home, "data.csv"), "w") as f:
        f.write("a,b,y\n")
        for _ in range(400):
            a, b = rng.normal(), rng.normal()
            f.write(f"{a:.4f},{b:.4f},{a + 0.5 * b + rng.normal() * 0.3:.4f}\n")
    path = os.path.join(home, "p.yaml")
    with open(path, "w") as f:
        f.write(PIPELINE)
    return path


def wait_for(predicate, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_pipeline_run_is_one_trace(collector):
    home = tempfile.mkdtemp(prefix="weir-traces-")
    path = write_pipeline(home)
    out = subprocess.run([WEIR, "run", path, "--json"], env=env_for(home, collector.url),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    assert wait_for(lambda: len(collector.named("trial 1")) == 1 and len(collector.named("step shell")) == 1)

    run = collector.one("run traced")
    assert attrs(run)["weir.run_id"] == run_id
    assert run.parent_span_id == b""
    trace = run.trace_id
    assert all(s.trace_id == trace for _, s in collector.spans), "every span is in the run's trace"
    assert {"weir-runner", "weir-exec"} <= collector.services

    steps = {}
    for name in ("ingest", "split", "train", "shell"):
        step = collector.one(f"step {name}")
        assert step.parent_span_id == run.span_id, name
        assert attrs(step)["weir.attempt"] == 1
        steps[name] = step
        children = {s.name: s for _, s in collector.spans if s.parent_span_id == step.span_id}
        assert {"stage inputs", "execute", "upload outputs"} <= set(children), (name, set(children))
        for child in children.values():
            assert step.start_time_unix_nano <= child.start_time_unix_nano
            assert child.end_time_unix_nano <= step.end_time_unix_nano
    execute = next(s for _, s in collector.spans
                   if s.name == "execute" and s.parent_span_id == steps["train"].span_id)
    for n in (0, 1):
        trial = collector.one(f"trial {n}")
        assert trial.parent_span_id == execute.span_id
        a = attrs(trial)
        assert a["weir.trial.state"] == "complete" and "weir.param.learning_rate" in a
        assert 0.0 < a["weir.valid.auc"] <= 1.0

    # The command saw its execute span as TRACEPARENT.
    shell_exec = next(s for _, s in collector.spans
                      if s.name == "execute" and s.parent_span_id == steps["shell"].span_id)
    show = json.loads(subprocess.run([WEIR, "runs", "show", run_id, "--json"], env=env_for(home, ""),
                                     capture_output=True, text=True, check=True).stdout)
    digest = next(s for s in show["steps"] if s["step"] == "shell")["outputs"]["parent"]["digest"]
    blob = open(os.path.join(home, "artifacts", "blobs", digest[:2], digest)).read().strip()
    version, trace_hex, parent_hex, flags = blob.split("-")
    assert (version, flags) == ("00", "01")
    assert bytes.fromhex(trace_hex) == trace and bytes.fromhex(parent_hex) == shell_exec.span_id

    # A cached re-run: its steps are spans that say so, and nothing ran.
    collector.spans.clear()
    out = subprocess.run([WEIR, "run", path, "--json"], env=env_for(home, collector.url),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert wait_for(lambda: len(collector.named("run traced")) == 1)
    cached = collector.one("step ingest")
    assert attrs(cached)["weir.cache"].startswith("hit: run ")
    assert not collector.named("execute")


def serve_model(home, env, sample="0"):
    X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    path = os.path.join(home, "m.onnx")
    with open(path, "wb") as f:
        f.write(to_onnx(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), X[:1],
                        options={"zipmap": False}).SerializeToString())
    subprocess.run([WEIR, "models", "register", "m", path], env=env, check=True, capture_output=True)
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([WEIR, "serve", "m", "--addr", url.removeprefix("http://"), "--trace-sample", sample],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: proc.poll() is None and ready(url), 60)
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 3], "data": X[:2].ravel().tolist()}]}
    return proc, url, body


def ready(url):
    try:
        return requests.get(url + "/v2/health/ready", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_an_inference_request_joins_its_callers_trace(collector):
    home = tempfile.mkdtemp(prefix="weir-traces-")
    proc, url, body = serve_model(home, env_for(home, collector.url))
    try:
        # Sampling is off, so only the caller's decision traces a request.
        assert requests.post(url + "/v2/models/m/infer", json=body).status_code == 200
        caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        headers = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
        assert requests.post(url + "/v2/models/m/infer", json=body, headers=headers).status_code == 200
        unsampled = {"traceparent": f"00-{caller_trace}-{caller_span}-00"}
        assert requests.post(url + "/v2/models/m/infer", json=body, headers=unsampled).status_code == 200
        assert wait_for(lambda: len(collector.named("encode")) >= 1)
        time.sleep(0.5)
        root = collector.one("POST /v2/models/{name}/infer")
        assert root.trace_id == bytes.fromhex(caller_trace)
        assert root.parent_span_id == bytes.fromhex(caller_span)
        assert root.kind == root.SPAN_KIND_SERVER
        a = attrs(root)
        assert a["http.response.status_code"] == 200 and a["weir.model"] == "m" and a["weir.rows"] == 2
        children = [s for _, s in collector.spans if s.parent_span_id == root.span_id]
        assert [c.name for c in sorted(children, key=lambda c: c.start_time_unix_nano)] == \
            ["decode", "model", "encode"]
        for c in children:
            assert root.start_time_unix_nano <= c.start_time_unix_nano <= c.end_time_unix_nano \
                <= root.end_time_unix_nano
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_collector_that_is_down_drops_spans_and_blocks_nothing():
    home = tempfile.mkdtemp(prefix="weir-traces-")
    down = f"http://127.0.0.1:{free_port()}"
    path = write_pipeline(home)
    started = time.time()
    out = subprocess.run([WEIR, "run", path, "--json"], env=env_for(home, down),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert time.time() - started < 120
    proc, url, body = serve_model(home, env_for(home, down), sample="1")
    try:
        for _ in range(5):
            t = time.time()
            assert requests.post(url + "/v2/models/m/infer", json=body).status_code == 200
            assert time.time() - t < 1.0
        def dropped():
            for line in requests.get(url + "/metrics").text.splitlines():
                if line.startswith("weir_serve_otlp_spans_dropped_total "):
                    return float(line.split()[1])
            return 0.0
        assert wait_for(lambda: dropped() >= 5 * 4, 20), dropped()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
