#!/usr/bin/python3
"""Engine vs the PyTorch reference (train/matformer_ref), logits at every position.

For each model (a generated random one in f32 and in bf16, plus the shipped
default model when present) and each spec (every granularity, three mixed
specs, one with skipped layers), the engine prefills 64 tokens and then
decodes 16 more one at a time with its KV cache (`matformer-logits`); the
reference runs the same 80 tokens in one uncached forward pass.

Tolerance: 1e-3 max abs on the logits for f32 models (measured: ~1e-6 on the
random model). The shipped default model (bf16) is checked twice: as an f32
copy of the same weights (the same 1e-3), and as shipped.

For bf16 models the reference rounds the input of every weight matmul to bf16
as the engine does (weights are bf16 in both), and keys (after RoPE) and
values to bf16 as the engine's KV pool stores them for a bf16 model
(--kv_dtype=auto). What remains is f32 summation
order, which is invisible except where an activation sits on a bf16 rounding
boundary: there the two sides round it one bf16 ulp (2^-8 relative) apart,
and that step propagates through the later layers. So the bf16 tolerance is
relative: two bf16 ulps (2^-7) of the logit scale (max |logit|). Measured with
bf16 K/V: at most 1.25 ulp (3.3e-3 at scale 0.84 on the random model; 3.9e-2
at scale 7.9 on the trained one). Greedy argmax must also agree
at every position where the reference's top two logits are more than that
tolerance apart, and the gap between S and XL must dwarf the tolerance.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "train"))
import matformer_ref.model as reference_model  # noqa: E402
from matformer_ref.model import MatFormerPLE  # noqa: E402

F32_TOLERANCE = 1e-3
BF16_RELATIVE_TOLERANCE = 2.0 ** -7
PROMPT, DECODE = 64, 16

_f32_linear = F.linear


def bf16_round(x):
    return x.to(torch.bfloat16).float()


def bf16_input_linear(x, w, bias=None):
    return _f32_linear(x.to(torch.bfloat16).float(), w, bias)


def specs_for(layers, names):
    s, m, l, xl = names[0], names[1], names[2], names[-1]
    ramp = [names[min(len(names) - 1, i * len(names) // layers)] for i in range(layers)]
    flat = [m] * (layers // 2) + [l] * (layers - layers // 2)
    wild = [xl, s] + [m] * (layers - 2)
    skip = list(ramp)
    skip[1] = "skip"
    return [s, m, l, xl, "-".join(ramp), "-".join(flat), "-".join(wild), "-".join(skip)]


def check_model(build_dir, model_dir, label):
    model = MatFormerPLE.from_dir(model_dir).eval()
    config = model.config
    bf16 = config["torch_dtype"] == "bfloat16"
    F.linear = bf16_input_linear if bf16 else _f32_linear
    # The engine's KV pool follows the model's dtype (--kv_dtype=auto).
    reference_model.store_kv = bf16_round if bf16 else (lambda x: x)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, min(config["vocab_size"], 128), size=PROMPT + DECODE)
    token_arg = ",".join(str(t) for t in tokens)
    failures = 0
    references = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs_for(config["num_hidden_layers"], config["granularity_names"]):
            out = os.path.join(tmp, "logits.npy")
            subprocess.run([os.path.join(build_dir, "tools", "matformer-logits"), f"--model_dir={model_dir}",
                            f"--spec={spec}", f"--tokens={token_arg}", f"--prefill={PROMPT}", f"--out={out}"],
                           check=True)
            engine = np.load(out)
            with torch.no_grad():
                reference = model.forward_spec(torch.tensor(tokens)[None], spec)[0].numpy()
            references[spec] = reference
            scale = float(np.abs(reference).max())
            tolerance = BF16_RELATIVE_TOLERANCE * scale if bf16 else F32_TOLERANCE
            error = float(np.abs(engine - reference).max())
            decode_error = float(np.abs(engine[PROMPT:] - reference[PROMPT:]).max())
            top2 = np.sort(reference, axis=-1)[:, -2:]
            decided = (top2[:, 1] - top2[:, 0]) > tolerance
            argmax_ok = bool(np.all(engine.argmax(-1)[decided] == reference.argmax(-1)[decided]))
            ok = error <= tolerance and argmax_ok and engine.shape == reference.shape
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'} {label:14s} {spec:22s} max|engine-ref| {error:.2e} "
                  f"(decode steps {decode_error:.2e}, tolerance {tolerance:.1e}, logit scale {scale:.2f}, "
                  f"argmax {'agrees' if argmax_ok else 'DIFFERS'})")
    names = config["granularity_names"]
    gap = float(np.abs(references[names[0]] - references[names[-1]]).max())
    ok = gap > 10 * tolerance
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {label:12s} {names[0]} vs {names[-1]} differ by {gap:.2e} (> 10x tolerance)")
    F.linear = _f32_linear
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build_dir", required=True)
    args = parser.parse_args()
    tokenizer = os.path.join(ROOT, "tests", "data", "gemma3n-tiny", "tokenizer.model")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("f32", "bf16"):
            model_dir = os.path.join(tmp, dtype)
            subprocess.run([os.path.join(args.build_dir, "tools", "matformer-make-random-model"), f"--out={model_dir}",
                            "--layers=4", "--hidden=128", "--intermediate=512", "--granularities=64,128,256,512",
                            "--heads=4", "--kv_heads=2", "--head_dim=32", "--ple_dim=16", "--vocab=160",
                            "--max_position_embeddings=256", f"--dtype={dtype}", "--seed=5",
                            f"--tokenizer={tokenizer}"], check=True, stdout=subprocess.DEVNULL)
            failures += check_model(args.build_dir, model_dir, f"random-{dtype}")
    default = os.path.join(ROOT, "models", "default")
    if os.path.exists(os.path.join(default, "model.safetensors")):
        failures += check_model(args.build_dir, default, "default-bf16")
        with tempfile.TemporaryDirectory() as tmp:
            MatFormerPLE.from_dir(default).export(tmp, dtype="float32",
                                                  tokenizer_path=os.path.join(default, "tokenizer.model"))
            failures += check_model(args.build_dir, tmp, "default-f32")
    else:
        print("FAIL models/default is missing")
        failures += 1
    print(f"parity: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
