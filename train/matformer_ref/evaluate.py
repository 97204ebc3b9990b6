"""Held-out evaluation protocol (shared by train.py and eval_reference.py).

The protocol, exactly, so another implementation can reproduce it:
  1. Read heldout.txt (UTF-8); every non-empty line (stripped of its trailing
     newline) is one document.
  2. stream = concatenation over documents of [BOS] + sp.encode(doc) + [EOS]
     (tokenizer.model of the model directory).
  3. Cut the stream into consecutive, non-overlapping blocks of `ctx` tokens
     (default 256); the last block may be shorter and is kept if it has at
     least 2 tokens.
  4. Each block is run independently from position 0; the loss is the mean
     over all blocks of -log softmax(logits[i])[block[i+1]] for i < len-1,
     i.e. every token but the first of each block is predicted once.
  ppl = exp(loss). Logits computed in f32 (bf16 weights upcast).
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F


def load_stream(heldout_path, tokenizer_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    out = []
    with open(heldout_path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            out.append(sp.bos_id())
            out.extend(sp.encode(line))
            out.append(sp.eos_id())
    return np.asarray(out, dtype=np.int64)


def blocks(stream, ctx):
    res = [stream[i:i + ctx] for i in range(0, len(stream), ctx)]
    return [b for b in res if len(b) >= 2]


@torch.no_grad()
def heldout_loss(model, stream, widths, skipped, ctx=256, batch=8, max_blocks=None):
    """Returns (mean loss, number of predicted tokens)."""
    bl = blocks(stream, ctx)
    if max_blocks:
        bl = bl[:max_blocks]
    total, count = 0.0, 0
    full = [b for b in bl if len(b) == ctx]
    rest = [b for b in bl if len(b) != ctx]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[b] for b in rest]
    for g in groups:
        x = torch.from_numpy(np.stack(g))
        logits = model(x[:, :-1], widths, skipped)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), x[:, 1:].reshape(-1),
                               reduction="sum")
        total += float(loss)
        count += x[:, 1:].numel()
    return total / count, count


def evaluate_specs(model, model_dir, specs, ctx=256, heldout=None):
    from .spec import parse_spec, active_params
    heldout = heldout or os.path.join(model_dir, "heldout.txt")
    stream = load_stream(heldout, os.path.join(model_dir, "tokenizer.model"))
    res = []
    for name in specs:
        widths, skipped = parse_spec(name, model.config)
        loss, n = heldout_loss(model, stream, widths, skipped, ctx)
        res.append({"name": name, "active_params": active_params(widths, skipped, model.config),
                    "loss": loss, "ppl": math.exp(loss), "tokens": n})
    return res
