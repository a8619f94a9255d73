#!/usr/bin/env bash
# Fuzzes the parsers that take untrusted input with libFuzzer (cargo-fuzz,
# on the nightly toolchain, with AddressSanitizer): the pipeline YAML loader,
# the MLflow filter grammar, inference payloads (/invocations and OIP) and
# model files. Each target runs SECONDS_PER_TARGET (default 600) from the
# seed corpus checked in under fuzz/corpus/<target>; what it adds to the
# corpus stays in target/fuzz-corpus. A crash leaves its input under
# fuzz/artifacts/<target> and fails the script; replay it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# Usage: bench/fuzz.sh [TARGET...]   (JOBS=2 runs two targets at once)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${SECONDS_PER_TARGET:-600}"
jobs="${JOBS:-1}"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (once)" >&2
  cargo install --locked cargo-fuzz@0.13.2
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(pipeline_yaml mlflow_filter inference_payload model_file)
cargo +nightly fuzz build -O >&2
results=$(mktemp -d)
run() {
  local target=$1 work="target/fuzz-corpus/$1"
  mkdir -p "$work" "fuzz/artifacts/$target"
  local start; start=$(date +%s)
  local status=0
  cargo +nightly fuzz run -O "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 \
    >"$results/$target.log" 2>&1 || status=$?
  local runs; runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$results/$target.log" | grep -o '[0-9]*$' || echo 0)
  local corpus; corpus=$(find "$work" -type f | wc -l)
  printf '{"target": "%s", "seconds": %d, "executions": %s, "corpus": %d, "crashed": %s}\n' \
    "$target" $(( $(date +%s) - start )) "${runs:-0}" "$corpus" "$([ $status -eq 0 ] && echo false || echo true)" \
    | tee "$results/$target.json"
  [ $status -eq 0 ] || tail -40 "$results/$target.log" >&2
}
export -f run
export seconds results
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run {}'
! grep -l '"crashed": true' "$results"/*.json >/dev/null
