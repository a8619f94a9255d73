"""The mlflow client against `weir server --tls-cert/--tls-key`: it logs
runs and artifacts over HTTPS when it trusts the CA
(MLFLOW_TRACKING_SERVER_CERT_PATH), with a token, and refuses the server
when it does not."""
import os
import subprocess

import mlflow
import pytest
from conftest import ROOT, Server
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from test_tokens import make_token


@pytest.fixture()
def https(tmp_path, monkeypatch):
    subprocess.run([os.path.join(ROOT, "scripts", "test-certs.sh"), str(tmp_path)], check=True)
    s = Server("sqlite", certs=str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tmp_path / "ca.pem"))
    # A refused certificate is not worth minutes of retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # The 2.x client resolves mlflow-artifacts: URIs against the global
    # tracking URI, not the client's.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.url)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(s.url)
    yield s
    mlflow.set_tracking_uri(previous)
    s.stop()


def test_the_mlflow_client_logs_over_https(https, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", make_token(https, "py-tls", "editor"))
    client = MlflowClient(https.url)
    exp = client.create_experiment("over-https")
    run = client.create_run(exp).info.run_id
    client.log_metric(run, "auc", 0.81)
    client.log_text(run, "weights, roughly", "notes/model.txt")
    client.set_terminated(run)
    assert client.get_run(run).data.metrics == {"auc": 0.81}
    down = tmp_path / "down"
    down.mkdir()  # the 2.x client does not make it
    got = client.download_artifacts(run, "notes/model.txt", str(down))
    assert open(got).read() == "weights, roughly"

    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    with pytest.raises(MlflowException, match="(?i)certificate verify failed"):
        MlflowClient(https.url).get_experiment(exp)
