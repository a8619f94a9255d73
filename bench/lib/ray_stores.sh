# Sourced by the Ray benches: the stores a cluster executor needs and the
# cluster, all on loopback and all stopped on exit:
#   - moto (S3) on a free port, with the bucket `bench`;
#   - a Ray cluster (scripts/ray-cluster.sh: a head and two 1-CPU workers);
#   - fresh PostgreSQL databases from new_db (dropped on exit).
# Sets work, s3_port, address, and exports the S3 credentials. Needs the
# venvs of scripts/test.sh (moto, ray) and a PostgreSQL at PGURL.
VENV="${WEIR_CI_VENV:-$HOME/.cache/weir-ci/venv}"
VENV_RAY="${WEIR_CI_VENV_RAY:-$HOME/.cache/weir-ci/venv-ray}"
PGURL="${PGURL:-postgres://postgres@127.0.0.1:5432}"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
databases=()
s3_port=$(free_port)
setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$work/moto.log" 2>&1 &
moto_pid=$!
cleanup() {
  RAY="$VENV_RAY/bin/ray" scripts/ray-cluster.sh stop "$work/ray" || true
  kill -- -"$moto_pid" 2>/dev/null || true
  for db in "${databases[@]}"; do
    psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# new_db NAME: creates a fresh database; its URL in db_url (not printed:
# a command substitution's subshell would not record it for cleanup).
new_db() {
  local db="weir_bench_${1}_$$"
  psql "$PGURL/postgres" -qc "CREATE DATABASE $db" >/dev/null
  databases+=("$db")
  db_url="$PGURL/$db"
}

mkdir -p "$work/ray"
address=$(RAY="$VENV_RAY/bin/ray" RAY_DASHBOARD_PORT="$(free_port)" RAY_GCS_PORT="$(free_port)" \
  scripts/ray-cluster.sh start "$work/ray" 2)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$s3_port/" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs -X PUT "http://127.0.0.1:$s3_port/bench" >/dev/null
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
