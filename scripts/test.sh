#!/usr/bin/env bash
# The second command: builds with warnings as errors and runs every test
# (unit, parity against the PyTorch reference), then the unit tests again
# under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMATFORMER_WERROR=ON >/dev/null
cmake --build build -j2
(cd build && ctest --output-on-failure -j2)

cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMATFORMER_WERROR=ON -DMATFORMER_SANITIZE=ON >/dev/null
cmake --build build-asan -j2
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j2 -L unit)
