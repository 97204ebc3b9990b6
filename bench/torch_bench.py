#!/usr/bin/python3
"""PyTorch peer of engine_bench: the same measurements on the same model directory.

    /usr/bin/python3 bench/torch_bench.py --model_dir DIR --dtype {f32,bf16} [--json_out FILE]
    /usr/bin/python3 bench/torch_bench.py --check      # cached step == reference forward

The weights come from our reference (train/matformer_ref/model.py,
MatFormerPLE.from_dir). The reference has no KV cache, so this file adds one
around its weights: per layer a preallocated K/V tensor [B, KV, max_len, hd]
written in place, grouped-query attention without repeating K/V, logits for the
last token only. That is the best configuration we found for the peer:
torch.set_num_threads(all cores), inference_mode, weights pre-sliced and
contiguous for the granularity being measured (the reference's down_proj[:, :m]
view is strided and would be copied on every call), and either f32 weights or
bf16 weights with bf16 activations (--dtype; report both, bench/README.md says
which wins where).

Ratios are to limits measured in this process with torch itself (a 1 GiB sum
for DRAM read bandwidth, a 1024x2048x2048 torch.mm for the bf16/f32 peak), so
they say how close the peer gets to what torch can reach on this machine.
"""
import argparse
import json
import math
import os
import random
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
from matformer_ref.model import MatFormerPLE, apply_rope, rms_norm, rope_tables  # noqa: E402

FILLER_TOKEN = 3  # kept out of the prompt, as in engine_bench


def act_fn(name):
    if name == "gelu_pytorch_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.silu


class CachedPeer:
    """KV-cached forward over the reference model's weights, for one FFN width."""

    def __init__(self, model, dtype, width):
        c = model.config
        self.c, self.dtype, self.width = c, dtype, width
        self.L, self.d = c["num_hidden_layers"], c["hidden_size"]
        self.H, self.KV, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.dp, self.eps = c["hidden_size_per_layer_input"], c["rms_norm_eps"]
        self.act = act_fn(c["hidden_activation"])
        m = model.model

        def own(t):
            return t.detach().to(dtype).contiguous()

        self.embed = own(m.embed_tokens.weight)  # lookup and tied LM head
        self.ple_table = own(m.embed_tokens_per_layer.weight)
        self.plmp = own(m.per_layer_model_projection.weight)
        self.ple_norm = own(m.per_layer_projection_norm.weight)
        self.final_norm = own(m.norm.weight)
        self.layers = []
        for l in m.layers:
            a = l.self_attn
            self.layers.append(dict(
                in_norm=own(l.input_layernorm.weight), q=own(a.q_proj.weight), k=own(a.k_proj.weight),
                v=own(a.v_proj.weight), o=own(a.o_proj.weight),
                post_attn_norm=own(l.post_attention_layernorm.weight),
                gate=own(l.mlp.gate_proj.weight[:width]), up=own(l.mlp.up_proj.weight[:width]),
                down=own(l.mlp.down_proj.weight[:, :width]),
                ple_gate=own(l.per_layer_input_gate.weight), ple_proj=own(l.per_layer_projection.weight),
                post_ple_norm=own(l.post_per_layer_input_norm.weight)))
        cos, sin = rope_tables(c["max_position_embeddings"], self.hd, c["rope_theta"])
        self.cos, self.sin = cos.to(dtype), sin.to(dtype)

    def weight_bytes(self):
        """Bytes held by this peer's weight tensors."""
        tensors = [self.embed, self.ple_table, self.plmp]
        for l in self.layers:
            tensors += list(l.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def step_weight_bytes(self):
        """Bytes of weights one decode step multiplies: every layer at the
        width, the tied LM head, and the PLE projection (the peer has no PLE cache)."""
        n = self.plmp.numel() + self.embed.numel()
        for l in self.layers:
            n += sum(l[k].numel() for k in ("q", "k", "v", "o", "gate", "up", "down", "ple_gate", "ple_proj"))
        return n * self.embed.element_size()

    def new_cache(self, batch, max_len):
        shape = (batch, self.KV, max_len, self.hd)
        return [(torch.empty(shape, dtype=self.dtype), torch.empty(shape, dtype=self.dtype)) for _ in self.layers]

    def step(self, tokens, cache, pos, all_logits=False):
        """tokens [B, T] at positions pos..pos+T-1 of every sequence -> logits of the last token [B, V]."""
        B, T = tokens.shape
        d, L, dp, eps = self.d, self.L, self.dp, self.eps
        h = F.embedding(tokens, self.embed) * math.sqrt(d)
        proj = rms_norm((F.linear(h, self.plmp) * d ** -0.5).view(B, T, L, dp), self.ple_norm, eps)
        table = F.embedding(tokens, self.ple_table).view(B, T, L, dp) * math.sqrt(dp)
        ple = (proj + table) * 2 ** -0.5
        cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
        end = pos + T
        rep = self.H // self.KV
        mask = None
        if T > 1:  # causal within the new tokens; all earlier positions are visible
            mask = torch.ones(T, end, dtype=torch.bool).triu(pos + 1)
        scale = 1.0 / math.sqrt(self.hd)
        for i, w in enumerate(self.layers):
            x = rms_norm(h, w["in_norm"], eps)
            q = F.linear(x, w["q"]).view(B, T, self.H, self.hd).transpose(1, 2)
            k = F.linear(x, w["k"]).view(B, T, self.KV, self.hd).transpose(1, 2)
            v = F.linear(x, w["v"]).view(B, T, self.KV, self.hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            kc, vc = cache[i]
            kc[:, :, pos:end] = k
            vc[:, :, pos:end] = v
            # Query head j reads KV head j // rep: group the heads instead of
            # repeating K and V.
            qg = q.reshape(B, self.KV, rep * T, self.hd)
            att = torch.matmul(qg, kc[:, :, :end].transpose(-1, -2)) * scale  # [B, KV, rep*T, end]
            if mask is not None:
                att = att.view(B, self.KV, rep, T, end).masked_fill(mask, float("-inf")).view(
                    B, self.KV, rep * T, end)
            att = torch.softmax(att, dim=-1)
            o = torch.matmul(att, vc[:, :, :end]).view(B, self.H, T, self.hd).transpose(1, 2)
            h = h + F.linear(o.reshape(B, T, self.H * self.hd), w["o"])
            x = rms_norm(h, w["post_attn_norm"], eps)
            h = h + F.linear(self.act(F.linear(x, w["gate"])) * F.linear(x, w["up"]), w["down"])
            g = self.act(F.linear(h, w["ple_gate"])) * ple[:, :, i]
            h = h + rms_norm(F.linear(g, w["ple_proj"]), w["post_ple_norm"], eps)
        last = h if all_logits else h[:, -1]
        return F.linear(rms_norm(last, self.final_norm, eps), self.embed)


# ---- machine limits, as torch sees them ----

def measure_limits(repeats=5):
    x = torch.ones(1 << 28)  # 1 GiB of f32
    x.sum()
    dram = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        dram = max(dram, x.numel() * 4 / (time.perf_counter() - t) * 1e-9)
    del x
    peaks = {}
    for name, dt in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        a, b = torch.rand(1024, 2048).to(dt), torch.rand(2048, 2048).to(dt)
        torch.mm(a, b)
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2.0 * 1024 * 2048 * 2048 / (time.perf_counter() - t) * 1e-9)
        peaks[name] = best
    return {"dram_read_gbps": dram, "bf16_gflops": peaks["bf16"], "f32_gflops": peaks["f32"]}


# ---- the same accounting as engine_bench ----

def useful_flops(c, width, tokens):
    """Matmul FLOPs of a prefill with the LM head on the last row, plus attention
    (engine_bench's definition, so GFLOP/s compare directly)."""
    d, L = c["hidden_size"], c["num_hidden_layers"]
    H, KV, hd, dp = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["hidden_size_per_layer_input"]
    layer = 2 * d * H * hd + 2 * d * KV * hd + 3 * d * width + 2 * d * dp
    attention = 4.0 * hd * H * L * tokens * (tokens + 1) / 2
    return 2.0 * L * layer * tokens + 2.0 * c["vocab_size"] * d + attention


def kv_read_bytes(c, batch, length, element_size):
    return 2.0 * c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * element_size * batch * (length + 1)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss():
    """The limits' 1 GiB buffer would otherwise be the peak: "5" resets the
    kernel's high-water mark of this process to its current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes():
    """VmHWM (reset by reset_peak_rss); ru_maxrss without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def spec_names(c):
    names = c.get("granularity_names") or [str(g) for g in c["granularities"]]
    return list(zip(names, c["granularities"]))


def print_limits(when, limits):
    print(f"{when:<10} DRAM read {limits['dram_read_gbps']:.1f} GB/s   bf16 matmul peak {limits['bf16_gflops']:.0f} "
          f"GFLOP/s   f32 matmul peak {limits['f32_gflops']:.0f} GFLOP/s", flush=True)


def print_tables(args, limits, results):
    """Adds the ratios to `limits` and prints the tables in engine_bench's format."""
    peak = limits["bf16_gflops"] if args.dtype == "bf16" else limits["f32_gflops"]
    print(f"== prefill: one prompt on a fresh cache; tok/s median and best of {args.prefill_repeats}; "
          f"GFLOP/s from the median; /peak = ratio to the {args.dtype} matmul peak")
    print(f"{'prefill':<7} {'spec':<4} {'prompt':>6} {'tok/s':>10} {'best':>10} {'cold':>10} {'GFLOP/s':>9} {'/peak':>7}")
    for r in results["prefill"]:
        r["peak_ratio"] = r["gflops_median"] / peak
        print(f"prefill {r['spec']:<4} {r['prompt']:>6} {r['tokens_per_s_median']:>10.1f} "
              f"{r['tokens_per_s_best']:>10.1f} {'-':>10} {r['gflops_median']:>9.1f} {r['peak_ratio']:>7.3f}")
    print(f"== decode: B sequences after the prompt, one token each per step; step ms median and best of "
          f"{args.decode_steps}; weight MiB multiplied per step; its GB/s and /DRAM from the median; KV MiB "
          f"read per step (the cache is in the weights' dtype); +kv = (weights + KV) / DRAM")
    print(f"{'decode':<7} {'spec':<4} {'prompt':>6} {'batch':>5} {'step_ms':>9} {'best_ms':>9} {'tok/s':>9} "
          f"{'wMiB':>8} {'wGB/s':>8} {'/DRAM':>6} {'kvMiB':>8} {'+kv':>6}")
    for r in results["decode"]:
        r["bandwidth_ratio"] = r["weight_gbps"] / limits["dram_read_gbps"]
        r["bandwidth_ratio_with_kv"] = r["weight_and_kv_gbps"] / limits["dram_read_gbps"]
        print(f"decode  {r['spec']:<4} {r['prompt']:>6} {r['batch']:>5} {r['step_seconds_median'] * 1e3:>9.2f} "
              f"{r['step_seconds_best'] * 1e3:>9.2f} {r['tokens_per_s']:>9.1f} "
              f"{r['weight_bytes_per_step'] / 2**20:>8.1f} {r['weight_gbps']:>8.1f} {r['bandwidth_ratio']:>6.3f} "
              f"{r['kv_bytes_per_step'] / 2**20:>8.1f} {r['bandwidth_ratio_with_kv']:>6.3f}")
    print("== step time at 16 rows / at 1 row")
    for r in results["batch_cost"]:
        print(f"batch-cost {r['spec']:<4} {r['prompt']:>6} {r['ratio_16_to_1']:>7.2f}")


def run_spec(args, c, peer, name, width, full_prompt, results):
    prompts = [int(p) for p in args.prompts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    max_len = max(prompts) + args.decode_warmup + args.decode_steps
    step_bytes = peer.step_weight_bytes()
    for prompt_len in prompts:
        prompt = torch.tensor([full_prompt[:prompt_len]])
        cache = peer.new_cache(1, max_len)
        peer.step(prompt, cache, 0)  # warm-up
        seconds = []
        for _ in range(args.prefill_repeats):
            cache = peer.new_cache(1, max_len)
            t = time.perf_counter()
            peer.step(prompt, cache, 0)
            seconds.append(time.perf_counter() - t)
        med, best = statistics.median(seconds), min(seconds)
        flops = useful_flops(c, width, prompt_len)
        print(f"prefill {name} {prompt_len}: {prompt_len / med:.1f} tok/s", file=sys.stderr, flush=True)
        results["prefill"].append(dict(
            spec=name, prompt=prompt_len, repeats=len(seconds), seconds_median=med, seconds_best=best,
            tokens_per_s_median=prompt_len / med, tokens_per_s_best=prompt_len / best, flops=flops,
            gflops_median=flops / med * 1e-9))
        # Every decode row holds the same prompt: prefill once, copy the cache.
        step_1 = step_16 = None
        for batch in batches:
            bcache = peer.new_cache(batch, max_len)
            for (kb, vb), (k1, v1) in zip(bcache, cache):
                kb[:, :, :prompt_len] = k1[:, :, :prompt_len]
                vb[:, :, :prompt_len] = v1[:, :, :prompt_len]
            step_seconds = []
            for s in range(args.decode_warmup + args.decode_steps):
                toks = torch.tensor([[full_prompt[(7 * s + 13 * i) % prompt_len]] for i in range(batch)])
                t = time.perf_counter()
                peer.step(toks, bcache, prompt_len + s)
                if s >= args.decode_warmup:
                    step_seconds.append(time.perf_counter() - t)
            del bcache
            step = statistics.median(step_seconds)
            mid = prompt_len + args.decode_warmup + args.decode_steps // 2
            kv = kv_read_bytes(c, batch, mid, peer.embed.element_size())
            print(f"decode {name} {prompt_len} x{batch}: {step * 1e3:.2f} ms/step", file=sys.stderr, flush=True)
            results["decode"].append(dict(
                spec=name, prompt=prompt_len, batch=batch, steps=len(step_seconds),
                step_seconds_median=step, step_seconds_best=min(step_seconds), tokens_per_s=batch / step,
                weight_bytes_per_step=step_bytes, weight_gbps=step_bytes / step * 1e-9, kv_bytes_per_step=kv,
                weight_and_kv_gbps=(step_bytes + kv) / step * 1e-9))
            if batch == 1:
                step_1 = step
            if batch == 16:
                step_16 = step
        if step_1 and step_16:
            results["batch_cost"].append(dict(spec=name, prompt=prompt_len, step_seconds_1=step_1,
                                              step_seconds_16=step_16, ratio_16_to_1=step_16 / step_1))


def bench(args):
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"== machine limits (torch {torch.__version__} in this process, {torch.get_num_threads()} threads)")
    limits_start = measure_limits()
    print_limits("at start", limits_start)
    reset_peak_rss()
    t = time.perf_counter()
    model = MatFormerPLE.from_dir(args.model_dir)
    load_seconds = time.perf_counter() - t
    c = model.config
    stored = sum(p.numel() for p in model.parameters())
    print(f"== model {args.model_dir}: {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, FFN "
          f"{c['intermediate_size']}, vocab {c['vocab_size']}, {stored / 1e6:.1f} M parameters; torch weights "
          f"{args.dtype}; loaded in {load_seconds:.1f} s", flush=True)
    prompts = [int(p) for p in args.prompts.split(",")]
    rng = random.Random(args.seed)
    full_prompt = [rng.randint(FILLER_TOKEN + 1, c["vocab_size"] - 1) for _ in range(max(prompts))]
    wanted = args.specs.split(",") if args.specs else None
    specs = [(n, w) for n, w in spec_names(c) if wanted is None or n in wanted]

    results = {"prefill": [], "decode": [], "batch_cost": []}
    memory = {}
    with torch.inference_mode():
        for name, width in specs:
            peer = CachedPeer(model, dtype, width)
            run_spec(args, c, peer, name, width, full_prompt, results)
            memory[name] = dict(peer_weight_bytes=peer.weight_bytes(), current_rss_bytes=rss_bytes())
            del peer
    table_bytes = model.model.embed_tokens_per_layer.weight.numel() * 4
    mem = dict(peak_rss_bytes=peak_rss_bytes(), current_rss_bytes=rss_bytes(), per_spec=memory,
               reference_model_f32_bytes=sum(p.numel() * 4 for p in model.parameters()),
               ple_table_f32_bytes=table_bytes)
    del model
    # As in engine_bench: measured again at the end, the higher value is used.
    limits_end = measure_limits()
    limits = {k: max(limits_start[k], limits_end[k]) for k in limits_start}
    print("== machine limits; ratios use the higher of the two measurements")
    print_limits("at start", limits_start)
    print_limits("at end", limits_end)
    print_tables(args, limits, results)
    print("== memory")
    print(f"at end     peak RSS since load {mem['peak_rss_bytes'] / 2**20:8.1f} MiB  RSS {mem['current_rss_bytes'] / 2**20:8.1f} MiB"
          f"  reference model (f32) {mem['reference_model_f32_bytes'] / 2**20:8.1f} MiB")
    print(f"           PLE table {table_bytes / 2**20:.1f} MiB as an f32 tensor: all of it resident")
    for name, m in memory.items():
        print(f"           {name}: peer's {args.dtype} weights {m['peer_weight_bytes'] / 2**20:.1f} MiB "
              f"(shared with the reference model where already contiguous f32)")
    if args.json_out:
        out = dict(runner="torch", torch_version=torch.__version__, model_dir=args.model_dir, dtype=args.dtype,
                   threads=torch.get_num_threads(), stored_parameters=stored, load_seconds=load_seconds,
                   limits=limits, limits_at_start=limits_start, limits_at_end=limits_end, **results, memory=mem)
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


def check():
    """The cached peer (prefill, then one token at a time, batch of 2) must give
    the reference forward's logits, at every granularity."""
    torch.manual_seed(0)
    model = MatFormerPLE({"max_position_embeddings": 64}).eval()
    c = model.config
    tokens = torch.randint(4, c["vocab_size"], (2, 12))
    with torch.inference_mode():
        for width in c["granularities"]:
            ref = model.forward(tokens, widths=width)
            peer = CachedPeer(model, torch.float32, width)
            cache = peer.new_cache(2, 16)
            got = [peer.step(tokens[:, :8], cache, 0, all_logits=True)]
            for p in range(8, 12):
                got.append(peer.step(tokens[:, p:p + 1], cache, p, all_logits=True))
            got = torch.cat(got, dim=1)
            err = (got - ref).abs().max().item()
            print(f"width {width}: max |cached - reference| = {err:.2e}")
            if err > 1e-4:
                raise SystemExit("cached peer disagrees with the reference forward")
    print("ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir")
    ap.add_argument("--dtype", choices=("f32", "bf16"), default="f32")
    ap.add_argument("--json_out")
    ap.add_argument("--specs", default="", help="comma-separated granularity names (default: all)")
    ap.add_argument("--prompts", default="128,512")
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--prefill_repeats", type=int, default=5)
    ap.add_argument("--decode_warmup", type=int, default=2)
    ap.add_argument("--decode_steps", type=int, default=24)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="verify the cached peer against the reference and exit")
    args = ap.parse_args()
    if args.check:
        check()
        return
    if not args.model_dir:
        ap.error("--model_dir is required")
    bench(args)


if __name__ == "__main__":
    main()
