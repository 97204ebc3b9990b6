#!/usr/bin/python3
"""Reference logits from the PyTorch MatFormer-PLE implementation.

  /usr/bin/python3 tests/parity/reference_logits.py --model_dir models/default \
      --tokens 2,100,200 --spec S-S-M-M-L-L --out /tmp/ref.npy

Writes float32 logits of shape [T, V] (.npy) for the token ids given, run as
one sequence from position 0 with the submodel named by --spec (canonical
name, e.g. XL, S-S-M-M-L-L, S-skip-M-M-L-L). All math in f32; bf16 weights
are upcast. No BOS is added: pass exactly the ids to run.
"""
import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "train"))
from matformer_ref.model import MatFormerPLE  # noqa: E402
from matformer_ref.spec import parse_spec  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--spec", default="XL")
    ap.add_argument("--out", required=True, help="output .npy, float32 [T, V]")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tokens = [int(t) for t in a.tokens.replace(" ", "").split(",") if t != ""]
    if not tokens:
        sys.exit("no tokens")
    model = MatFormerPLE.from_dir(a.model_dir)
    V = model.config["vocab_size"]
    bad = [t for t in tokens if not 0 <= t < V]
    if bad:
        sys.exit(f"token ids out of range [0, {V}): {bad}")
    if len(tokens) > model.config["max_position_embeddings"]:
        sys.exit("more tokens than max_position_embeddings")
    widths, skipped = parse_spec(a.spec, model.config)
    with torch.no_grad():
        logits = model(torch.tensor([tokens], dtype=torch.long), widths, skipped)[0]
    np.save(a.out, np.ascontiguousarray(logits.numpy().astype(np.float32)))


if __name__ == "__main__":
    main()
