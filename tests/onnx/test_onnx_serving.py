"""scikit-learn models exported with skl2onnx, registered with `weir models
register`, served by `weir serve`: Weir's answers must match onnxruntime's
within 1e-5 (labels exactly), over OIP v2 and MLflow's /invocations. Then
Triton's own Python client (tritonclient[http]) against the same server:
metadata, inference, and the statistics extension (get_inference_statistics,
which perf_analyzer and Triton dashboards read)."""
import json
import os
import socket
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as httpclient
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier,
                              RandomForestRegressor)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tritonclient.utils import InferenceServerException

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIR = os.environ.get("WEIR_BIN", os.path.join(ROOT, "target", "debug", "weir"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def models():
    X, y = load_breast_cancer(return_X_y=True)
    Xd, yd = load_diabetes(return_X_y=True)
    Xi, yi = load_iris(return_X_y=True)
    return {
        # The serving benchmark's model (../shared/peers/mlflow_serving.sh).
        "gbdt": (GradientBoostingClassifier(random_state=0).fit(X, y), X),
        # Tree ensembles run natively; the rest (and trees behind other
        # operators) through tract.
        "gbdt-regressor": (GradientBoostingRegressor(random_state=0).fit(Xd, yd), Xd),
        "forest-regressor": (RandomForestRegressor(n_estimators=20, max_depth=8, random_state=0).fit(Xd, yd), Xd),
        "gbdt-multiclass": (GradientBoostingClassifier(n_estimators=30, random_state=0).fit(Xi, yi), Xi),
        "forest-multiclass": (RandomForestClassifier(n_estimators=20, random_state=0).fit(Xi, yi), Xi),
        # Linear models run natively too (tract has no LinearClassifier/Regressor).
        "logistic": (LogisticRegression(max_iter=5000).fit(X, y), X),
        "logistic-multiclass": (LogisticRegression(max_iter=5000).fit(Xi, yi), Xi),
        "linear-regression": (LinearRegression().fit(Xd, yd), Xd),
        "scaled-gbdt": (make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=20, random_state=0)).fit(X, y), X),
        "forest": (RandomForestClassifier(n_estimators=30, max_depth=6, random_state=0).fit(X, y), X),
        "mlp": (make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0)).fit(X, y), X),
        "mlp-regressor": (make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(16,), max_iter=800, random_state=0)).fit(Xd, yd), Xd),
    }


@pytest.fixture(scope="module")
def served():
    home = tempfile.mkdtemp(prefix="weir-onnx-")
    env = dict(os.environ, WEIR_HOME=home, WEIR_LOG="warn")
    cases = {}
    for name, (model, X) in models().items():
        onx = to_onnx(model, X[:1].astype(np.float32), options={"zipmap": False} if hasattr(model, "predict_proba") else None)
        path = os.path.join(home, f"{name}.onnx")
        with open(path, "wb") as f:
            f.write(onx.SerializeToString())
        out = subprocess.run([WEIR, "models", "register", name, path, "--json"], env=env,
                             capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["format"] == "onnx"
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rows = X[np.random.default_rng(0).integers(0, len(X), 200)].astype(np.float32)
        expected = session.run(None, {session.get_inputs()[0].name: rows})
        cases[name] = (rows, [o.name for o in session.get_outputs()], expected)
    port = free_port()
    log = open(os.path.join(home, "serve.log"), "w")
    proc = subprocess.Popen([WEIR, "serve", *cases, "--addr", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    else:
        raise RuntimeError(open(os.path.join(home, "serve.log")).read())
    yield url, cases
    proc.terminate()
    proc.wait(timeout=10)


def assert_matches(name, got, want):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, name
    if want.dtype.kind in "iu":
        assert (got == want).all(), name
    else:
        # 1e-5, relative above 1: float32 itself cannot hold a value like 250 to 1e-5.
        want64 = want.astype(np.float64)
        worst = float(np.max(np.abs(got.astype(np.float64) - want64) / np.maximum(1.0, np.abs(want64))))
        assert worst <= 1e-5, f"{name}: largest difference {worst}"


@pytest.mark.parametrize("name", ["gbdt", "forest", "mlp", "mlp-regressor", "gbdt-regressor", "forest-regressor",
                                  "gbdt-multiclass", "forest-multiclass", "scaled-gbdt", "logistic",
                                  "logistic-multiclass", "linear-regression"])
def test_oip_batch_matches_onnxruntime(served, name):
    url, cases = served
    rows, outputs, expected = cases[name]
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    r = requests.post(f"{url}/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    got = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}
    for out, want in zip(outputs, expected):
        assert_matches(f"{name}.{out}", got[out], want)


@pytest.mark.parametrize("name", ["gbdt", "mlp-regressor"])
def test_invocations_single_rows_match_onnxruntime(served, name):
    url, cases = served
    rows, outputs, expected = cases[name]
    columns = [f"f{i}" for i in range(rows.shape[1])]
    s = requests.Session()
    for i in range(50):
        r = s.post(f"{url}/invocations" if name == "gbdt" else f"{url}/v2/models/{name}/infer",
                   json={"dataframe_split": {"columns": columns, "data": [rows[i].tolist()]}} if name == "gbdt" else
                   {"inputs": [{"name": "X", "datatype": "FP64", "shape": [1, rows.shape[1]], "data": rows[i].tolist()}]})
        assert r.status_code == 200, r.text
        if name == "gbdt":
            p = r.json()["predictions"][0]
            assert p["label"] == expected[0][i]
            assert_matches("gbdt.probabilities", p["probabilities"], expected[1][i])
        else:
            assert_matches(name, np.asarray(r.json()["outputs"][0]["data"]).reshape(1, -1), expected[0][i:i + 1])

@pytest.fixture(scope="module")
def client(served):
    url, _ = served
    return httpclient.InferenceServerClient(url=url.removeprefix("http://"))


def infer(client, name, rows):
    x = httpclient.InferInput("X", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)  # binary tensors, the client's default
    outputs = [httpclient.InferRequestedOutput("probabilities")]
    return client.infer(name, [x], outputs=outputs)


def stat(s, phase):
    return s["inference_stats"][phase]


def test_statistics_count_every_phase_of_every_request(client, served):
    _, cases = served
    rows = cases["forest"][0]
    assert "statistics" in client.get_server_metadata()["extensions"]
    before = client.get_inference_statistics(model_name="forest")["model_stats"]
    assert [s["name"] for s in before] == ["forest"]
    base = before[0]
    for n in (1, 5, 20):
        result = infer(client, "forest", rows[:n])
        assert result.as_numpy("probabilities").shape == (n, 2)
    after = client.get_inference_statistics(model_name="forest", model_version="1")["model_stats"][0]
    assert after["version"] == "1"
    assert after["inference_count"] - base["inference_count"] == 26
    assert after["execution_count"] - base["execution_count"] == 3
    assert after["last_inference"] >= base["last_inference"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert stat(after, phase)["count"] - stat(base, phase)["count"] == 3, phase
        assert stat(after, phase)["ns"] >= stat(base, phase)["ns"], phase
    assert stat(after, "compute_infer")["ns"] > stat(base, "compute_infer")["ns"]
    # Each request's phases fit inside its whole time.
    parts = sum(stat(after, p)["ns"] - stat(base, p)["ns"]
                for p in ("compute_input", "queue", "compute_infer", "compute_output"))
    assert parts <= stat(after, "success")["ns"] - stat(base, "success")["ns"]
    sizes = {b["batch_size"] for b in after["batch_stats"]}
    assert {1, 5, 20} <= sizes

    # A request the model refuses is a failure of that version.
    bad = httpclient.InferInput("X", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("forest", [bad])
    failed = client.get_inference_statistics(model_name="forest")["model_stats"][0]
    assert stat(failed, "fail")["count"] == stat(after, "fail")["count"] + 1
    assert stat(failed, "success")["count"] == stat(after, "success")["count"]

    # Every model at once; an unknown one is an error with the reason.
    names = {s["name"] for s in client.get_inference_statistics()["model_stats"]}
    assert {"forest", "gbdt", "mlp"} <= names
    with pytest.raises(InferenceServerException, match="no-such-model"):
        client.get_inference_statistics(model_name="no-such-model")
    with pytest.raises(InferenceServerException):
        client.get_inference_statistics(model_name="forest", model_version="9")
