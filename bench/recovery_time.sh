#!/usr/bin/env bash
# Disaster recovery of the quickstart's store, timed: runs the quickstart
# (examples/flights) in a fresh WEIR_HOME with a release build, backs it up
# to a directory, wipes the home, restores it, checks every blob (weir fsck)
# and serves the restored model. Prints one JSON object per repeat (REPEAT,
# default 3): the store's size, backup, restore and fsck seconds, and whether
# the restored registry holds the same model files (digests) as before.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
weir="$PWD/target/release/weir"
repeat="${REPEAT:-3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export WEIR_HOME="$work/home"
"$weir" run examples/flights/pipeline.yaml --json >/dev/null
# What the registry serves: every version's digest (the model files are
# content-addressed, so the same digest is bit-identical predictions), and a
# server that loads the latest and says it is ready.
predict() {
  "$weir" models show flights-delay --json | python3 -c 'import json, sys; print(json.dumps([v["digest"] for v in json.load(sys.stdin)]))'
  "$weir" serve flights-delay --addr 127.0.0.1:0 2>"$work/serve.err" &
  local pid=$! url="" ready=false
  for _ in $(seq 300); do
    url=$(sed -n 's/^listening on //p' "$work/serve.err" | head -1)
    if [ -n "$url" ] && curl -fs "$url/v2/health/ready" >/dev/null 2>&1; then ready=true; break; fi
    sleep 0.1
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ "$ready" = true ] || { cat "$work/serve.err" >&2; exit 1; }
}
before=$(predict)
for i in $(seq "$repeat"); do
  rm -rf "$work/backup"
  t0=$(date +%s.%N)
  "$weir" backup "$work/backup" --json >"$work/backup.json"
  t1=$(date +%s.%N)
  size=$(du -sb "$WEIR_HOME" | cut -f1)
  mv "$WEIR_HOME" "$work/old-home"
  t2=$(date +%s.%N)
  "$weir" restore "$work/backup" --json >"$work/restore.json"
  t3=$(date +%s.%N)
  "$weir" fsck --json >"$work/fsck.json"
  t4=$(date +%s.%N)
  after=$(predict)
  python3 - "$size" "$t0" "$t1" "$t2" "$t3" "$t4" "$work" "$before" "$after" <<'PY'
import json, sys
size, t0, t1, t2, t3, t4, work, before, after = sys.argv[1:]
t0, t1, t2, t3, t4 = map(float, (t0, t1, t2, t3, t4))
backup = json.load(open(f"{work}/backup.json"))
fsck = json.load(open(f"{work}/fsck.json"))
print(json.dumps({
    "store_mb": round(int(size) / 1e6, 1),
    "blobs": backup["blobs"],
    "backup_s": round(t1 - t0, 2),
    "restore_s": round(t3 - t2, 2),
    "fsck_s": round(t4 - t3, 2),
    "recovery_s": round(t4 - t2, 2),
    "fsck_problems": len(fsck["problems"]),
    "same_models": before == after,
}))
PY
  rm -rf "$WEIR_HOME"
  mv "$work/old-home" "$WEIR_HOME"
done
