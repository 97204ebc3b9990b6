#!/usr/bin/env bash
# Installs the Debian bookworm packages the project needs. Idempotent; run as
# root (or with sudo available).
#
#   scripts/install-deps.sh              everything to build, test, train and benchmark
#   scripts/install-deps.sh --build-only only what compiling the C++ tree needs
#                                        (the Dockerfile's build stage)
#   scripts/install-deps.sh --container  what deploy/container-smoke.sh needs
#                                        (podman, debootstrap, iproute2; it calls this itself)
set -euo pipefail

BUILD_PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config git
  # the C++ stack (GoogleTest and Benchmark too: CMake configures tests/ and bench/)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libdnnl-dev opencl-c-headers ocl-icd-opencl-dev libabsl-dev prometheus-cpp-dev libsentencepiece-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # security: OpenSSL's libcrypto (PEM checks, token digests); the openssl
  # command makes the TLS tests' certificates (CMake looks for it when it
  # configures tests/, which the image's build stage does too)
  libssl-dev openssl
)
TEST_PACKAGES=(
  # fuzzing: clang with libFuzzer and the sanitizer runtimes, and clang's OpenMP
  clang-14 libclang-rt-14-dev libomp-14-dev
  # Python: reference implementation, training, parity tests, example client
  python3 python3-torch python3-numpy python3-sentencepiece libopenblas0-pthread sentencepiece
  python3-grpcio python3-protobuf
  # training corpus and plots
  bible-kjv gnuplot-nox
  # deploy/ tests: nginx (gRPC load balancer of the scale-out test), promtool
  # (from prometheus) and PyYAML for the Compose / Kubernetes checks
  nginx prometheus python3-yaml
  # the Kubernetes schema check runs on Node.js (its validator comes from npm, below)
  nodejs
)
CONTAINER_PACKAGES=(podman debootstrap iproute2)

case "${1:-}" in
  "") PACKAGES=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  --build-only) PACKAGES=("${BUILD_PACKAGES[@]}") ;;
  --container) PACKAGES=("${CONTAINER_PACKAGES[@]}") ;;
  *) echo "install-deps: unknown option '$1' (expected none, --build-only or --container)" >&2; exit 2 ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Debian's nodejs has no npm; some Node.js builds bring their own.
if [ -z "${1:-}" ] && ! command -v npm >/dev/null; then missing+=(npm); fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Kubernetes schema validator of tests/deploy/check_k8s.py (npm registry,
# versions pinned by its package-lock.json).
SCHEMA_DIR="$(dirname "$0")/../tests/deploy/k8s-schema"
if [ -z "${1:-}" ] && [ ! -f "$SCHEMA_DIR/node_modules/kubernetes-models/package.json" ]; then
  echo "install-deps: npm ci in tests/deploy/k8s-schema"
  npm ci --prefix "$SCHEMA_DIR" --no-audit --no-fund --loglevel=error
fi
