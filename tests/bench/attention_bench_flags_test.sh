#!/usr/bin/env bash
# bench/attention_bench refuses bad flags before measuring anything, naming
# the flag and its limit (usage: attention_bench_flags_test.sh BINARY).
set -uo pipefail
binary=$1
failures=0
expect_refused() {
  local expected=$1
  shift
  local output status
  output=$("$binary" "$@" 2>&1)
  status=$?
  if [[ $status -ne 1 || $output != *"$expected"* ]]; then
    echo "FAIL: $* -> exit $status, output: $output (expected exit 1 and: $expected)"
    failures=$((failures + 1))
  fi
}
expect_refused "--context=0: must be in [1, 65536]" --context=0
expect_refused "--sequences=1025: must be in [1, 1024]" --sequences=1025
expect_refused "--head_dim=2048: must be in [1, 1024]" --head_dim=2048
expect_refused "more than the limit of 16 GiB" --sequences=1024 --context=65536
expect_refused "--modes: unknown 'train' (decode, prefill)" --modes=train
expect_refused "--kernels: unknown 'sse' (avx2, avx512, amx)" --kernels=sse
expect_refused "--kv_dtypes: unknown 'f16' (f32, bf16, int8)" --kv_dtypes=f16
expect_refused "--kv_dtypes: unknown 'auto' (f32, bf16, int8)" --kv_dtypes=auto
exit $((failures > 0))
