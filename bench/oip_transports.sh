#!/usr/bin/env bash
# One ONNX model served by `weir serve` (release build) over the three
# encodings a client can pick: JSON over HTTP, binary tensors over HTTP (what
# tritonclient.http sends by default) and gRPC (what tritonclient.grpc and
# perf_analyzer send), for a 1-row and a 1,000-row request, at concurrency
# CONCURRENCY (8), DURATION seconds (10) each, with one client
# (crates/weir-serve/examples/oip_load.rs) so that only the encoding differs.
# The model is the serving benchmark's: scikit-learn's
# GradientBoostingClassifier (100 trees) on breast_cancer, exported by skl2onnx
# with zipmap=False (the ONNX venv of scripts/test.sh makes it).
#   DURATION=10 CONCURRENCY=8 ROWS="1 1000" THREADS=N (the server's --threads)
# Then the same client against Triton Inference Server as PyPI ships it
# (nvidia-pytriton 0.7.0: Triton's HTTP and gRPC front ends and its Python
# backend, the model run by onnxruntime there; bench/triton/serve_onnx.py),
# installed into $HOME/.cache/weir-ci/venv-triton once. TRITON=0 skips it.
# Prints one JSON line per (server, rows, mode): requests/s, p50/p90/p99 (ms),
# errors.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
CONCURRENCY="${CONCURRENCY:-8}"
ROWS="${ROWS:-1 1000}"
VENV_ONNX="${WEIR_CI_VENV_ONNX:-$HOME/.cache/weir-ci/venv-onnx}"
[ -x "$VENV_ONNX/bin/python" ] || { echo "run scripts/test.sh once (it makes $VENV_ONNX)" >&2; exit 1; }
cargo build --release --quiet -p weir-cli
cargo build --release --quiet -p weir-serve --example oip_load

WORK="$(mktemp -d /tmp/weir-oip-bench.XXXXXX)"
export WEIR_HOME="$WORK/home" WEIR_LOG=warn
"$VENV_ONNX/bin/python" - "$WORK/model.onnx" <<'PY'
import sys
import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
X, y = load_breast_cancer(return_X_y=True)
model = GradientBoostingClassifier(n_estimators=100, random_state=0).fit(X, y)
onx = to_onnx(model, X[:1].astype(np.float32), options={"zipmap": False})
open(sys.argv[1], "wb").write(onx.SerializeToString())
PY
target/release/weir models register cancer "$WORK/model.onnx" >&2
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP="127.0.0.1:$(free_port)"
GRPC="127.0.0.1:$(free_port)"
setsid target/release/weir serve cancer --addr "$HTTP" --grpc-addr "$GRPC" \
  ${THREADS:+--threads "$THREADS"} >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
trap 'kill -- -"$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT
until curl -fs "http://$HTTP/v2/health/ready" >/dev/null 2>&1; do sleep 0.01; done

measure() { # SERVER
  for R in $ROWS; do
    for MODE in json binary grpc; do
      # A short warm-up, then the measured run.
      target/release/examples/oip_load --http "$HTTP" --grpc "$GRPC" --model cancer --width 30 \
        --rows "$R" --mode "$MODE" --concurrency "$CONCURRENCY" --seconds 1 >/dev/null
      echo "{\"server\": \"$1\", \"load\": $(target/release/examples/oip_load --http "$HTTP" --grpc "$GRPC" \
        --model cancer --width 30 --rows "$R" --mode "$MODE" --concurrency "$CONCURRENCY" --seconds "$DURATION")}"
    done
  done
  echo "{\"server\": \"$1\", \"rss_kb\": $(ps -o rss= -g "$SERVER_PID" | awk '{s += $1} END {print s}')}"
}
measure weir
kill -- -"$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
[ "${TRITON:-1}" = 1 ] || exit 0

VENV_TRITON="${WEIR_CI_VENV_TRITON:-$HOME/.cache/weir-ci/venv-triton}"
if ! "$VENV_TRITON/bin/python" -c 'import pytriton, onnxruntime, weir_rlock_fix' 2>/dev/null; then
  echo "installing nvidia-pytriton 0.7.0 into $VENV_TRITON" >&2
  python3 -m venv "$VENV_TRITON"
  "$VENV_TRITON/bin/pip" install -q nvidia-pytriton==0.7.0 onnxruntime==1.32.0
  site="$("$VENV_TRITON/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp bench/triton/rlock_fix.py "$site/weir_rlock_fix.py"
  echo "import weir_rlock_fix" >"$site/weir_rlock_fix.pth"
fi
HTTP="127.0.0.1:$(free_port)"
GRPC="127.0.0.1:$(free_port)"
setsid "$VENV_TRITON/bin/python" bench/triton/serve_onnx.py "$WORK/model.onnx" "${HTTP#*:}" "${GRPC#*:}" \
  >"$WORK/triton.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 600); do curl -fs "http://$HTTP/v2/models/cancer/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://$HTTP/v2/models/cancer/ready" >/dev/null || { tail -20 "$WORK/triton.log" >&2; exit 1; }
measure triton
