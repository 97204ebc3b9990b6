#!/usr/bin/env bash
# The speed benchmarks in one command (bench/README.md):
#   bench/run.sh [--no_wait] [--quick]
# Builds (Release), writes a ~350M-parameter random bf16 model to
# build/bench/model-350m if it is not there, waits for a running training job
# (build/train/train.pid) to finish unless --no_wait, then runs engine_bench and
# torch_bench (f32 and bf16 weights) on that model and on models/default (when
# it has been exported), and the 350M model's 1- and 16-row decode steps again
# with an int8 KV cache, and writes build/bench/results.md: engine vs PyTorch
# per row, and the goals of the core-engine issue checked against the numbers.
# --quick: few repeats and one prompt length, for a smoke run (noisy numbers).
set -euo pipefail
cd "$(dirname "$0")/.."

no_wait=0
quick=0
for arg in "$@"; do
  case "$arg" in
    --no_wait) no_wait=1 ;;
    --quick) quick=1 ;;
    *) echo "usage: bench/run.sh [--no_wait] [--quick]" >&2; exit 2 ;;
  esac
done

out=build/bench
mkdir -p "$out"
# Sanitizers off: an instrumented build would measure the instrumentation.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMATFORMER_SANITIZE= >/dev/null
cmake --build build -j2 --target engine_bench matformer-make-random-model

model_350m="$out/model-350m"
if [[ ! -f "$model_350m/model.safetensors" ]]; then
  build/tools/matformer-make-random-model --preset=350m \
    --tokenizer=tests/data/gemma3n-tiny/tokenizer.model --out "$model_350m"
fi

# Another CPU-bound job halves what we measure (2 cores): wait for training,
# then for the load average to settle.
cores=$(nproc)
load1() { cut -d' ' -f1 /proc/loadavg; }
if [[ $no_wait == 0 ]]; then
  pidfile=build/train/train.pid
  if [[ -f $pidfile ]]; then
    pid=$(cat "$pidfile")
    # The cmdline check keeps a recycled pid from holding us forever.
    while kill -0 "$pid" 2>/dev/null && grep -qa train.py "/proc/$pid/cmdline" 2>/dev/null; do
      echo "waiting for the training run (pid $pid): $(tail -n 1 build/train/train.log 2>/dev/null)"
      sleep 60
    done
  fi
  for _ in $(seq 1 18); do
    awk -v l="$(load1)" -v c="$cores" 'BEGIN { exit !(l > c / 4) }' || break
    echo "waiting for the load average to settle: $(load1)"
    sleep 10
  done
fi
load_before=$(load1)
if awk -v l="$load_before" -v c="$cores" 'BEGIN { exit !(l > c / 2) }'; then
  echo "WARNING: load average $load_before on $cores cores: something else is running, numbers will be low" >&2
fi

engine_args=()
torch_args=()
if [[ $quick == 1 ]]; then
  engine_args=(--prompts=128 --prefill_repeats=2 --cold_repeats=1 --decode_steps=6)
  torch_args=(--prompts 128 --prefill_repeats 2 --decode_steps 6)
fi

models=("$model_350m")
if [[ -f models/default/model.safetensors ]]; then
  models+=(models/default)
else
  echo "models/default has no exported model yet: benchmarking the 350M model only" >&2
fi

# The 1-minute load average around each run goes into the results: a run
# that shared the cores with something else shows it there.
: > "$out/loads.txt"
runs=()
for model in "${models[@]}"; do
  name=$(basename "$model")
  echo "== engine_bench on $model"
  before=$(load1)
  build/bench/engine_bench --model_dir "$model" --json_out "$out/$name.engine.json" --profile "${engine_args[@]}" \
    | tee "$out/$name.engine.txt"
  echo "$name engine $before $(load1)" >> "$out/loads.txt"
  if [[ $model == "$model_350m" ]]; then
    echo "== engine_bench on $model with an int8 KV cache (decode at 1 and 16 rows)"
    before=$(load1)
    build/bench/engine_bench --model_dir "$model" --json_out "$out/$name.engine-int8kv.json" "${engine_args[@]}" \
      --kv_dtype=int8 --batches=1,16 --prefill_repeats=1 --cold_repeats=0 | tee "$out/$name.engine-int8kv.txt"
    echo "$name engine-int8kv $before $(load1)" >> "$out/loads.txt"
  fi
  for dtype in f32 bf16; do
    echo "== torch_bench ($dtype weights) on $model"
    before=$(load1)
    /usr/bin/python3 bench/torch_bench.py --model_dir "$model" --dtype "$dtype" \
      --json_out "$out/$name.torch-$dtype.json" "${torch_args[@]}" | tee "$out/$name.torch-$dtype.txt"
    echo "$name torch-$dtype $before $(load1)" >> "$out/loads.txt"
  done
  runs+=("$name")
done
load_after=$(load1)

/usr/bin/python3 - "$out" "$load_before" "$load_after" "${runs[@]}" <<'EOF'
import json, os, subprocess, sys

out, load_before, load_after, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                       text=True).stdout.strip()
lines = ["# Benchmark results", "",
         f"`bench/run.sh` at commit {commit}{' (+ uncommitted changes)' if dirty else ''}, {cpu}, "
         f"{os.cpu_count()} cores; load average {load_before} before, {load_after} after.", ""]

def key(row, *fields):
    return tuple(row[f] for f in fields)

def mib(b):
    return f"{b / 2**20:.1f}"

def l3_bytes():
    try:
        text = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
        return int(text[:-1]) * {"K": 2**10, "M": 2**20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 0

l3 = l3_bytes()
loads = {}
for line in open(os.path.join(out, "loads.txt")):
    model, kind, before, after = line.split()
    loads[(model, kind)] = f"{before} / {after}"

for name in names:
    load = lambda suffix: json.load(open(os.path.join(out, f"{name}.{suffix}.json")))
    e, tf, tb = load("engine"), load("torch-f32"), load("torch-bf16")
    torch_runs = {"f32": tf, "bf16": tb}
    lines += [f"## {name} ({e['model_dir']}, {e['dtype']}, {e['stored_parameters'] / 1e6:.1f} M parameters)", "",
              "Machine limits measured in each process at its start / end (GB/s, GFLOP/s); engine_bench "
              "also reads DRAM bandwidth before each decode measurement. Each process's ratios use its "
              "highest measurement (the last column). Load = 1-minute load average before / after the "
              "process (2 cores: anything near or above 1 means it shared the cores).", "",
              "| process | load | DRAM read | bf16 matmul peak | f32 matmul peak | used: DRAM / bf16 / f32 |",
              "|---|---|---|---|---|---|"]
    for label, kind, run in [("engine_bench", "engine", e)] + [(f"torch_bench --dtype {dt}", f"torch-{dt}", t)
                                                              for dt, t in torch_runs.items()]:
        a, b, u = run["limits_at_start"], run["limits_at_end"], run["limits"]
        dram = f"{a['dram_read_gbps']:.1f} / {b['dram_read_gbps']:.1f}"
        local = [r["dram_gbps_measured_before"] for r in run["decode"] if "dram_gbps_measured_before" in r]
        if local:
            dram += f" (before decodes: {min(local):.1f} .. {max(local):.1f})"
        lines.append(f"| {label} | {loads.get((name, kind), '?')} | {dram} | "
                     f"{a['bf16_gflops']:.0f} / {b['bf16_gflops']:.0f} | {a['f32_gflops']:.0f} / {b['f32_gflops']:.0f} | "
                     f"{u['dram_read_gbps']:.1f} / {u['bf16_gflops']:.0f} / {u['f32_gflops']:.0f} |")
    peak_name = "bf16" if e["dtype"] == "bf16" else "f32"

    lines += ["", f"### Prefill (one prompt, one step; tokens/s, median of fresh sequences)", "",
              f"| spec | prompt | engine tok/s | engine cold tok/s | engine GFLOP/s | / {peak_name} peak | "
              "torch f32 tok/s | torch bf16 tok/s | engine / best torch |", "|---|---|---|---|---|---|---|---|---|"]
    tp = {dt: {key(r, "spec", "prompt"): r for r in t["prefill"]} for dt, t in torch_runs.items()}
    for r in e["prefill"]:
        k = key(r, "spec", "prompt")
        f, b = tp["f32"].get(k), tp["bf16"].get(k)
        best = max(x["tokens_per_s_median"] for x in (f, b) if x)
        lines.append(f"| {r['spec']} | {r['prompt']} | {r['tokens_per_s_median']:.0f} | "
                     f"{r.get('cold_tokens_per_s_median', float('nan')):.0f} | {r['gflops_median']:.0f} | "
                     f"{r['peak_ratio']:.2f} | {f['tokens_per_s_median']:.0f} | {b['tokens_per_s_median']:.0f} | "
                     f"{r['tokens_per_s_median'] / best:.2f} |")

    lines += ["", "### Decode (one token per sequence per step; median step)", "",
              "| spec | prompt | batch | engine step ms | engine tok/s | weight MiB/step | weight GB/s / DRAM | "
              "(weights+KV) / DRAM | weight GB/s / DRAM read just before | torch f32 tok/s | torch bf16 tok/s | "
              "engine / best torch |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    td = {dt: {key(r, "spec", "prompt", "batch"): r for r in t["decode"]} for dt, t in torch_runs.items()}
    for r in e["decode"]:
        k = key(r, "spec", "prompt", "batch")
        f, b = td["f32"].get(k), td["bf16"].get(k)
        best = max(x["tokens_per_s"] for x in (f, b) if x)
        cached = "†" if r["weight_bytes_per_step"] <= l3 else ""
        lines.append(f"| {r['spec']} | {r['prompt']} | {r['batch']} | {r['step_seconds_median'] * 1e3:.1f} | "
                     f"{r['tokens_per_s']:.1f} | {mib(r['weight_bytes_per_step'])} | {r['bandwidth_ratio']:.2f}{cached} | "
                     f"{r['bandwidth_ratio_with_kv']:.2f} | {r['bandwidth_ratio_local']:.2f} "
                     f"({r['dram_gbps_measured_before']:.0f} GB/s) | {f['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | "
                     f"{r['tokens_per_s'] / best:.2f} |")

    if any(r["weight_bytes_per_step"] <= l3 for r in e["decode"]):
        lines += ["", f"† the weights of a step fit in the {l3 // 2**20} MiB L3 cache: they are not streamed "
                      "from DRAM, so this ratio is not a bandwidth utilisation."]
    lines += ["", "### Step time at 16 rows / at 1 row", "",
              "Floors, over the engine's 1-row step: flops = the 16-row step's FLOPs at the measured peaks "
              f"(matmuls at the {peak_name} peak, attention at the f32 peak, or the bf16 one where it runs on AMX; "
              "no memory time); bytes = its "
              "weight and KV bytes at the measured DRAM read (no compute time; only what a cache holds can "
              "beat it).", "",
              "| spec | prompt | engine | flops floor | bytes floor | torch f32 | torch bf16 |",
              "|---|---|---|---|---|---|---|"]
    tc = {dt: {key(r, "spec", "prompt"): r for r in t["batch_cost"]} for dt, t in torch_runs.items()}
    for r in e["batch_cost"]:
        k = key(r, "spec", "prompt")
        lines.append(f"| {r['spec']} | {r['prompt']} | {r['ratio_16_to_1']:.2f} | {r['floor_ratio_16_to_1']:.2f} | "
                     f"{r['bytes_floor_ratio_16_to_1']:.2f} | "
                     f"{tc['f32'][k]['ratio_16_to_1']:.2f} | {tc['bf16'][k]['ratio_16_to_1']:.2f} |")

    if e.get("profiles"):
        stages = list(e["profiles"][0]["stage_ms"].keys())
        lines += ["", "### Where a step's time goes (engine_bench --profile; ms per step)", "",
                  "| step | spec | prompt | batch | total | " + " | ".join(stages) + " |",
                  "|---|---|---|---|---|" + "---|" * len(stages)]
        for r in e["profiles"]:
            lines.append(f"| {r['kind']} | {r['spec']} | {r['prompt']} | {r['batch']} | {r['total_ms']:.2f} | " +
                         " | ".join(f"{r['stage_ms'][s]:.2f}" for s in stages) + " |")

    int8_path = os.path.join(out, f"{name}.engine-int8kv.json")
    if os.path.exists(int8_path):
        q = json.load(open(int8_path))
        qd = {key(r, "spec", "prompt", "batch"): r for r in q["decode"]}
        qc = {key(r, "spec", "prompt"): r for r in q["batch_cost"]}
        lines += ["", f"### Decode with an int8 KV cache (a second engine_bench process, --kv_dtype=int8, load "
                      f"{loads.get((name, 'engine-int8kv'), '?')})", "",
                  f"Step ms and the 16-row / 1-row ratio with the {e['kv_dtype']} KV cache of the run above and "
                  "with int8 (a quarter of f32 plus a scale per position and head); KV MiB = the K/V a step "
                  "reads at the mid-run length; DRAM = the read measured just before each row, in each "
                  "process: the host's DRAM speed swings, and a slower 1-row step lowers the ratio.", "",
                  f"| spec | prompt | batch | {e['kv_dtype']} KV ms | int8 KV ms | {e['kv_dtype']} KV MiB | "
                  f"int8 KV MiB | DRAM GB/s, {e['kv_dtype']} / int8 | 16/1, {e['kv_dtype']} | 16/1, int8 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        cost = {key(r, "spec", "prompt"): r for r in e["batch_cost"]}
        for r in e["decode"]:
            k = key(r, "spec", "prompt", "batch")
            if k not in qd:
                continue
            ratio = lambda c: f"{c['ratio_16_to_1']:.2f}" if c and r["batch"] == 16 else ""
            lines.append(f"| {r['spec']} | {r['prompt']} | {r['batch']} | {r['step_seconds_median'] * 1e3:.1f} | "
                         f"{qd[k]['step_seconds_median'] * 1e3:.1f} | {mib(r['kv_bytes_per_step'])} | "
                         f"{mib(qd[k]['kv_bytes_per_step'])} | {r['dram_gbps_measured_before']:.0f} / "
                         f"{qd[k]['dram_gbps_measured_before']:.0f} | {ratio(cost.get(k[:2]))} | {ratio(qc.get(k[:2]))} |")

    m0, m1 = e["memory"]["after_load"], e["memory"]["at_end"]
    pct = lambda m, f: 100.0 * m[f] / m["ple_table_pages"]
    lines += ["", "### Memory (MiB)", "",
              "| process | peak RSS since load | RSS at end | model file | packed weights | KV pool | PLE table | "
              "PLE table in page cache (mincore) | PLE table mapped by the process (pagemap) |",
              "|---|---|---|---|---|---|---|---|---|",
              f"| engine, after load | {mib(m0['peak_rss_bytes'])} | {mib(m0['current_rss_bytes'])} | "
              f"{mib(m0['model_file_bytes'])} | {mib(m0['packed_weight_bytes'])} | {mib(m0['kv_pool_bytes'])} | "
              f"{mib(m0['ple_table_bytes'])} | {pct(m0, 'ple_table_pages_in_page_cache'):.1f}% | "
              f"{pct(m0, 'ple_table_pages_mapped_by_process'):.1f}% |",
              f"| engine, at end | {mib(m1['peak_rss_bytes'])} | {mib(m1['current_rss_bytes'])} | "
              f"{mib(m1['model_file_bytes'])} | {mib(m1['packed_weight_bytes'])} | {mib(m1['kv_pool_bytes'])} | "
              f"{mib(m1['ple_table_bytes'])} | {pct(m1, 'ple_table_pages_in_page_cache'):.1f}% | "
              f"{pct(m1, 'ple_table_pages_mapped_by_process'):.1f}% |"]
    for dt, t in torch_runs.items():
        m = t["memory"]
        lines.append(f"| torch {dt}, at end | {mib(m['peak_rss_bytes'])} | {mib(m['current_rss_bytes'])} | | "
                     f"{mib(max(s['peer_weight_bytes'] for s in m['per_spec'].values()))} (largest spec) | | "
                     f"{mib(m['ple_table_f32_bytes'])} (f32 tensor) | 100% | 100% |")

    # The goals of the core-engine issue, checked against this run.
    dec1 = [r for r in e["decode"] if r["batch"] == 1]
    pre512 = [r for r in e["prefill"] if r["prompt"] == 512]
    goals = []
    dec1 = [r for r in dec1 if r["weight_bytes_per_step"] > l3]
    if dec1:
        worst = min(dec1, key=lambda r: r["bandwidth_ratio"])
        local = min(dec1, key=lambda r: r["bandwidth_ratio_local"])
        goals.append(("decode weight bytes/s >= 0.7 of DRAM bandwidth at batch 1",
                      all(r["bandwidth_ratio"] >= 0.7 for r in dec1),
                      f"lowest {worst['bandwidth_ratio']:.2f} of the highest DRAM read measured "
                      f"({worst['spec']}, prompt {worst['prompt']}); lowest "
                      f"{local['bandwidth_ratio_local']:.2f} of the DRAM read measured just before the row "
                      f"({local['spec']}, prompt {local['prompt']})"))
    else:
        goals.append(("decode weight bytes/s >= 0.7 of DRAM bandwidth at batch 1", None,
                      "not applicable: every spec's weights fit in the L3 cache"))
    if pre512:
        worst = min(pre512, key=lambda r: r["peak_ratio"])
        goals.append((f"prefill >= 0.5 of the {peak_name} peak at 512 tokens",
                      all(r["peak_ratio"] >= 0.5 for r in pre512),
                      f"lowest {worst['peak_ratio']:.2f} ({worst['spec']})"))
    if e["batch_cost"]:
        worst = max(e["batch_cost"], key=lambda r: r["ratio_16_to_1"])
        goals.append(("16-row step <= 1.5 x 1-row step", all(r["ratio_16_to_1"] <= 1.5 for r in e["batch_cost"]),
                      f"highest {worst['ratio_16_to_1']:.2f} ({worst['spec']}, prompt {worst['prompt']}; its "
                      f"floors: compute {worst['floor_ratio_16_to_1']:.2f}, bytes {worst['bytes_floor_ratio_16_to_1']:.2f})"))
    rows = []
    for r in e["prefill"]:
        k = key(r, "spec", "prompt")
        rows.append((f"prefill {k}", r["tokens_per_s_median"] / max(tp[d][k]["tokens_per_s_median"] for d in tp)))
    for r in e["decode"]:
        k = key(r, "spec", "prompt", "batch")
        rows.append((f"decode {k}", r["tokens_per_s"] / max(td[d][k]["tokens_per_s"] for d in td)))
    worst = min(rows, key=lambda x: x[1])
    goals.append(("faster than PyTorch (best of f32/bf16) at every row", all(x[1] > 1 for x in rows),
                  f"lowest engine/torch {worst[1]:.2f} ({worst[0]})"))
    goals.append(("PLE table mapped but not resident (pages mapped by the process at end)",
                  pct(m1, "ple_table_pages_mapped_by_process") < 50,
                  f"{pct(m1, 'ple_table_pages_mapped_by_process'):.1f}% mapped by the process, "
                  f"{pct(m1, 'ple_table_pages_in_page_cache'):.1f}% in the page cache"))
    lines += ["", "### Goals", "", "| goal | met | measured |", "|---|---|---|"]
    lines += [f"| {g} | {'n/a' if ok is None else 'yes' if ok else 'NO'} | {m} |" for g, ok, m in goals]
    lines.append("")

with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {os.path.join(out, 'results.md')}")
EOF
