#!/usr/bin/env bash
# The first command: installs the Debian packages, builds, and runs the main
# job on the default model that ships in models/default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2
exec build/tools/matformer-generate --model_dir models/default "$@"
