#!/usr/bin/env bash
# The first command: installs the Debian packages, builds, and starts
# matformer-server on the default model (models/default) at 127.0.0.1:50051,
# metrics at 127.0.0.1:9464. Arguments go to the server (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2
exec build/server/matformer-server "$@"
