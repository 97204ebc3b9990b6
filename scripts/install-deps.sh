#!/usr/bin/env bash
# Installs every Debian bookworm package the project needs to build, test,
# train and benchmark. Idempotent; run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config git
  # the C++ stack
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libdnnl-dev opencl-c-headers ocl-icd-opencl-dev libabsl-dev prometheus-cpp-dev libsentencepiece-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # security: OpenSSL's libcrypto (PEM checks, token digests), the openssl command (test certificates)
  libssl-dev openssl
  # fuzzing: clang with libFuzzer and the sanitizer runtimes, and clang's OpenMP
  clang-14 libclang-rt-14-dev libomp-14-dev
  # Python: reference implementation, training, parity tests, example client
  python3 python3-torch python3-numpy python3-sentencepiece libopenblas0-pthread sentencepiece
  python3-grpcio python3-protobuf
  # training corpus and plots
  bible-kjv gnuplot-nox
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
