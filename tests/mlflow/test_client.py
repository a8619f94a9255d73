"""The official mlflow client, unchanged, against `weir server`."""
import math
import multiprocessing
import os
import tempfile
import time

import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException


def test_experiments_lifecycle(tracking, server):
    client = MlflowClient()
    eid = client.create_experiment("lifecycle-" + str(time.time_ns()), tags={"team": "risk"})
    e = client.get_experiment(eid)
    assert e.tags["team"] == "risk" and e.lifecycle_stage == "active"
    assert client.get_experiment_by_name(e.name).experiment_id == eid
    client.rename_experiment(eid, e.name + "-renamed")
    client.set_experiment_tag(eid, "stage", "dev")
    assert client.get_experiment(eid).tags["stage"] == "dev"
    client.delete_experiment(eid)
    assert client.get_experiment(eid).lifecycle_stage == "deleted"
    active = [x.experiment_id for x in client.search_experiments()]
    assert eid not in active and "0" in active
    client.restore_experiment(eid)
    assert client.get_experiment(eid).lifecycle_stage == "active"
    found = client.search_experiments(filter_string=f"name = '{e.name}-renamed'")
    assert [x.experiment_id for x in found] == [eid]
    with pytest.raises(MlflowException) as err:
        client.create_experiment(e.name + "-renamed")
    assert err.value.error_code == "RESOURCE_ALREADY_EXISTS"


def test_runs_params_metrics_tags(tracking):
    client = MlflowClient()
    with tracking.start_run(run_name="parent") as parent:
        tracking.log_param("lr", 0.1)
        tracking.log_params({"depth": 6, "model": "gbdt"})
        tracking.log_metric("loss", 0.9, step=0, timestamp=1000)
        tracking.log_metric("loss", 0.5, step=1, timestamp=2000)
        tracking.log_metrics({"loss": 0.3, "auc": 0.81}, step=2)
        tracking.set_tag("team", "risk")
        tracking.set_tags({"a": "1", "b": "2"})
        with tracking.start_run(run_name="child", nested=True) as child:
            tracking.log_metric("x", 1.0)
    run = client.get_run(parent.info.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time
    assert run.info.run_name == "parent"
    assert run.data.params == {"lr": "0.1", "depth": "6", "model": "gbdt"}
    assert run.data.metrics == {"loss": 0.3, "auc": 0.81}
    assert run.data.tags["team"] == "risk" and run.data.tags["a"] == "1"
    kid = client.get_run(child.info.run_id)
    assert kid.data.tags["mlflow.parentRunId"] == parent.info.run_id
    history = client.get_metric_history(parent.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert history[0].timestamp == 1000 and history[1].timestamp == 2000
    # Params are immutable: the same value again is fine, another is an error.
    client.log_param(parent.info.run_id, "lr", "0.1")
    with pytest.raises(MlflowException) as err:
        client.log_param(parent.info.run_id, "lr", "0.2")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    client.delete_tag(parent.info.run_id, "b")
    assert "b" not in client.get_run(parent.info.run_id).data.tags


def test_a_failing_run_is_recorded_as_failed(tracking):
    with pytest.raises(RuntimeError):
        with tracking.start_run() as run:
            tracking.log_metric("before", 1.0)
            raise RuntimeError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_latest_metric_is_the_largest_step(tracking):
    with tracking.start_run() as run:
        tracking.log_metric("m", 5.0, step=10)
        tracking.log_metric("m", 7.0, step=3)
    assert MlflowClient().get_run(run.info.run_id).data.metrics["m"] == 5.0


def test_artifacts_round_trip(tracking):
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "report.txt"), "w") as f:
        f.write("all good\n")
    os.makedirs(os.path.join(d, "plots"))
    with open(os.path.join(d, "plots", "roc.csv"), "w") as f:
        f.write("fpr,tpr\n0,0\n1,1\n")
    with tracking.start_run() as run:
        tracking.log_artifact(os.path.join(d, "report.txt"))
        tracking.log_artifacts(d, artifact_path="bundle")
    client = MlflowClient()
    top = sorted((f.path, f.is_dir) for f in client.list_artifacts(run.info.run_id))
    assert top == [("bundle", True), ("report.txt", False)]
    nested = sorted(f.path for f in client.list_artifacts(run.info.run_id, "bundle"))
    assert nested == ["bundle/plots", "bundle/report.txt"]
    out = tracking.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="bundle")
    assert open(os.path.join(out, "plots", "roc.csv")).read() == "fpr,tpr\n0,0\n1,1\n"
    out = tracking.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.txt")
    assert open(out).read() == "all good\n"


MLFLOW_2 = __import__("mlflow").__version__.startswith("2.")


def log_pyfunc(name, model):
    """log_model as each client generation spells it (3.x: logged models)."""
    import mlflow.pyfunc

    if MLFLOW_2:
        return mlflow.pyfunc.log_model(artifact_path=name, python_model=model)
    return mlflow.pyfunc.log_model(name=name, python_model=model)


def test_log_and_load_a_pyfunc_model(tracking):
    import mlflow.pyfunc

    class Add(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [x + 1 for x in model_input]

    with tracking.start_run() as run:
        info = log_pyfunc("adder", Add())
    if not MLFLOW_2:
        assert info.model_id.startswith("m-")
        model = MlflowClient().get_logged_model(info.model_id)
        assert model.source_run_id == run.info.run_id and str(model.status).endswith("READY")
    assert mlflow.pyfunc.load_model(info.model_uri).predict([1, 2]) == [2, 3]
    if MLFLOW_2:
        import json

        history = json.loads(MlflowClient().get_run(run.info.run_id).data.tags["mlflow.log-model.history"])
        assert [h["artifact_path"] for h in history] == ["adder"]
    assert mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/adder").predict([5]) == [6]


def test_search_runs_filters_and_orders(tracking):
    client = MlflowClient()
    eid = tracking.experiment_id
    for i in range(12):
        with tracking.start_run(run_name=f"r{i}"):
            tracking.log_param("model", "gbdt" if i % 2 else "linear")
            tracking.log_metric("auc", i / 20)
            tracking.set_tag("team", "risk" if i < 6 else "fraud")
    runs = client.search_runs([eid], "metrics.auc > 0.3 AND params.model = 'gbdt'", order_by=["metrics.auc DESC"])
    assert [r.data.metrics["auc"] for r in runs] == [0.55, 0.45, 0.35]
    runs = client.search_runs([eid], "tags.team LIKE 'fr%' AND attributes.status = 'FINISHED'",
                              order_by=["params.model ASC", "metrics.auc ASC"])
    assert [r.info.run_name for r in runs] == ["r7", "r9", "r11", "r6", "r8", "r10"]
    page = client.search_runs([eid], "", order_by=["metrics.auc ASC"], max_results=5)
    assert [r.info.run_name for r in page] == ["r0", "r1", "r2", "r3", "r4"] and page.token
    page2 = client.search_runs([eid], "", order_by=["metrics.auc ASC"], max_results=5, page_token=page.token)
    assert [r.info.run_name for r in page2] == ["r5", "r6", "r7", "r8", "r9"]
    df = tracking.search_runs([eid], filter_string="metrics.auc >= 0.5")
    assert sorted(df["tags.mlflow.runName"]) == ["r10", "r11"]
    with pytest.raises(MlflowException) as err:
        client.search_runs([eid], "metrics.auc >> 0.5")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "position 13" in err.value.message


def test_delete_and_restore_a_run(tracking):
    client = MlflowClient()
    with tracking.start_run() as run:
        tracking.log_metric("m", 1)
    eid = run.info.experiment_id
    client.delete_run(run.info.run_id)
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    assert run.info.run_id not in [r.info.run_id for r in client.search_runs([eid])]
    from mlflow.entities import ViewType

    deleted = client.search_runs([eid], run_view_type=ViewType.DELETED_ONLY)
    assert run.info.run_id in [r.info.run_id for r in deleted]
    client.restore_run(run.info.run_id)
    assert run.info.run_id in [r.info.run_id for r in client.search_runs([eid])]


# ---- bad input, straight over HTTP ------------------------------------------

def api(server, path):
    return f"{server.url}/api/2.0/mlflow/{path}"


def new_run(server):
    r = requests.post(api(server, "runs/create"), json={"experiment_id": "0"})
    assert r.status_code == 200, r.text
    return r.json()["run"]["info"]["run_id"]


def test_malformed_json_and_unknown_ids(server):
    r = requests.post(api(server, "runs/create"), data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error_code"] == "BAD_REQUEST"
    r = requests.get(api(server, "runs/get"), params={"run_id": "0" * 32})
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    r = requests.get(api(server, "experiments/get"), params={"experiment_id": "987654"})
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    r = requests.post(api(server, "runs/log-metric"), json={"run_id": "f" * 32, "key": "m", "value": 1, "timestamp": 0})
    assert r.status_code == 404


def test_a_tag_given_twice_keeps_the_last_value(server):
    r = requests.post(api(server, "runs/create"), json={
        "experiment_id": "0", "tags": [{"key": "k", "value": "a"}, {"key": "k", "value": "b"}]})
    assert r.status_code == 200, r.text
    tags = {t["key"]: t["value"] for t in r.json()["run"]["data"]["tags"]}
    assert tags["k"] == "b"
    run = r.json()["run"]["info"]["run_id"]
    r = requests.post(api(server, "runs/log-batch"), json={
        "run_id": run, "tags": [{"key": "k", "value": "c"}, {"key": "k", "value": "d"}]})
    assert r.status_code == 200, r.text
    tags = {t["key"]: t["value"] for t in requests.get(api(server, "runs/get"), params={"run_id": run}).json()["run"]["data"]["tags"]}
    assert tags["k"] == "d"


def test_nan_and_infinities(server):
    run = new_run(server)
    for value in ["NaN", "Infinity", "-Infinity"]:
        r = requests.post(api(server, "runs/log-metric"),
                          json={"run_id": run, "key": value.lower(), "value": value, "timestamp": 0})
        assert r.status_code == 200, r.text
    metrics = {m["key"]: m["value"] for m in requests.get(api(server, "runs/get"), params={"run_id": run}).json()["run"]["data"]["metrics"]}
    assert metrics["nan"] == "NaN"
    assert metrics["infinity"] == 1.7976931348623157e308 and metrics["-infinity"] == -1.7976931348623157e308
    client = MlflowClient(server.url)
    assert math.isnan(client.get_run(run).data.metrics["nan"])


def test_batch_limits(server):
    run = new_run(server)
    metrics = [{"key": "m", "value": 1, "timestamp": 0, "step": i} for i in range(1001)]
    r = requests.post(api(server, "runs/log-batch"), json={"run_id": run, "metrics": metrics})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "at most 1000 metrics" in r.json()["message"]
    params = [{"key": f"p{i}", "value": "v"} for i in range(101)]
    r = requests.post(api(server, "runs/log-batch"), json={"run_id": run, "params": params})
    assert r.status_code == 400 and "at most 100 params" in r.json()["message"]
    r = requests.post(api(server, "runs/log-parameter"), json={"run_id": run, "key": "big", "value": "x" * 6001})
    assert r.status_code == 400 and "exceeded length limit of 6000" in r.json()["message"]
    # Nothing of a rejected batch was written.
    data = requests.get(api(server, "runs/get"), params={"run_id": run}).json()["run"]["data"]
    assert data.get("metrics", []) == [] and data.get("params", []) == []


def test_artifact_paths_cannot_escape(server):
    import http.client

    # Sent byte for byte: HTTP clients would resolve the dots before sending.
    for bad in ["0/run/artifacts/../../../../etc/passwd", "0/run/artifacts/%2e%2e/x", "0/run//x"]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        conn.request("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{bad}", body=b"x")
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 400 and b"INVALID_PARAMETER_VALUE" in body, (bad, r.status, body)
    r = requests.get(f"{server.url}/api/2.0/mlflow-artifacts/artifacts", params={"path": "../x"})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = requests.get(f"{server.url}/api/2.0/mlflow-artifacts/artifacts", params={"path": "/etc"})
    assert r.status_code == 400


def _log_from_process(url, n):
    client = MlflowClient(url)
    run = client.create_run("0")
    for i in range(n):
        client.log_batch(run.info.run_id, metrics=[Metric("m", float(i), 0, i)])
    return run.info.run_id


def test_eight_processes_logging_at_once(server):
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        runs = pool.starmap(_log_from_process, [(server.url, 40)] * 8)
    client = MlflowClient(server.url)
    for run in runs:
        assert len(client.get_metric_history(run, "m")) == 40


def test_register_a_model_and_load_it_by_alias(tracking):
    import mlflow.pyfunc

    class Double(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [2 * x for x in model_input]

    name = "doubler-" + str(time.time_ns())
    with tracking.start_run() as run:
        info = log_pyfunc("model", Double())
    mv = tracking.register_model(info.model_uri, name)
    assert mv.version == "1" and mv.run_id == run.info.run_id
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", mv.version)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert mlflow.pyfunc.load_model(f"models:/{name}@champion").predict([4]) == [8]
    assert mlflow.pyfunc.load_model(f"models:/{name}/1").predict([1]) == [2]
    # A second version from a runs:/ URI; the alias still points at version 1.
    mv2 = tracking.register_model(f"runs:/{run.info.run_id}/model", name)
    assert mv2.version == "2"
    assert client.get_registered_model(name).aliases == {"champion": "1"}
    client.set_model_version_tag(name, "2", "validated", "yes")
    client.update_model_version(name, "2", description="second")
    got = client.get_model_version(name, "2")
    assert got.tags == {"validated": "yes"} and got.description == "second"
    client.transition_model_version_stage(name, "2", "Staging")
    assert [v.version for v in client.get_latest_versions(name, stages=["Staging"])] == ["2"]
    assert sorted(v.version for v in client.search_model_versions(f"name = '{name}'")) == ["1", "2"]
    assert [m.name for m in client.search_registered_models(f"name = '{name}'")] == [name]
    client.set_registered_model_tag(name, "owner", "risk")
    client.update_registered_model(name, description="doubles")
    rm = client.get_registered_model(name)
    assert rm.tags == {"owner": "risk"} and rm.description == "doubles"
    client.rename_registered_model(name, name + "-v2")
    assert client.get_model_version_by_alias(name + "-v2", "champion").version == "1"
    client.delete_registered_model_alias(name + "-v2", "champion")
    client.delete_model_version(name + "-v2", "2")
    assert [v.version for v in client.search_model_versions(f"name = '{name}-v2'")] == ["1"]
    client.delete_registered_model(name + "-v2")
    with pytest.raises(MlflowException) as err:
        client.get_registered_model(name + "-v2")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_pipeline_runs_are_mlflow_runs(server):
    import json
    import subprocess
    import sys

    from conftest import WEIR

    work = tempfile.mkdtemp(prefix="weir-pipeline-")
    name = "tracked-" + str(time.time_ns())
    with open(os.path.join(work, "train.py"), "w") as f:
        f.write(
            "import json, os, mlflow\n"
            "mlflow.log_metric('inner_loss', 0.25, step=3)\n"
            "open(os.environ['WEIR_OUTPUTS_DIR'] + '/model', 'w').write('m')\n"
            "with open(os.environ['WEIR_METRICS_FILE'], 'a') as m:\n"
            "    m.write(json.dumps({'key': 'auc', 'value': 0.8}) + '\\n')\n"
        )
    with open(os.path.join(work, "pipeline.yaml"), "w") as f:
        f.write(
            f"version: 1\nname: {name}\nparams: {{ lr: 0.1 }}\nsteps:\n"
            f"  train:\n    run: {sys.executable} train.py\n    outputs: [model]\n    code: [train.py]\n"
        )
    env = dict(os.environ, MLFLOW_TRACKING_URI=server.url, **server.env)
    env.pop("MLFLOW_RUN_ID", None)
    out = subprocess.run([WEIR, "run", "pipeline.yaml", "--json"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name(name)
    pipeline = client.get_run(run_id)
    assert pipeline.info.status == "FINISHED" and pipeline.info.experiment_id == exp.experiment_id
    assert pipeline.data.params == {"lr": "0.1"}
    assert pipeline.data.tags["weir.pipeline"] == name
    assert pipeline.data.metrics["train.auc"] == 0.8
    [step] = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert step.data.tags["weir.step"] == "train" and step.data.tags["weir.cache_hit"] == "false"
    assert step.info.status == "FINISHED"
    # Logged by mlflow inside the step, and through the metrics file; and
    # what the step used, as system metrics, with the run's cost so far.
    logged = {k: v for k, v in step.data.metrics.items() if not k.startswith("system/")}
    assert logged == {"inner_loss": 0.25, "auc": 0.8}
    system = step.data.metrics
    assert system["system/cpu_seconds"] > 0 and system["system/wall_seconds"] > 0
    assert system["system/max_rss_megabytes"] > 1 and system["system/gpus"] == 0
    assert system["system/cost_dollars"] > 0
    assert pipeline.data.metrics["system/cost_dollars"] == system["system/cost_dollars"]
    history = client.get_metric_history(run_id, "system/cost_dollars")
    assert [m.step for m in history] == [1]
    # A second run reuses the step from the cache; the MLflow view says so.
    out = subprocess.run([WEIR, "run", "pipeline.yaml", "--json"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    second = json.loads(out.stdout)["run_id"]
    [cached] = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{second}'")
    assert cached.data.tags["weir.cache_hit"] == "true" and cached.data.metrics == {"auc": 0.8}
    found = client.search_runs([exp.experiment_id], "metrics.`train.auc` > 0.5 AND tags.weir.kind = 'pipeline'")
    assert sorted(r.info.run_id for r in found) == sorted([run_id, second])


def test_the_cli_reads_the_same_runs(tracking, server):
    import json
    import subprocess

    from conftest import WEIR

    for auc in (0.6, 0.75, 0.9):
        with tracking.start_run():
            tracking.log_metric("auc", auc)
            tracking.log_param("model", "gbdt")
    name = tracking.get_experiment(tracking.experiment_id).name
    env = dict(os.environ, **server.env)
    out = subprocess.run([WEIR, "runs", "search", "metrics.auc > 0.7", "-e", name,
                          "--order-by", "metrics.auc DESC", "--json"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [r["metrics"]["auc"] for r in json.loads(out.stdout)] == [0.9, 0.75]
    out = subprocess.run([WEIR, "runs", "search", "metrics.auc > 0.7", "-e", name], env=env,
                         capture_output=True, text=True)
    assert "auc" in out.stdout.splitlines()[0] and len(out.stdout.splitlines()) == 3
    out = subprocess.run([WEIR, "runs", "search", "metrics.auc >> 1"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "position 13" in out.stderr
    out = subprocess.run([WEIR, "experiments", "list", "--json"], env=env, capture_output=True, text=True)
    assert name in [e["name"] for e in json.loads(out.stdout)]
