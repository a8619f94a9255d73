"""The mlflow client against a server whose store holds API tokens: it is
let in with MLFLOW_TRACKING_TOKEN and a role that covers what it does, and
turned away without one (its own error, naming the reason)."""
import json
import os
import subprocess
import time

import pytest
import requests
from conftest import WEIR, Server
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException


def make_token(server, name, role):
    out = subprocess.run([WEIR, "tokens", "create", "--name", name, "--role", role, "--json"],
                         env=dict(os.environ, **server.env), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["token"]


@pytest.fixture()
def locked(monkeypatch):
    s = Server("sqlite")
    tokens = {role: make_token(s, f"py-{role}", role) for role in ("viewer", "editor", "admin")}
    deadline = time.time() + 15
    while requests.get(s.url + "/api/2.0/mlflow/experiments/search?max_results=1").status_code != 401:
        assert time.time() < deadline, "the server never asked for a token"
        time.sleep(0.2)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    yield s, tokens
    s.stop()


def test_the_mlflow_client_logs_with_a_token_and_is_refused_without(locked, monkeypatch):
    server, tokens = locked
    client = MlflowClient(server.url)
    with pytest.raises(MlflowException, match="needs an API token"):
        client.search_experiments()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", tokens["editor"])
    exp = client.create_experiment("with-a-token")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "auc", 0.8)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"auc": 0.8}
    # An editor logs; changing the registry takes an admin.
    with pytest.raises(MlflowException, match="needs admin"):
        client.create_registered_model("needs-admin")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", tokens["admin"])
    client.create_registered_model("needs-admin")
    # A viewer reads and cannot write.
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", tokens["viewer"])
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    with pytest.raises(MlflowException, match="viewer token"):
        client.log_metric(run.info.run_id, "auc", 0.9)
