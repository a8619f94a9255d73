#!/usr/bin/env bash
# The chaos tests, longer: every kill test in the e2e suite with TRIALS
# seeded trials each (default 200; the normal suite runs 20): the runner
# killed mid-run and resumed (SQLite and PostgreSQL), a step's `weir exec`
# killed, `weir server` killed mid log-batch, `weir serve` killed
# mid-rollout, gc beside running pipelines; then the outages once each
# (PostgreSQL restarted and stopped, the S3 server down and back, a full
# disk under the artifact store). Each checks afterwards that nothing is
# corrupt (every blob verifies, `weir fsck` is clean) and no finished step
# ran again. Needs what scripts/test.sh starts for S3 (WEIR_TEST_S3_*).
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${TRIALS:-200}"
start=$(date +%s)
WEIR_CRASH_TRIALS="$trials" cargo test --release --locked -p weir-cli --test e2e -- \
  recovery::killed_runs recovery::a_killed_step_runtime resilience::killing resilience::gc_running \
  resilience::postgres_restarting outages:: --test-threads=1
echo "{\"trials_per_test\": $trials, \"seconds\": $(( $(date +%s) - start ))}"
