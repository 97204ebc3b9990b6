#!/usr/bin/python3
"""The shipped default model really is a MatFormer, and the engine measures it right.

1. matformer-eval (C++ engine) and the PyTorch reference agree on held-out
   loss to 1e-3, per spec, on a slice of the held-out text, with the
   engine's default K/V storage and with int8 K/V.
   matformer-eval refuses a bad --kv_dtype or --context naming the flag and
   the limit.
2. models/default/quality.json (written by matformer-eval over the whole
   held-out text): loss strictly decreases S > M > L > XL.
3. Reported, not asserted (the MatFormer paper's findings, which a small,
   briefly trained model need not reproduce): how far the non-decreasing
   Mix'n'Match specs lie from the line between neighbouring granularities,
   and whether they beat their decreasing twins of equal size.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "train"))
from matformer_ref.evaluate import heldout_loss, load_stream  # noqa: E402
from matformer_ref.model import MatFormerPLE  # noqa: E402
from matformer_ref.spec import parse_spec  # noqa: E402

MODEL = os.path.join(ROOT, "models", "default")
SLICE_BLOCKS = 16
AGREEMENT = 1e-3
SPECS = ["S", "M", "L", "XL", "S-S-M-M-L-XL", "XL-L-L-M-M-S", "S-skip-M-L-L-XL"]


def engine_losses(build_dir, kv_dtype):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "engine.json")
        subprocess.run([os.path.join(build_dir, "tools", "matformer-eval"), f"--model_dir={MODEL}",
                        f"--specs={','.join(SPECS)}", f"--max_blocks={SLICE_BLOCKS}", f"--kv_dtype={kv_dtype}",
                        f"--json_out={out}"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return {s["name"]: s["loss"] for s in json.load(f)["specs"]}


def check_agreement(build_dir):
    """The engine with its default K/V storage (the model's bf16) and with
    int8 K/V (--kv_dtype=int8) against the f32 PyTorch reference."""
    engines = {kv: engine_losses(build_dir, kv) for kv in ("auto", "int8")}
    model = MatFormerPLE.from_dir(MODEL)
    stream = load_stream(os.path.join(MODEL, "heldout.txt"), os.path.join(MODEL, "tokenizer.model"))
    failures = 0
    for name in SPECS:
        widths, skipped = parse_spec(name, model.config)
        reference, _ = heldout_loss(model, stream, widths, skipped, max_blocks=SLICE_BLOCKS)
        for kv, engine in engines.items():
            difference = abs(engine[name] - reference)
            ok = difference <= AGREEMENT
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'} held-out loss {name:18s} K/V {kv:4s} engine {engine[name]:.5f} "
                  f"reference {reference:.5f} |diff| {difference:.1e}")
    return failures


def check_bad_flags(build_dir):
    """matformer-eval refuses bad flags naming the flag and its limit."""
    failures = 0
    for flag, expected in [("--kv_dtype=fp8", "--kv_dtype=fp8: expected auto, f32, bf16 or int8"),
                           ("--context=1", "--context = 1 outside [2, ")]:
        run = subprocess.run([os.path.join(build_dir, "tools", "matformer-eval"), f"--model_dir={MODEL}", flag],
                             capture_output=True, text=True)
        ok = run.returncode == 1 and expected in run.stderr
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} matformer-eval {flag}: exit {run.returncode}, {run.stderr.strip()}")
    return failures


def check_quality_table():
    with open(os.path.join(MODEL, "quality.json")) as f:
        quality = json.load(f)
    loss = {s["name"]: s["loss"] for s in quality["specs"]}
    params = {s["name"]: s["active_params"] for s in quality["specs"]}
    names = ["S", "M", "L", "XL"]
    ordered = all(loss[a] > loss[b] for a, b in zip(names, names[1:]))
    print(f"{'PASS' if ordered else 'FAIL'} quality.json strictly decreasing: "
          + " > ".join(f"{n} {loss[n]:.4f}" for n in names))

    # Distance of each non-decreasing mixed spec from the straight line between
    # the neighbouring granularities (by active parameters).
    anchors = sorted((params[n], loss[n]) for n in names)
    offsets = []
    for s in quality["specs"]:
        if not s.get("non_decreasing") or s["name"] in names or s.get("skipped_layers"):
            continue
        for (p0, l0), (p1, l1) in zip(anchors, anchors[1:]):
            if p0 <= s["active_params"] <= p1:
                line = l0 + (l1 - l0) * (s["active_params"] - p0) / (p1 - p0)
                offsets.append(s["loss"] - line)
    if offsets:
        print(f"INFO {len(offsets)} non-decreasing mixed specs vs the granularity line: mean offset "
              f"{sum(offsets) / len(offsets):+.4f}, worst {max(offsets):+.4f}, best {min(offsets):+.4f} nats")

    # Non-decreasing specs against their reversed (decreasing) twins of equal size.
    by_name = {s["name"]: s for s in quality["specs"]}
    wins, gaps = 0, []
    for s in quality["specs"]:
        tokens = s["name"].split("-")
        if len(tokens) < 2 or "skip" in tokens or not s.get("non_decreasing"):
            continue
        twin = by_name.get("-".join(reversed(tokens)))
        if twin is None or twin["name"] == s["name"]:
            continue
        gaps.append(twin["loss"] - s["loss"])
        wins += s["loss"] < twin["loss"]
    if gaps:
        print(f"INFO non-decreasing beats its decreasing twin in {wins}/{len(gaps)} pairs; mean advantage "
              f"{sum(gaps) / len(gaps):+.4f} nats")
    return 0 if ordered else 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build_dir", required=True)
    args = parser.parse_args()
    failures = check_agreement(args.build_dir) + check_bad_flags(args.build_dir) + check_quality_table()
    print(f"quality: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
