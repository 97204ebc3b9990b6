#!/usr/bin/python3
"""Writes models/default/README.md from build/train/train_stats.json.

train.py calls write() at the end; rerun by hand with
  /usr/bin/python3 train/model_card.py --out models/default --stats build/train/train_stats.json
"""
import argparse
import json
import os


def write(out, s, cfg):
    ev = s["eval"]
    uni = [r for r in ev if r["name"] in cfg["granularity_names"]]
    lines = []
    A = lines.append
    A("# default — a small MatFormer-PLE model trained on the King James Bible\n")
    A("A ~%.1fM-parameter decoder-only language model in this repository's MatFormer-PLE "
      "format (docs/model-format.md), trained from scratch on CPU in about %d minutes "
      "by `train/train.py`. It is a test and demo model: it writes KJV-flavoured English "
      "and nothing else. Every FFN can run at 4 nested widths (S/M/L/XL), per layer, "
      "and layers can be skipped, so one set of weights serves many submodels.\n"
      % (s["params"] / 1e6, round(s["train_secs"] / 60)))
    A("## Architecture\n")
    A("| field | value |\n|---|---|")
    for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_size_per_layer_input", "granularities",
              "granularity_names", "rope_theta", "rms_norm_eps", "max_position_embeddings",
              "hidden_activation", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"]:
        A(f"| `{k}` | `{json.dumps(cfg[k])}` |")
    A(f"| parameters | {s['params']:,} (stored as bf16) |")
    A("\nPer-layer embeddings (PLE, Gemma-3n style): each token also looks up a "
      f"[{cfg['num_hidden_layers']}×{cfg['hidden_size_per_layer_input']}] vector that is gated into every layer's "
      "residual stream; the table is looked up, not multiplied. Weights are in Hugging Face "
      "names, one bf16 `model.safetensors`; the LM head is tied to `embed_tokens`.\n")
    A("## Data\n")
    A("* Corpus: the **King James Version of the Bible** (1611; public domain — its copyright has "
      "long expired), as shipped by the Debian package **`bible-kjv-text`** and printed with the "
      "`bible` program of the Debian package **`bible-kjv`** (the packaging/program is GPL-2+, the "
      "text itself is public domain; see /usr/share/doc/bible-kjv-text/copyright).")
    A("* Each chapter (1189) is one document: its verses joined by spaces, verse numbers and headings "
      "dropped. Every 50th chapter (index % 50 == 25; 24 chapters, ~80 KB) is **held out**: "
      "never trained on and not seen by the tokenizer trainer. It ships as `heldout.txt` "
      "(one chapter per line).")
    A("* Tokenizer: SentencePiece BPE, 4096 pieces, byte_fallback (any UTF-8 encodes), trained on "
      "the training split; ids pad=0, eos(`</s>`)=1, bos(`<s>`)=2, unk=3. Documents are "
      "`[BOS] pieces [EOS]`.\n")
    A("## Training\n")
    gc = s["gran_counts"]
    A(f"* {s['steps']} steps of {s['batch']}×{s['ctx']} tokens = **{s['tokens_seen']:,} tokens seen** "
      f"(~{s['tokens_seen'] / max(1, _train_tokens(s)):.1f} epochs of the training split), "
      f"**{s['train_secs'] / 60:.1f} min** of training on 2 CPU cores (f32, torch.set_num_threads(2)), "
      f"{s['tokens_per_sec']:.0f} tokens/s on average; {s['wall_secs'] / 60:.1f} min wall time for the "
      "whole run including data preparation, export, evaluation and samples.")
    A(f"* AdamW (β=0.9/0.95, weight decay {s['weight_decay']} on matrices), peak LR {s['lr']}, "
      f"{s['warmup_steps']} warmup steps, cosine decay to {s['min_lr_frac']}× peak over the training "
      "time budget, gradient clipping 1.0, init normal(0, 0.02) (residual output projections scaled "
      "by 1/sqrt(2L)), norms 1.")
    A(f"* **MatFormer sampling** (MatFormer v2 style): each step samples ONE granularity, p = "
      f"{s['gran_probs']} for S/M/L/XL, and runs every layer at that width; steps per granularity: "
      + ", ".join(f"{k} {v}" for k, v in gc.items()) + ". "
      "Why one granularity per step rather than averaging the loss of all four every step (the "
      "original MatFormer recipe): a joint step costs about the forward+backward of S+M+L+XL, "
      "roughly 2.5× an XL step, so on 2 CPU cores it would cut the number of optimizer steps by "
      "~2.5× in the same wall time. Sampling gives every granularity an unbiased share of the "
      "gradient signal at the cost of one submodel per step; XL is up-weighted because its "
      "neurons beyond L are trained *only* on XL steps, while the first 192 neurons (S) are "
      "trained on every step. Mixed per-layer widths (e.g. S-S-M-M-L-L) are never trained "
      "directly; they work because every prefix of each layer's FFN is trained to be useful.")
    A("* Reproduce: `/usr/bin/python3 train/train.py --out models/default` (see train/README.md). "
      "The schedule follows training wall time, so a rerun on another machine takes as long but "
      "makes a different number of steps.\n")
    A("## Held-out loss\n")
    A(f"Computed by `train/eval_reference.py` (the PyTorch reference, exported bf16 weights "
      f"upcast to f32) on `heldout.txt`: {ev[0]['tokens']:,} predicted tokens, the stream of "
      "`[BOS] doc [EOS]` cut into independent 256-token blocks (protocol in "
      "train/matformer_ref/evaluate.py). Nats per token; the same numbers are in `quality.json`.\n")
    A("| submodel | active params | loss (reference) | ppl | loss (C++ engine) |\n|---|---|---|---|---|")
    for r in ev:
        A(f"| {r['name']} | {r['active_params']:,} | {r['loss']:.4f} | {r['ppl']:.2f} | |")
    order = [r["loss"] for r in uni]
    ok = all(order[i] > order[i + 1] for i in range(len(order) - 1))
    A("\nS > M > L > XL strictly: **%s**.\n" % ("yes" if ok else "NO"))
    A("## Samples\n")
    A("Up to 40 new tokens after `<s>` + prompt (in bold), reference implementation. Greedy, "
      "and sampled with temperature 0.8, top-k 40, seed 7 (same seed for every submodel, so "
      "sampled continuations often share their start).\n")
    for smp in s["samples"]:
        A(f"**{smp['spec']}** — prompt `{smp['prompt']}`\n")
        A(f"* greedy: **{smp['prompt']}**{_md(smp['greedy'])}")
        A(f"* sampled: **{smp['prompt']}**{_md(smp['sampled'])}\n")
    A("## Weaknesses\n")
    A("* Small and short-trained: ~%.1f epochs of a 1M-token corpus; greedy decoding loops "
      "(\"the LORD, and the LORD, ...\"), sampled text is grammatical-looking KJV pastiche "
      "without meaning. It knows no English beyond the KJV." % (s["tokens_seen"] / max(1, _train_tokens(s))))
    A("* The submodels are close: XL beats S by only %.3f nats. The training run shared the "
      "2 cores with C++ builds and benchmarks for much of its time (%.0f tokens/s on average, "
      "~900 tokens/s when the machine was otherwise idle), so it saw about half the tokens an idle "
      "machine would give in the same time; the large widths, whose tail neurons only train on "
      "their own steps, profit most from more training." % (uni[0]["loss"] - uni[-1]["loss"], s["tokens_per_sec"]))
    A("* Skipping a layer costs much more than narrowing FFNs (layer skipping is never trained).\n")
    A("## Licence\n")
    A("The weights, tokenizer and held-out text are released into the public domain (CC0 1.0): "
      "the training text is public domain and the weights were trained from scratch by this "
      "project. Intended for testing and demonstrating the inference server, not for any "
      "real use; the model knows only KJV English and produces plausible-sounding but "
      "meaningless verse.")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _md(t):
    return t.replace("*", "\\*").replace("\n", " ")


def _train_tokens(s):
    return s.get("train_tokens", 988237)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/default")
    ap.add_argument("--stats", default="build/train/train_stats.json")
    a = ap.parse_args()
    with open(a.stats) as f:
        s = json.load(f)
    with open(os.path.join(a.out, "config.json")) as f:
        cfg = json.load(f)
    write(a.out, s, cfg)
