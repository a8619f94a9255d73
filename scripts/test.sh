#!/usr/bin/env bash
# Weir's whole test suite, against real services:
#   - PostgreSQL: the local server at 127.0.0.1:5432 (started if it is down);
#     each suite creates and drops its own fresh database;
#   - an S3-compatible server: moto, installed into a virtualenv on first use
#     and started on a free loopback port for the duration of the run;
#   - the official mlflow client (pinned), in the same virtualenv, driving a
#     real `weir server` on SQLite and on PostgreSQL (tests/mlflow).
#   - wrk, the HTTP load generator, for the rollout test under load;
#   - scikit-learn + skl2onnx + onnxruntime (pinned, own virtualenv): ONNX exports
#     served by `weir serve` must match onnxruntime (tests/onnx).
#   - kubernetes-validate (pinned, own virtualenv): deploy/k8s against the
#     official Kubernetes schemas;
#   - Chromium (Debian's) driven by playwright-core (pinned in tests/ui, no
#     browser download): the dashboard against a real `weir server` (tests/ui);
#   - torch (pinned, own virtualenv; PyPI's wheel, about 2 minutes and 5 GB
#     with its CUDA libraries, which the CPU-only gloo test never loads): a
#     real torch.distributed run of a distributed `run:` step;
#   - Ray (pinned, own virtualenv): a real cluster on loopback (a head and two
#     worker nodes, scripts/ray-cluster.sh) for the Ray executor's tests,
#     started after the main suite and stopped afterwards.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p weir-store).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${WEIR_CI_VENV:-$HOME/.cache/weir-ci/venv}"
MOTO_VERSION=5.2.5
MLFLOW_CLIENT="mlflow-skinny==3.17.2 pandas==3.1.1 pytest==9.2.0"
# The 2.x client too, in a venv of its own (SQLite only: the server code is shared).
VENV2="${WEIR_CI_VENV2:-$HOME/.cache/weir-ci/venv-mlflow2}"
MLFLOW2_CLIENT="mlflow-skinny==2.22.1 pandas==3.1.1 pytest==9.2.0"
# scikit-learn models exported to ONNX, checked against onnxruntime (tests/onnx).
VENV_ONNX="${WEIR_CI_VENV_ONNX:-$HOME/.cache/weir-ci/venv-onnx}"
ONNX_CLIENT="scikit-learn==1.9.1 skl2onnx==1.20.0 onnxruntime==1.32.0 requests==2.34.2 pytest==9.2.0 tritonclient[http,grpc]==2.73.0 prometheus_client==0.26.0 opentelemetry-proto==1.45.2 openlineage-python==1.54.0"
VENV_RAY="${WEIR_CI_VENV_RAY:-$HOME/.cache/weir-ci/venv-ray}"
RAY_PACKAGE="ray[default]==2.60.0"
VENV_TORCH="${WEIR_CI_VENV_TORCH:-$HOME/.cache/weir-ci/venv-torch}"
TORCH_PACKAGES="torch==2.15.0 numpy==2.4.6"
log() { printf '\033[1m[test]\033[0m %s\n' "$*" >&2; }

# --- PostgreSQL -------------------------------------------------------------
if [ "${WEIR_TEST_POSTGRES:-}" != "off" ]; then
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    if ! ls /etc/postgresql >/dev/null 2>&1; then
      log "installing PostgreSQL"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
  fi
fi

# --- S3-compatible server ---------------------------------------------------
if [ ! -x "$VENV/bin/moto_server" ]; then
  log "installing moto $MOTO_VERSION into $VENV (about 2 minutes, once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION"
fi
if ! "$VENV/bin/python" -c 'import mlflow, pandas, pytest' 2>/dev/null; then
  log "installing the mlflow client into $VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $MLFLOW_CLIENT
fi
if ! "$VENV2/bin/python" -c 'import mlflow, pandas, pytest' 2>/dev/null; then
  log "installing the mlflow 2.x client into $VENV2"
  python3 -m venv "$VENV2"
  # shellcheck disable=SC2086
  "$VENV2/bin/pip" install -q $MLFLOW2_CLIENT
fi
if ! "$VENV_ONNX/bin/python" -c 'import sklearn, skl2onnx, onnxruntime, requests, pytest, tritonclient.http, tritonclient.grpc, prometheus_client, opentelemetry.proto, openlineage.client' 2>/dev/null; then
  log "installing scikit-learn, skl2onnx and onnxruntime into $VENV_ONNX"
  python3 -m venv "$VENV_ONNX"
  # shellcheck disable=SC2086
  "$VENV_ONNX/bin/pip" install -q $ONNX_CLIENT
fi
if ! "$VENV_RAY/bin/python" -c 'import ray, ray.dashboard' 2>/dev/null; then
  log "installing $RAY_PACKAGE into $VENV_RAY"
  python3 -m venv "$VENV_RAY"
  "$VENV_RAY/bin/pip" install -q "$RAY_PACKAGE"
fi
if ! "$VENV_TORCH/bin/python" -c 'import torch.distributed, numpy' 2>/dev/null; then
  log "installing $TORCH_PACKAGES into $VENV_TORCH (about 2 minutes, once)"
  python3 -m venv "$VENV_TORCH"
  # shellcheck disable=SC2086
  "$VENV_TORCH/bin/pip" install -q $TORCH_PACKAGES
fi
export WEIR_TEST_TORCH_PYTHON="$VENV_TORCH/bin/python" WEIR_REQUIRE_TORCH=1
# wrk drives the zero-drop rollout test (tests/e2e/rollouts.rs).
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
export WEIR_REQUIRE_WRK=1
# The Kubernetes manifests, against the official schemas (deploy/k8s).
if [ $# -eq 0 ]; then
  log "validating deploy/k8s"
  scripts/validate-deploy.sh
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p target
setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
moto_pid=$!
ray_dir=""
cleanup() {
  [ -n "$ray_dir" ] && RAY="$VENV_RAY/bin/ray" scripts/ray-cluster.sh stop "$ray_dir" || true
  kill -- -"$moto_pid" 2>/dev/null || kill "$moto_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs -X PUT "http://127.0.0.1:$port/weir-test" >/dev/null
log "S3 (moto) on 127.0.0.1:$port"

export WEIR_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
export WEIR_TEST_S3_BUCKET=weir-test
export WEIR_REQUIRE_S3=1
# The outage tests make a private PostgreSQL cluster (to restart and stop)
# and mount a small tmpfs (a full disk): both need root, which CI has.
if [ "$(id -u)" = 0 ]; then
  export WEIR_REQUIRE_CHAOS=1
fi
cargo test --workspace --locked "$@"

# --- the Ray executor on a real cluster -------------------------------------
if [ $# -eq 0 ]; then
  ray_dir="$PWD/target/ray-cluster"
  rm -rf "$ray_dir"
  mkdir -p "$ray_dir"
  log "starting a Ray cluster on loopback (head + 2 workers)"
  free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  ray_address=$(RAY="$VENV_RAY/bin/ray" RAY_DASHBOARD_PORT="$(free_port)" RAY_GCS_PORT="$(free_port)" \
    scripts/ray-cluster.sh start "$ray_dir" 2)
  log "Ray executor suite against $ray_address"
  WEIR_TEST_RAY_ADDRESS="$ray_address" WEIR_TEST_RAY_DIR="$ray_dir" WEIR_REQUIRE_RAY=1 \
    RAY="$VENV_RAY/bin/ray" cargo test --locked -p weir-cli --test e2e ray:: -- --test-threads=1
  RAY="$VENV_RAY/bin/ray" scripts/ray-cluster.sh stop "$ray_dir"
  ray_dir=""
fi

# --- the mlflow client against weir server ------------------------------------
if [ $# -eq 0 ]; then
  log "mlflow client suite (tests/mlflow)"
  WEIR_BIN="$PWD/target/debug/weir" "$VENV/bin/python" -m pytest -q -p no:warnings -p no:cacheprovider tests/mlflow
  log "mlflow 2.x client suite (tests/mlflow, SQLite)"
  WEIR_TEST_POSTGRES=off WEIR_BIN="$PWD/target/debug/weir" "$VENV2/bin/python" -m pytest -q -p no:warnings -p no:cacheprovider tests/mlflow
  log "ONNX suite: scikit-learn -> skl2onnx -> weir serve, against onnxruntime; Triton's HTTP (binary tensors) and gRPC clients (tests/onnx)"
  WEIR_BIN="$PWD/target/debug/weir" "$VENV_ONNX/bin/python" -m pytest -q -p no:warnings -p no:cacheprovider tests/onnx
  log "/metrics pages through the official Prometheus parser; traces through an OTLP receiver decoding with the official protos; OpenLineage events through the official client's models (tests/telemetry)"
  WEIR_BIN="$PWD/target/debug/weir" "$VENV_ONNX/bin/python" -m pytest -q -p no:warnings -p no:cacheprovider tests/telemetry
  log "dashboard suite in Debian's Chromium (tests/ui)"
  if ! [ -x /usr/bin/chromium ]; then
    log "installing chromium"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  (cd tests/ui && npm ci --no-audit --no-fund --silent)
  WEIR_BIN="$PWD/target/debug/weir" node tests/ui/run.mjs
fi
