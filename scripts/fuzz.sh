#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang-14 in build-fuzz and
# runs each for SECONDS (default 60) from its committed seed corpus, printing
# the executions run and the coverage reached (libFuzzer's final cov: / ft:).
# Fails if any target crashes, leaks, times out or breaks an invariant; the
# input is kept in build-fuzz/artifacts/<target>/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=(request tokenizer safetensors model_config tiers auth_tokens); fi

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DMATFORMER_FUZZ=ON -DMATFORMER_WERROR=ON >/dev/null
cmake --build build-fuzz -j2 --target fuzz_targets

failed=()
printf '%-14s %12s %8s %8s %8s  %s\n' target executions "exec/s" cov ft result
for target in "${targets[@]}"; do
  # New inputs go to a work corpus in the build directory; the committed seeds stay as they are.
  work="build-fuzz/corpus/$target"
  artifacts="build-fuzz/artifacts/$target/"
  log="build-fuzz/$target.log"
  mkdir -p "$work" "$artifacts"
  # Seeds, plus the inputs that once crashed it (tests/fuzz/regressions/<target>/), read-only.
  inputs=("tests/fuzz/corpus/$target")
  if [ -d "tests/fuzz/regressions/$target" ]; then inputs+=("tests/fuzz/regressions/$target"); fi
  dict=()
  case "$target" in model_config | safetensors | tiers | auth_tokens) dict=(-dict=tests/fuzz/json.dict) ;; esac
  result=ok
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb / -malloc_limit_mb: an input that makes the
  # code allocate more than 2 GiB is an unbounded allocation.
  if ! "build-fuzz/tests/fuzz/${target}_fuzz" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
      -rss_limit_mb=2048 -malloc_limit_mb=2048 -artifact_prefix="$artifacts" "${dict[@]}" \
      "$work" "${inputs[@]}" >"$log" 2>&1; then
    result="FAILED (log: $log, input: $(ls -t "$artifacts" | head -1))"
    failed+=("$target")
  fi
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  executions=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -1)
  rate=$(awk '/stat::average_exec_per_sec:/ {print $2}' "$log" | tail -1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$done_line")
  printf '%-14s %12s %8s %8s %8s  %s\n' "$target" "${executions:--}" "${rate:--}" "${cov:--}" "${ft:--}" "$result"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  for target in "${failed[@]}"; do
    echo "--- build-fuzz/$target.log (end)" >&2
    tail -40 "build-fuzz/$target.log" >&2
  done
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, no crash"
