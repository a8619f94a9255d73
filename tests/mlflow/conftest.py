"""Starts a real `weir server` for the MLflow client tests: one per backend
(SQLite in a temporary WEIR_HOME; PostgreSQL in a fresh database), on a free
loopback port, stopped when the session ends."""
import os
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIR = os.environ.get("WEIR_BIN", os.path.join(ROOT, "target", "debug", "weir"))
POSTGRES = os.environ.get("WEIR_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backends():
    out = ["sqlite"]
    if POSTGRES != "off":
        out.append("postgres")
    return out


class Server:
    def __init__(self, backend, certs=None):
        """certs: a directory `scripts/test-certs.sh` filled; then HTTPS."""
        self.home = tempfile.mkdtemp(prefix="weir-mlflow-")
        self.port = free_port()
        self.url = f"{'https' if certs else 'http'}://127.0.0.1:{self.port}"
        tls = ["--tls-cert", os.path.join(certs, "cert.pem"), "--tls-key", os.path.join(certs, "key.pem")] if certs else []
        verify = os.path.join(certs, "ca.pem") if certs else True
        env = dict(os.environ, WEIR_HOME=self.home, WEIR_LOG="warn")
        env.pop("MLFLOW_TRACKING_URI", None)
        self.database = None
        if backend == "postgres":
            self.database = "weir_mlflow_" + uuid.uuid4().hex[:12]
            base = POSTGRES.rsplit("/", 1)[0]
            subprocess.run(["psql", POSTGRES, "-qc", f"CREATE DATABASE {self.database}"], check=True)
            env["WEIR_DB"] = f"{base}/{self.database}"
            self.admin = POSTGRES
        # What a `weir` command needs to work on the same stores.
        self.env = {k: env[k] for k in ("WEIR_HOME", "WEIR_DB") if k in env}
        self.proc = subprocess.Popen(
            [WEIR, "server", "--addr", f"127.0.0.1:{self.port}", *tls],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.home, "server.log"), "w"),
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=1, verify=verify).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("weir server did not start: " + open(os.path.join(self.home, "server.log")).read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.database:
            subprocess.run(["psql", self.admin, "-qc", f"DROP DATABASE IF EXISTS {self.database}"], check=False)


@pytest.fixture(scope="session", params=backends())
def server(request):
    s = Server(request.param)
    yield s
    s.stop()


@pytest.fixture()
def tracking(server, monkeypatch):
    """The mlflow client pointed at the server, with a fresh experiment."""
    import mlflow

    mlflow.set_tracking_uri(server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    name = "exp-" + uuid.uuid4().hex[:8]
    mlflow.experiment_id = mlflow.set_experiment(name).experiment_id
    yield mlflow
    while mlflow.active_run():
        mlflow.end_run()
