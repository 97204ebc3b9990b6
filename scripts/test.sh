#!/usr/bin/env bash
# The second command: builds with warnings as errors and runs every test
# (unit, integration, parity against the PyTorch reference, deploy/ checks,
# the nginx scale-out test and a one-minute soak), builds and serves the
# container image, then runs the unit tests again under ASan+UBSan, the shared
# caches under TSan, and every fuzz target for 60 s (clang-14 + libFuzzer,
# build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMATFORMER_WERROR=ON >/dev/null
cmake --build build -j2
(cd build && ctest --output-on-failure -j2)

# The container image: the real Dockerfile built with podman and served from
# (deploy/README.md; 1.5-4 min with the base image cached, ~2.5 min cold on a quiet machine).
# It needs root (debootstrap, chroot, namespaces); elsewhere it is reported as not run.
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: deploy/container-smoke.sh NOT RUN: it needs root (sudo deploy/container-smoke.sh)"
elif [ "${MATFORMER_SKIP_CONTAINER:-}" = "1" ]; then
  echo "scripts/test.sh: deploy/container-smoke.sh NOT RUN: MATFORMER_SKIP_CONTAINER=1"
else
  deploy/container-smoke.sh
fi

# The unit and integration suites under ASan+UBSan: the engine, and the real
# server (built with ASan) started by the integration tests. RelWithDebInfo:
# at -O0 the server's start-up calibration alone takes seconds.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMATFORMER_WERROR=ON -DMATFORMER_SANITIZE=address >/dev/null
cmake --build build-asan -j2 --target unit_tests server_integration_test elastic_integration_test \
  security_integration_test gemma3n_integration_test
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j2 -L "unit|integration")

# The structures shared across threads, under ThreadSanitizer: the PLE cache,
# the KV pool, and the scheduler driving a real engine (both model families)
# while tests submit, cancel and wait from other threads. One OpenMP thread:
# Debian's libgomp is not TSan-instrumented and reports its own barriers.
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMATFORMER_WERROR=ON -DMATFORMER_SANITIZE=thread >/dev/null
cmake --build build-tsan -j2 --target ple_cache_test kv_cache_test scheduler_test gemma3n_serving_test
(cd build-tsan && OMP_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure \
  -R "PleCache|KvPool|SchedulerTest|Gemma3nServingTest")

# libFuzzer: each target (tests/fuzz) 60 s from its seed corpus; fails on any crash.
scripts/fuzz.sh 60
