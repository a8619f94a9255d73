#!/usr/bin/env bash
# Weir's samplers on the workload of ../shared/peers/optuna_hpo.sh: Branin and
# Hartmann-6, 1,000 trials for the overhead (seeds 0-2), best after 50 and 200
# trials for the quality (seeds 100-104), medians. Prints one JSON line with
# the peer script's keys; run the peer script right before or after and
# compare the two lines. Knobs: OVERHEAD_SEEDS, QUALITY_SEEDS, OVERHEAD_TRIALS,
# QUALITY_SEED_BASE (100; other seeds for a held-out check).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --quiet -p weir-tune --bench hpo 2>/dev/null | tail -1
