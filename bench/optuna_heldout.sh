#!/usr/bin/env bash
# Optuna's side of a held-out sampler check: ../shared/peers/optuna_hpo.sh's own
# Python (objectives, TPESampler defaults, in-memory storage), run with quality
# seeds QUALITY_SEED_BASE .. QUALITY_SEED_BASE + QUALITY_SEEDS - 1 instead of its
# fixed 100-104, so both samplers can be compared on seeds neither was tuned on.
# Weir's side: QUALITY_SEED_BASE=... QUALITY_SEEDS=... bench/hpo_compare.sh.
# Prints the peer script's JSON line. Needs the peer venv (run the peer script once).
set -euo pipefail
cd "$(dirname "$0")/.."
PEER="${PEER:-../shared/peers/optuna_hpo.sh}"
PY="${PEERS_VENV:-/tmp/peers/venv}/bin/python"
base="${QUALITY_SEED_BASE:-300}"
case "$base" in ''|*[!0-9]*) echo "QUALITY_SEED_BASE must be a number, got '$base'" >&2; exit 2 ;; esac
script="$(sed -n '/^"\$PY" - <<.EOF.$/,/^EOF$/p' "$PEER" | sed '1d;$d')"
grep -q 'range(100, 100 + QS)' <<<"$script" || {
  echo "$PEER no longer seeds its quality runs with range(100, 100 + QS); update this script" >&2
  exit 2
}
script="${script//range(100, 100 + QS)/range($base, $base + QS)}"
# The overhead part is not the point here: one short seed keeps it cheap.
OVERHEAD_SEEDS=1 OVERHEAD_TRIALS=101 QUALITY_SEEDS="${QUALITY_SEEDS:-100}" "$PY" - <<<"$script"
