"""Triton's Python clients as a user runs them, against `weir serve`: the
HTTP client with its default binary tensors (the binary tensor data
extension) and the gRPC client (inference.GRPCInferenceService on
--grpc-addr), for ONNX graphs and native Weir models. Every answer must be
bit-identical to the same request sent as JSON; bad binary input and bad
gRPC calls get a clear error."""
import json
import os
import struct
import subprocess
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from skl2onnx import to_onnx
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from test_onnx_serving import WEIR, free_port, models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NATIVE = os.path.join(ROOT, "fuzz", "corpus", "model_file")
ONNX_MODELS = ["gbdt", "mlp-regressor", "forest-multiclass"]


class Server:
    def __init__(self, home, names, *args):
        self.home = home
        self.env = dict(os.environ, WEIR_HOME=home, WEIR_LOG="warn")
        port, grpc_port = free_port(), free_port()
        self.url = f"127.0.0.1:{port}"
        self.grpc_url = f"127.0.0.1:{grpc_port}"
        self.log = os.path.join(home, f"serve-{port}.log")
        self.proc = subprocess.Popen(
            [WEIR, "serve", *names, "--addr", self.url, "--grpc-addr", self.grpc_url, *args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.time() + 60
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if requests.get(f"http://{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(open(self.log).read())

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=15) == 0, open(self.log).read()


def register(home, name, path):
    env = dict(os.environ, WEIR_HOME=home, WEIR_LOG="warn")
    subprocess.run([WEIR, "models", "register", name, path, "--json"], env=env,
                   capture_output=True, text=True, check=True)


def register_onnx(home, names):
    cases = {}
    for name, (model, X) in models().items():
        if name not in names:
            continue
        onx = to_onnx(model, X[:1].astype(np.float32),
                      options={"zipmap": False} if hasattr(model, "predict_proba") else None)
        path = os.path.join(home, f"{name}.onnx")
        with open(path, "wb") as f:
            f.write(onx.SerializeToString())
        register(home, name, path)
        cases[name] = X[np.random.default_rng(1).integers(0, len(X), 1000)].astype(np.float32)
    return cases


@pytest.fixture(scope="module")
def server():
    home = tempfile.mkdtemp(prefix="weir-triton-")
    cases = register_onnx(home, ONNX_MODELS)
    for kind in ("logistic", "linear", "gbdt"):
        register(home, f"native-{kind}", os.path.join(NATIVE, f"{kind}.json"))
    names = [*cases, "native-logistic", "native-linear", "native-gbdt"]
    subprocess.run([WEIR, "deploy", "web", "--model", "gbdt", "--version", "1"],
                   env=dict(os.environ, WEIR_HOME=home, WEIR_LOG="warn"), check=True, capture_output=True)
    s = Server(home, names)
    yield s, cases
    s.stop()


def json_answer(url, name, inputs, outputs=None):
    """The same request as plain JSON: the reference every binary and gRPC
    answer must equal bit for bit."""
    body = {"inputs": inputs}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    r = requests.post(f"http://{url}/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


def as_array(output):
    dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_}[output["datatype"]]
    data = [np.nan if v is None else v for v in output["data"]]
    return np.asarray(data, dtype=dtype).reshape(output["shape"])


def assert_bit_identical(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    assert got.tobytes() == want.tobytes(), what


def native_rows(n):
    rng = np.random.default_rng(7)
    x1 = rng.integers(0, 100, n).astype(np.int64)
    x2 = rng.normal(6.0, 3.0, n)
    c = np.array([["a", "b", "c", "zz"][i % 4].encode() for i in range(n)], dtype=np.object_)
    return x1, x2, c


def native_json_inputs(x1, x2, c):
    return [{"name": "x1", "datatype": "INT64", "shape": [len(x1)], "data": x1.tolist()},
            {"name": "x2", "datatype": "FP64", "shape": [len(x2)], "data": x2.tolist()},
            {"name": "c", "datatype": "BYTES", "shape": [len(c)], "data": [v.decode() for v in c]}]


@pytest.mark.parametrize("rows", [1, 1000])
@pytest.mark.parametrize("name", ONNX_MODELS)
def test_http_binary_tensors_match_json_bit_for_bit_on_onnx(server, name, rows):
    s, cases = server
    X = cases[name][:rows]
    client = httpclient.InferenceServerClient(url=s.url)
    x = httpclient.InferInput("X", list(X.shape), "FP32")
    x.set_data_from_numpy(X)  # binary_data=True, the client's default
    result = client.infer(name, [x])  # no outputs named: every output in binary
    want = json_answer(s.url, name, [{"name": "X", "datatype": "FP32", "shape": list(X.shape),
                                      "data": X.ravel().tolist()}])
    assert set(want) == {o["name"] for o in result.get_response()["outputs"]}
    for out in want.values():
        assert "binary_data_size" in result.get_output(out["name"])["parameters"]
        assert_bit_identical(result.as_numpy(out["name"]), as_array(out), f"{name}.{out['name']}")


@pytest.mark.parametrize("rows", [1, 1000])
@pytest.mark.parametrize("kind", ["logistic", "linear", "gbdt"])
def test_http_binary_tensors_match_json_bit_for_bit_on_native_models(server, kind, rows):
    s, _ = server
    name = f"native-{kind}"
    x1, x2, c = native_rows(rows)
    client = httpclient.InferenceServerClient(url=s.url)
    inputs = []
    for tensor_name, values, datatype in (("x1", x1, "INT64"), ("x2", x2, "FP64"), ("c", c, "BYTES")):
        t = httpclient.InferInput(tensor_name, [rows], datatype)
        t.set_data_from_numpy(values)
        inputs.append(t)
    result = client.infer(name, inputs)
    want = json_answer(s.url, name, native_json_inputs(x1, x2, c))
    for out in want.values():
        assert_bit_identical(result.as_numpy(out["name"]), as_array(out), f"{name}.{out['name']}")


def test_mixed_json_and_binary_inputs_and_per_output_choice(server):
    s, _ = server
    x1, x2, c = native_rows(5)
    client = httpclient.InferenceServerClient(url=s.url)
    a = httpclient.InferInput("x1", [5], "INT64")
    a.set_data_from_numpy(x1, binary_data=False)
    b = httpclient.InferInput("x2", [5], "FP64")
    b.set_data_from_numpy(x2, binary_data=True)
    t = httpclient.InferInput("c", [5], "BYTES")
    t.set_data_from_numpy(c, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("probability", binary_data=True),
               httpclient.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("native-logistic", [a, b, t], outputs=outputs)
    response = result.get_response()
    by_name = {o["name"]: o for o in response["outputs"]}
    assert "data" not in by_name["probability"] and by_name["probability"]["parameters"]["binary_data_size"] == 40
    assert "data" in by_name["label"]
    want = json_answer(s.url, "native-logistic", native_json_inputs(x1, x2, c))
    for out in want.values():
        assert_bit_identical(result.as_numpy(out["name"]), as_array(out), out["name"])


@pytest.mark.parametrize("datatype,dtype", [
    ("BOOL", np.bool_), ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
    ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64),
    ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64)])
def test_every_datatype_in_binary_predicts_as_in_json(server, datatype, dtype):
    s, _ = server
    x1, x2, c = native_rows(8)
    values = (x1 % 2 == 0) if datatype == "BOOL" else x1.astype(dtype)
    client = httpclient.InferenceServerClient(url=s.url)
    inputs = []
    for tensor_name, v, dt in (("x1", values, datatype), ("x2", x2, "FP64"), ("c", c, "BYTES")):
        t = httpclient.InferInput(tensor_name, [8], dt)
        t.set_data_from_numpy(v)
        inputs.append(t)
    result = client.infer("native-linear", inputs)
    json_inputs = native_json_inputs(x1, x2, c)
    json_inputs[0] = {"name": "x1", "datatype": datatype, "shape": [8], "data": values.tolist()}
    want = json_answer(s.url, "native-linear", json_inputs)
    assert_bit_identical(result.as_numpy("prediction"), as_array(want["prediction"]), datatype)


def raw_post(s, name, header, binary, json_len=None):
    body = json.dumps(header).encode()
    return requests.post(f"http://{s.url}/v2/models/{name}/infer", data=body + binary, headers={
        "Inference-Header-Content-Length": str(len(body) if json_len is None else json_len),
        "Content-Type": "application/octet-stream"})


def test_bad_binary_input_is_refused_with_the_reason(server):
    s, _ = server
    rows = np.zeros((1, 30), dtype=np.float32)
    tensor = lambda size: {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30],
                                       "parameters": {"binary_data_size": size}}]}
    ok = raw_post(s, "gbdt", tensor(120), rows.tobytes())
    assert ok.status_code == 200, ok.text
    # binary_data_size disagreeing with the body, or with the shape.
    r = raw_post(s, "gbdt", tensor(200), rows.tobytes())
    assert r.status_code == 400 and "only 120 bytes of binary data remain" in r.json()["error"], r.text
    r = raw_post(s, "gbdt", tensor(120), rows.tobytes() + b"\0\0\0\0")
    assert r.status_code == 400 and "4 bytes follow the JSON" in r.json()["error"], r.text
    r = raw_post(s, "gbdt", tensor(116), rows.tobytes())
    assert r.status_code == 400 and "116 bytes of binary data, but 30 FP32 elements take 120" in r.json()["error"], r.text
    # A header length past the body.
    r = raw_post(s, "gbdt", tensor(120), rows.tobytes(), json_len=10_000)
    assert r.status_code == 400 and "Inference-Header-Content-Length says 10000" in r.json()["error"], r.text
    # BYTES elements whose length prefix runs past the end.
    x1, x2, _ = native_rows(1)
    header = {"inputs": [{"name": "x1", "datatype": "INT64", "shape": [1], "data": x1.tolist()},
                         {"name": "x2", "datatype": "FP64", "shape": [1], "data": x2.tolist()},
                         {"name": "c", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}
    r = raw_post(s, "native-logistic", header, struct.pack("<I", 50) + b"ab")
    assert r.status_code == 400 and "length prefix says 50 bytes, but only 2 remain" in r.json()["error"], r.text
    # JSON without data and no binary part: what is missing and how to send it.
    r = requests.post(f"http://{s.url}/v2/models/gbdt/infer",
                      json={"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30]}]})
    assert r.status_code == 400 and "input 'X' has no data" in r.json()["error"], r.text
    # The server is unharmed.
    assert raw_post(s, "gbdt", tensor(120), rows.tobytes()).status_code == 200


@pytest.mark.parametrize("rows", [1, 1000])
def test_grpc_client_matches_json_bit_for_bit(server, rows):
    s, cases = server
    client = grpcclient.InferenceServerClient(url=s.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "weir" and "binary_tensor_data" in meta["extensions"]
    for name in ONNX_MODELS:
        assert client.is_model_ready(name)
        X = cases[name][:rows]
        m = client.get_model_metadata(name, as_json=True)
        assert m["platform"] == "onnx" and m["inputs"][0]["name"] == "X", m
        x = grpcclient.InferInput("X", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        result = client.infer(name, [x])
        want = json_answer(s.url, name, [{"name": "X", "datatype": "FP32", "shape": list(X.shape),
                                          "data": X.ravel().tolist()}])
        for out in want.values():
            assert_bit_identical(result.as_numpy(out["name"]), as_array(out), f"grpc {name}.{out['name']}")
    x1, x2, c = native_rows(rows)
    inputs = []
    for tensor_name, values, datatype in (("x1", x1, "INT64"), ("x2", x2, "FP64"), ("c", c, "BYTES")):
        t = grpcclient.InferInput(tensor_name, [rows], datatype)
        t.set_data_from_numpy(values)
        inputs.append(t)
    result = client.infer("native-gbdt", inputs, model_version="1",
                          outputs=[grpcclient.InferRequestedOutput("probability")])
    want = json_answer(s.url, "native-gbdt", native_json_inputs(x1, x2, c))
    assert result.get_response().model_version == "1"
    assert [o.name for o in result.get_response().outputs] == ["probability"]
    assert_bit_identical(result.as_numpy("probability"), as_array(want["probability"]), "grpc native-gbdt")


def test_grpc_reaches_endpoints_and_counts_on_their_rollouts(server):
    s, cases = server
    client = grpcclient.InferenceServerClient(url=s.grpc_url)
    assert client.is_model_ready("web")
    X = cases["gbdt"][:4]
    x = grpcclient.InferInput("X", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    result = client.infer("web", [x], headers={"x-weir-route-key": "user-1"})
    assert result.get_response().model_name == "gbdt" and result.get_response().model_version == "1"
    want = json_answer(s.url, "gbdt", [{"name": "X", "datatype": "FP32", "shape": [4, 30], "data": X.ravel().tolist()}])
    assert_bit_identical(result.as_numpy("label"), as_array(want["label"]), "endpoint label")
    metrics = requests.get(f"http://{s.url}/metrics").text
    assert 'weir_serve_endpoint_requests_total{endpoint="web",version="1",code="200"}' in metrics


def test_grpc_typed_contents_answer_as_raw_ones(server):
    """KServe's clients send typed contents rather than raw bytes."""
    s, cases = server
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(s.grpc_url))
    X = cases["mlp-regressor"][:3]
    request = service_pb2.ModelInferRequest(model_name="mlp-regressor", id="req-7")
    t = request.inputs.add(name="X", datatype="FP32", shape=list(X.shape))
    t.contents.fp32_contents.extend(X.ravel().tolist())
    reply = stub.ModelInfer(request)
    assert reply.id == "req-7" and reply.model_name == "mlp-regressor"
    got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(reply.outputs[0].shape)
    want = json_answer(s.url, "mlp-regressor", [{"name": "X", "datatype": "FP32", "shape": [3, X.shape[1]],
                                                 "data": X.ravel().tolist()}])
    assert_bit_identical(got, as_array(want[reply.outputs[0].name]), "typed contents")


def test_grpc_errors_say_what_is_wrong(server):
    s, _ = server
    client = grpcclient.InferenceServerClient(url=s.grpc_url)
    x = grpcclient.InferInput("X", [1, 30], "FP32")
    x.set_data_from_numpy(np.zeros((1, 30), dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("no-such-model", [x])
    assert e.value.status() == "StatusCode.NOT_FOUND" and "no-such-model" in e.value.message(), e.value
    assert not client.is_model_ready("no-such-model")
    bad = grpcclient.InferInput("X", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("gbdt", [bad])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "shape [1, 3]" in e.value.message(), e.value


def test_grpc_repository_extension_loads_and_unloads(server):
    s, _ = server
    client = grpcclient.InferenceServerClient(url=s.grpc_url)
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "gbdt", "version": "1", "state": "READY"} in [
        {k: m.get(k) for k in ("name", "version", "state")} for m in index]
    client.unload_model("native-linear")
    assert not client.is_model_ready("native-linear")
    client.load_model("native-linear")
    assert client.is_model_ready("native-linear", model_version="1")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("never-registered")
    assert e.value.status() == "StatusCode.NOT_FOUND", e.value


def test_grpc_limits_match_http():
    """Message size, concurrency and time limits answer RESOURCE_EXHAUSTED
    and DEADLINE_EXCEEDED, counted on /metrics with the HTTP ones."""
    home = tempfile.mkdtemp(prefix="weir-triton-limits-")
    cases = register_onnx(home, ["mlp-regressor"])
    s = Server(home, ["mlp-regressor"], "--max-body-bytes", "300000", "--max-concurrency", "1",
               "--request-timeout", "2s")
    try:
        client = grpcclient.InferenceServerClient(url=s.grpc_url)
        X = np.tile(cases["mlp-regressor"], (3, 1))  # 3000 x 10 FP32: 120 kB
        x = grpcclient.InferInput("X", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        client.infer("mlp-regressor", [x])
        big = np.tile(X, (3, 1))  # 360 kB, over the limit
        y = grpcclient.InferInput("X", list(big.shape), "FP32")
        y.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp-regressor", [y])
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED", e.value
        assert "300000" in e.value.message(), e.value

        # One request at a time: of several at once, some are refused.
        codes = []

        def call():
            c = grpcclient.InferenceServerClient(url=s.grpc_url)
            for _ in range(20):
                try:
                    c.infer("mlp-regressor", [x])
                    codes.append("OK")
                except InferenceServerException as err:
                    codes.append(err.status())
        threads = [threading.Thread(target=call) for _ in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert "OK" in codes and "StatusCode.RESOURCE_EXHAUSTED" in codes, codes
        assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes
        metrics = requests.get(f"http://{s.url}/metrics").text
        assert 'weir_serve_rejected_total{reason="busy"}' in metrics
        assert 'protocol="grpc",code="200"' in metrics
    finally:
        s.stop()


def test_grpc_deadline_is_the_clients_or_the_servers():
    home = tempfile.mkdtemp(prefix="weir-triton-deadline-")
    cases = register_onnx(home, ["forest-multiclass"])
    s = Server(home, ["forest-multiclass"], "--request-timeout", "30ms")
    try:
        client = grpcclient.InferenceServerClient(url=s.grpc_url)
        X = np.tile(cases["forest-multiclass"], (100, 1))  # 100,000 rows
        x = grpcclient.InferInput("X", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        with pytest.raises(InferenceServerException) as e:
            client.infer("forest-multiclass", [x])
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED", e.value
        assert "longer than 0.030s" in e.value.message(), e.value
    finally:
        s.stop()
