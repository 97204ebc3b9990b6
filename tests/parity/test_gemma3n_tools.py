#!/usr/bin/python3
"""The Gemma 3n command-line tools end to end on the tiny golden checkpoint.

1. matformer-gemma3n-logits (48 tokens of prefill, 8 cached decode steps)
   against golden_logits_hf.npy (1e-4 max abs, as the unit test) and the
   llama.cpp argmax of golden_logits.npy at every position.
2. matformer-gemma3n-slice writes a slice (FFN width 64, layers 3 and 21
   skipped) as its own checkpoint; the logits tool on that checkpoint must
   equal the same slice run off the full checkpoint (1e-5), and differ from
   the full model.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "data", "gemma3n-tiny")


def logits(build_dir, out, model_dir, tokens, extra=()):
    subprocess.run([os.path.join(build_dir, "tools", "matformer-gemma3n-logits"), "--model_dir", model_dir,
                    "--tokens", ",".join(map(str, tokens)), "--prefill", "48", "--out", out, *extra], check=True)
    return np.load(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build_dir", required=True)
    args = parser.parse_args()
    tokens = json.load(open(os.path.join(TINY, "golden_tokens.json")))["ids"]
    golden_hf = np.load(os.path.join(TINY, "golden_logits_hf.npy"))
    golden_llama = np.load(os.path.join(TINY, "golden_logits.npy"))
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        full = logits(args.build_dir, os.path.join(tmp, "full.npy"), TINY, tokens)
        diff = np.abs(full - golden_hf).max(axis=1)
        print(f"matformer-gemma3n-logits vs golden HF: max |diff| prefill {diff[:48].max():.3g}, "
              f"decode {diff[48:].max():.3g}")
        if diff.max() > 1e-4:
            failures.append(f"logits differ from golden HF by {diff.max():.3g} > 1e-4")
        agree = int((full.argmax(axis=1) == golden_llama.argmax(axis=1)).sum())
        print(f"argmax agrees with llama.cpp at {agree}/{len(tokens)} positions")
        if agree != len(tokens):
            failures.append("argmax differs from llama.cpp")

        sliced_dir = os.path.join(tmp, "sliced")
        subprocess.run([os.path.join(args.build_dir, "tools", "matformer-gemma3n-slice"), "--model_dir", TINY,
                        "--out_dir", sliced_dir, "--widths", "64", "--skip", "3,21"], check=True)
        slice_flags = ["--ffn_granule", "32", "--widths", "64", "--skip", "3,21"]
        in_engine = logits(args.build_dir, os.path.join(tmp, "engine.npy"), TINY, tokens, slice_flags)
        offline = logits(args.build_dir, os.path.join(tmp, "offline.npy"), sliced_dir, tokens, ["--ffn_granule", "32"])
        slice_diff = np.abs(in_engine - offline).max()
        vs_full = np.abs(in_engine - full).max()
        print(f"slice in the engine vs offline-sliced checkpoint: max |diff| {slice_diff:.3g}; vs full {vs_full:.3g}")
        if not np.isfinite(in_engine).all() or slice_diff > 1e-5:
            failures.append(f"sliced logits differ by {slice_diff:.3g} > 1e-5")
        if vs_full < 0.1:
            failures.append("the slice does not change the logits")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
