#!/usr/bin/python3
"""Held-out loss / perplexity per submodel with the PyTorch reference.

  /usr/bin/python3 train/eval_reference.py --model_dir models/default --specs S,M,L,XL,S-S-M-M-L-L

Protocol (see train/matformer_ref/evaluate.py): every non-empty line of
heldout.txt is a document; stream = concat([BOS] + encode(doc) + [EOS]); cut
into consecutive independent blocks of --ctx tokens (last one kept if >= 2
tokens); loss = mean NLL (nats) of every token but each block's first.
Weights upcast to f32 from bf16.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matformer_ref.model import MatFormerPLE  # noqa: E402
from matformer_ref import evaluate as ev  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--specs", default="S,M,L,XL", help="comma-separated canonical spec names")
    ap.add_argument("--heldout", default=None, help="default: <model_dir>/heldout.txt")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print quality.json-style JSON instead")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = MatFormerPLE.from_dir(a.model_dir)
    specs = [s for s in a.specs.split(",") if s]
    res = ev.evaluate_specs(model, a.model_dir, specs, ctx=a.ctx, heldout=a.heldout)
    if a.json:
        print(json.dumps({"dataset": a.heldout or "heldout.txt", "tokens": res[0]["tokens"],
                          "specs": [{k: r[k] for k in ("name", "active_params", "loss", "ppl")} for r in res]},
                         indent=2))
        return
    print(f"{'spec':>24s} {'active_params':>13s} {'tokens':>7s} {'loss':>9s} {'ppl':>9s}")
    for r in res:
        print(f"{r['name']:>24s} {r['active_params']:>13d} {r['tokens']:>7d} {r['loss']:9.5f} {r['ppl']:9.3f}")


if __name__ == "__main__":
    main()
