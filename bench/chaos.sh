#!/usr/bin/env bash
# The chaos tests, longer: every kill test in the e2e suite with TRIALS
# seeded trials each (default 200; the normal suite runs 20): the runner
# killed mid-run and resumed (SQLite and PostgreSQL), `weir server` killed
# mid log-batch, `weir serve` killed mid-rollout, gc beside running
# pipelines. Each checks afterwards that nothing is corrupt (every blob
# verifies, `weir fsck` is clean) and no finished step ran again.
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${TRIALS:-200}"
start=$(date +%s)
WEIR_CRASH_TRIALS="$trials" cargo test --release --locked -p weir-cli --test e2e -- \
  recovery::killed_runs resilience::killing resilience::gc_running --test-threads=1
echo "{\"trials_per_test\": $trials, \"seconds\": $(( $(date +%s) - start ))}"
