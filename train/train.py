#!/usr/bin/python3
"""End-to-end training of the default MatFormer-PLE model.

  /usr/bin/python3 train/train.py --out models/default            # everything
  /usr/bin/python3 train/train.py --out models/default --resume   # continue

Steps: corpus extraction + split + tokenizer (prepare_data.py) -> MatFormer
training (one granularity sampled per step, same width in all layers) ->
bf16 export to --out (config.json, model.safetensors, tokenizer.model,
heldout.txt, quality.json) -> held-out eval per submodel with the exported
weights -> samples -> README.md model card.

The LR schedule (linear warmup, cosine decay to min_lr) runs on *training wall
time*: progress = train_seconds / time_budget, so the run ends on budget
whatever the machine's speed. Pass --steps N for a step-based schedule instead.
Checkpoints go to --work (default build/train) every --ckpt_minutes.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matformer_ref.model import MatFormerPLE, DEFAULT_CONFIG  # noqa: E402
from matformer_ref import evaluate as ev  # noqa: E402
import prepare_data  # noqa: E402

SPECS_EVAL = ["S", "M", "L", "XL", "S-S-M-M-L-L", "L-L-M-M-S-S", "XL-XL-L-L-M-M",
              "M-skip-M-M-M-M", "XL-XL-XL-skip-XL-XL"]


def log(msg, fh=None):
    line = time.strftime("%H:%M:%S ") + msg
    print(line, flush=True)


def fmt_t(s):
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def lr_at(step, progress, a):
    if step < a.warmup_steps:
        return a.lr * (step + 1) / a.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def save_ckpt(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def param_groups(model, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/default", help="exported model directory")
    ap.add_argument("--work", default="build/train", help="data, tokenizer, checkpoints, logs")
    ap.add_argument("--resume", action="store_true", help="resume from <work>/ckpt_latest.pt")
    ap.add_argument("--time_budget_minutes", type=float, default=None,
                    help="training-loop wall time; sets the cosine schedule length (default 47; "
                         "on --resume the checkpoint's value unless given)")
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (overrides the time budget)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min_lr_frac", type=float, default=0.1)
    ap.add_argument("--warmup_steps", type=int, default=60)
    ap.add_argument("--weight_decay", type=float, default=0.1)
    ap.add_argument("--grad_clip", type=float, default=1.0)
    ap.add_argument("--gran_probs", default="0.17,0.20,0.22,0.41",
                    help="sampling probability of each granularity (S,M,L,XL) per step")
    ap.add_argument("--ckpt_minutes", type=float, default=4.0)
    ap.add_argument("--ckpt_every_steps", type=int, default=0, help="also checkpoint every N steps (tests)")
    ap.add_argument("--log_every", type=int, default=10)
    ap.add_argument("--val_blocks", type=int, default=16, help="held-out blocks for the in-run val loss")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no_export", action="store_true")
    ap.add_argument("--report_only", action="store_true",
                    help="skip training: export + eval + samples + model card from <work>/ckpt_latest.pt")
    ap.add_argument("--small", action="store_true", help="tiny model (smoke tests)")
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    ckpt_path = os.path.join(a.work, "ckpt_latest.pt")
    t_start = time.time()

    # ---- data ----
    tok_path = os.path.join(a.work, "tokenizer.model")
    tokens_path = os.path.join(a.work, "data", "train_tokens.npy")
    heldout_path = os.path.join(a.work, "data", "heldout.txt")
    if not (a.resume and os.path.exists(tokens_path) and os.path.exists(tok_path)):
        prepare_data.prepare(a.work, None)
    data = np.load(tokens_path).astype(np.int64)
    held_stream = ev.load_stream(heldout_path, tok_path)
    log(f"train tokens {data.size}, held-out tokens {held_stream.size}")

    # ---- model / optimizer ----
    cfg = dict(DEFAULT_CONFIG)
    if a.small:
        cfg.update(hidden_size=64, intermediate_size=256, granularities=[32, 64, 128, 256],
                   num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                   hidden_size_per_layer_input=16, num_hidden_layers=2)
    torch.manual_seed(a.seed)
    model = MatFormerPLE(cfg)
    opt = torch.optim.AdamW(param_groups(model, a.weight_decay), lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    grans = cfg["granularities"]
    probs = np.array([float(x) for x in a.gran_probs.split(",")], dtype=np.float64)
    assert len(probs) == len(grans)
    probs /= probs.sum()
    rng = np.random.RandomState(a.seed)
    step, train_secs, tokens_seen = 0, 0.0, 0
    gran_counts = [0] * len(grans)
    history = []
    budget = (a.time_budget_minutes or 47.0) * 60.0
    if a.resume and os.path.exists(ckpt_path):
        st = torch.load(ckpt_path)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        rng.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        step, train_secs, tokens_seen = st["step"], st["train_secs"], st["tokens_seen"]
        gran_counts, history = st["gran_counts"], st["history"]
        if a.time_budget_minutes is None:
            budget = st.get("budget", budget)
        if st.get("steps", 0) and not a.steps:
            a.steps = st["steps"]
        log(f"resumed from {ckpt_path} at step {step}, {fmt_t(train_secs)} trained, {tokens_seen} tokens")
    nparams = sum(p.numel() for p in model.parameters())
    log(f"model params {nparams} ({nparams / 1e6:.2f}M); schedule: "
        + (f"{a.steps} steps" if a.steps else f"{budget / 60:.1f} min of training time"))

    def progress():
        return step / a.steps if a.steps else train_secs / budget

    def done():
        return step >= a.steps if a.steps else train_secs >= budget

    def checkpoint():
        save_ckpt(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.get_state(),
                              "torch_rng": torch.get_rng_state(), "step": step, "train_secs": train_secs,
                              "tokens_seen": tokens_seen, "gran_counts": gran_counts, "history": history,
                              "budget": budget, "steps": a.steps, "config": cfg, "args": vars(a)})

    def val():
        model.eval()
        res = {}
        for gi in (0, len(grans) - 1):
            l, _ = ev.heldout_loss(model, held_stream, [grans[gi]] * cfg["num_hidden_layers"], set(), a.ctx,
                                   max_blocks=a.val_blocks)
            res[cfg["granularity_names"][gi]] = round(l, 4)
        model.train()
        return res

    # ---- train ----
    model.train()
    last_ckpt = time.time()
    ema, win_tok, win_t = None, 0, 0.0
    n = data.size - a.ctx - 1
    if a.report_only:
        if not os.path.exists(ckpt_path) or not a.resume:
            sys.exit("--report_only needs --resume and an existing checkpoint")
        wall = None
        try:
            with open(os.path.join(a.work, "train_stats.json")) as f:
                wall = json.load(f).get("wall_secs")
        except OSError:
            pass
        export_and_report(model, a, cfg, step, tokens_seen, train_secs, gran_counts, history,
                          wall or (time.time() - t_start), int(data.size))
        return
    while not done():
        t0 = time.time()
        gi = int(rng.choice(len(grans), p=probs))
        width = grans[gi]
        starts = rng.randint(0, n, size=a.batch)
        x = torch.from_numpy(np.stack([data[s:s + a.ctx + 1] for s in starts]))
        lr = lr_at(step, progress(), a)
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(x[:, :-1], [width] * cfg["num_hidden_layers"], set())
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        dt = time.time() - t0
        step += 1
        train_secs += dt
        tokens_seen += a.batch * a.ctx
        gran_counts[gi] += 1
        lv = float(loss)
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        win_tok += a.batch * a.ctx
        win_t += dt
        if step % a.log_every == 0 or step == 1:
            tps = win_tok / max(win_t, 1e-9)
            if a.steps:
                eta = (a.steps - step) * (train_secs / step)
            else:
                eta = budget - train_secs
            log(f"step {step} gran {cfg['granularity_names'][gi]} loss {lv:.4f} ema {ema:.4f} lr {lr:.2e} "
                f"tok/s {tps:.0f} tokens {tokens_seen} trained {fmt_t(train_secs)} ETA {fmt_t(eta)}")
            history.append({"step": step, "loss_ema": round(ema, 4), "tok_s": round(tps, 1),
                            "train_secs": round(train_secs, 1)})
            win_tok, win_t = 0, 0.0
        if (time.time() - last_ckpt > a.ckpt_minutes * 60
                or (a.ckpt_every_steps and step % a.ckpt_every_steps == 0)):
            v = val()
            history.append({"step": step, "val": v})
            checkpoint()
            last_ckpt = time.time()
            log(f"checkpoint step {step} -> {ckpt_path}; val loss {v}")
    checkpoint()
    v = val()
    log(f"training done: {step} steps, {tokens_seen} tokens, {fmt_t(train_secs)} training time; val {v}")
    if a.no_export:
        return
    export_and_report(model, a, cfg, step, tokens_seen, train_secs, gran_counts, history, time.time() - t_start,
                      int(data.size))


def export_and_report(model, a, cfg, step, tokens_seen, train_secs, gran_counts, history, wall_secs,
                      train_tokens):
    import shutil
    import sentencepiece as spm
    from matformer_ref.generate import generate
    from matformer_ref.spec import parse_spec
    out = a.out
    os.makedirs(out, exist_ok=True)
    model.export(out, dtype="bfloat16", tokenizer_path=os.path.join(a.work, "tokenizer.model"))
    shutil.copyfile(os.path.join(a.work, "data", "heldout.txt"), os.path.join(out, "heldout.txt"))
    log(f"exported bf16 model to {out}")
    # evaluate the *exported* weights (bf16 upcast), like the engine sees them
    m2 = MatFormerPLE.from_dir(out)
    specs = SPECS_EVAL if not a.small else ["S", "M", "L", "XL"]
    res = ev.evaluate_specs(m2, out, specs, ctx=a.ctx)
    for r in res:
        log(f"held-out {r['name']:>22s} active {r['active_params']:>9d} loss {r['loss']:.4f} ppl {r['ppl']:.2f}")
    quality = {"dataset": "heldout.txt (KJV Bible, every 50th chapter; see README.md)",
               "tokens": res[0]["tokens"],
               "specs": [{"name": r["name"], "active_params": r["active_params"],
                          "loss": round(r["loss"], 5), "ppl": round(r["ppl"], 4)} for r in res]}
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump(quality, f, indent=2)
        f.write("\n")
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    prompts = ["In the beginning", "And Jesus said unto them,", "The LORD is my shepherd;"]
    samples = []
    for name in cfg["granularity_names"]:
        widths, skipped = parse_spec(name, m2.config)
        for p in prompts:
            gr = generate(m2, sp, p, widths, skipped, 40, temperature=0.0)
            sa = generate(m2, sp, p, widths, skipped, 40, temperature=0.8, top_k=40, seed=7)
            samples.append({"spec": name, "prompt": p, "greedy": gr, "sampled": sa})
    stats = {"steps": step, "tokens_seen": tokens_seen, "train_tokens": train_tokens, "train_secs": train_secs, "wall_secs": wall_secs,
             "gran_counts": dict(zip(cfg["granularity_names"], gran_counts)),
             "tokens_per_sec": tokens_seen / max(train_secs, 1e-9), "batch": a.batch, "ctx": a.ctx,
             "lr": a.lr, "min_lr_frac": a.min_lr_frac, "warmup_steps": a.warmup_steps,
             "weight_decay": a.weight_decay, "gran_probs": a.gran_probs,
             "params": sum(p.numel() for p in m2.parameters()),
             "eval": res, "samples": samples, "history": history}
    with open(os.path.join(a.work, "train_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    import model_card
    model_card.write(out, stats, cfg)
    log(f"wrote {out}/README.md, quality.json; stats in {a.work}/train_stats.json")


if __name__ == "__main__":
    main()
