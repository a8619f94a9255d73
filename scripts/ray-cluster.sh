#!/usr/bin/env bash
# A real Ray cluster on loopback, for the Ray executor's tests and benches:
# a head node that runs no work (0 CPUs) and worker nodes that do, each
# started in a session of its own so that one node can be killed
# (a lost node) and the whole cluster stopped by PID, never `ray stop`
# (which would end every Ray process on the machine).
#
#   scripts/ray-cluster.sh start DIR [WORKERS]   # prints the dashboard address
#   scripts/ray-cluster.sh add-node DIR IP [RESOURCES_JSON]
#   scripts/ray-cluster.sh kill-node DIR IP      # SIGKILL one node's processes
#   scripts/ray-cluster.sh stop DIR
#
# The head listens on 127.0.0.B (B = RAY_IP_BASE, default 2), worker i on
# 127.0.0.(B+i) with 1 CPU; the first worker offers the custom resource
# `spot: 1`. RAY_DASHBOARD_PORT (8265) and RAY_GCS_PORT (6380) pick the
# head's ports. RAY is the `ray` command (default: the CI venv's).
# Ray keeps 127.0.0.2 and above as they are (127.0.0.1 it would replace by
# the machine's address), which is why the nodes do not use it.
set -euo pipefail
RAY="${RAY:-${WEIR_CI_VENV_RAY:-$HOME/.cache/weir-ci/venv-ray}/bin/ray}"
cmd="${1:?usage: ray-cluster.sh start|kill-node|stop DIR}"
dir="${2:?usage: ray-cluster.sh start|kill-node|stop DIR}"
dashboard_port="${RAY_DASHBOARD_PORT:-8265}"
gcs_port="${RAY_GCS_PORT:-6380}"
base="${RAY_IP_BASE:-2}"
head_ip="127.0.0.$base"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts one node in a session of its own and records the session's id.
start_node() {
  local ip="$1"; shift
  setsid "$RAY" start --node-ip-address="$ip" --disable-usage-stats \
    --object-store-memory=80000000 "$@" >"$dir/node-$ip.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/node-$ip.sid"
  wait "$pid" || { cat "$dir/node-$ip.log" >&2; return 1; }
}

# A worker node with 1 CPU and, optionally, custom resources (JSON).
start_worker() {
  local ip="$1" resources="${2:-}"
  local extra=()
  [ -n "$resources" ] && extra=(--resources="$resources")
  start_node "$ip" --address="$head_ip:$gcs_port" --num-cpus=1 --memory=2000000000 \
    --dashboard-agent-listen-port="$(free_port)" --metrics-export-port="$(free_port)" "${extra[@]}"
}

case "$cmd" in
  start)
    workers="${3:-2}"
    mkdir -p "$dir/tmp"
    echo "$head_ip:$gcs_port" >"$dir/head"
    start_node "$head_ip" --head --port="$gcs_port" --dashboard-host=127.0.0.1 \
      --dashboard-port="$dashboard_port" --num-cpus=0 --memory=1000000000 \
      --temp-dir="$dir/tmp" --include-dashboard=true \
      --dashboard-agent-listen-port="$(free_port)" --ray-client-server-port="$(free_port)"
    for i in $(seq 1 "$workers"); do
      resources=""
      [ "$i" = 1 ] && resources='{"spot": 1}'
      start_worker "127.0.0.$((base + i))" "$resources"
    done
    # Ready when every worker is alive and offers its CPU.
    for _ in $(seq 150); do
      alive=$(curl -fs "http://127.0.0.1:$dashboard_port/api/v0/nodes?limit=100" 2>/dev/null |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print(sum(1 for n in d["data"]["result"]["result"] if n["state"] == "ALIVE" and n["resources_total"].get("CPU", 0) > 0))' 2>/dev/null || echo 0)
      [ "$alive" -ge "$workers" ] && { echo "http://127.0.0.1:$dashboard_port"; exit 0; }
      sleep 0.2
    done
    echo "ray-cluster.sh: the cluster did not come up; see $dir/node-*.log" >&2
    exit 1
    ;;
  add-node)
    ip="${3:?usage: ray-cluster.sh add-node DIR IP [RESOURCES_JSON]}"
    head_ip="$(cut -d: -f1 "$dir/head")"; gcs_port="$(cut -d: -f2 "$dir/head")"
    start_worker "$ip" "${4:-}"
    ;;
  kill-node)
    ip="${3:?usage: ray-cluster.sh kill-node DIR IP}"
    # Everything the node started is in its session, its workers (which
    # lead process groups of their own) included: as a machine going away.
    pkill -9 -s "$(cat "$dir/node-$ip.sid")" 2>/dev/null || true
    ;;
  stop)
    for f in "$dir"/node-*.sid; do
      [ -e "$f" ] || continue
      pkill -TERM -s "$(cat "$f")" 2>/dev/null || true
    done
    sleep 1
    for f in "$dir"/node-*.sid; do
      [ -e "$f" ] || continue
      pkill -9 -s "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done
    ;;
  *)
    echo "usage: ray-cluster.sh start|kill-node|stop DIR" >&2
    exit 2
    ;;
esac
