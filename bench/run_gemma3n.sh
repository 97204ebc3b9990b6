#!/usr/bin/env bash
# Gemma 3n at real size in one command (bench/README.md, "Gemma 3n at real size"):
#   bench/run_gemma3n.sh [--layers N] [gemma3n_bench flags...]
# Builds gemma3n_bench (Release), writes a random-weight checkpoint with E2B's
# published text shapes to build/bench/gemma3n-e2b if it is not there (8.9 GB,
# bf16; --layers N writes a shallower one to build/bench/gemma3n-e2b-N instead),
# then runs the benchmark on it (JOBS=N limits the build to N jobs). Prints the load average before and after and
# keeps the output in build/bench/gemma3n-e2b[-N].txt.
set -euo pipefail
cd "$(dirname "$0")/.."

layers=0
if [[ ${1:-} == --layers ]]; then
  layers=${2:?--layers needs a number}
  shift 2
fi
model=build/bench/gemma3n-e2b
[[ $layers != 0 ]] && model+="-$layers"

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMATFORMER_SANITIZE= >/dev/null
cmake --build build -j "${JOBS:-$(nproc)}" --target gemma3n_bench

if [[ ! -f $model/model.safetensors ]]; then
  # ~9 GB on disk; written to a temporary name so an interrupted run is not mistaken for a checkpoint.
  avail=$(df --output=avail -B1G build | tail -n 1)
  if (( avail < 12 )); then
    echo "only ${avail} GB free under build/: the E2B checkpoint needs ~9 GB" >&2
    exit 1
  fi
  rm -rf "$model.tmp"
  /usr/bin/python3 tools/gemma3n_random_checkpoint.py --preset e2b --layers "$layers" --out "$model.tmp"
  mv "$model.tmp" "$model"
fi

# The machine may be shared: wait up to 3 minutes for the 1-minute load average
# to drop below cores/4 (the load before and after goes into the output).
for _ in $(seq 1 18); do
  awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v c="$(nproc)" 'BEGIN { exit !(l > c / 4) }' || break
  echo "waiting for the load average to settle: $(cut -d' ' -f1 /proc/loadavg)"
  sleep 10
done

out="$model.txt"
{
  echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- core bench || echo ' + uncommitted changes')"
  echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
  echo "# uptime before: $(uptime)"
  echo "# build/bench/gemma3n_bench --model_dir $model $*"
} | tee "$out"
build/bench/gemma3n_bench --model_dir "$model" "$@" | tee -a "$out"
echo "# uptime after: $(uptime)" | tee -a "$out"
