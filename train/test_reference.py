#!/usr/bin/python3
"""Self-checks of the reference: an independent per-token numpy transcription
of docs/model-format.md's forward pass vs model.py, spec parsing, and a
safetensors round trip (incl. bf16 rounding). Run:
  /usr/bin/python3 train/test_reference.py [--model_dir D]
"""
import argparse
import math
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matformer_ref import safetensors_io as st  # noqa: E402
from matformer_ref.model import MatFormerPLE  # noqa: E402
from matformer_ref.spec import parse_spec, canonical_name  # noqa: E402


def np_forward(W, c, tokens, widths, skipped):
    d, L, dp = c["hidden_size"], c["num_hidden_layers"], c["hidden_size_per_layer_input"]
    H, KV, hd, eps = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"]
    W = {k: v.astype(np.float64) for k, v in W.items()}

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x) + eps) * w

    def act(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def rope(x, p):
        y = x.copy()
        for i in range(hd // 2):
            a = p * c["rope_theta"] ** (-2 * i / hd)
            y[i] = x[i] * math.cos(a) - x[i + hd // 2] * math.sin(a)
            y[i + hd // 2] = x[i + hd // 2] * math.cos(a) + x[i] * math.sin(a)
        return y

    E = W["model.embed_tokens.weight"]
    kcache = {l: [] for l in range(L)}
    vcache = {l: [] for l in range(L)}
    out = []
    for p, t in enumerate(tokens):
        h = E[t] * math.sqrt(d)
        proj = (W["model.per_layer_model_projection.weight"] @ h * d ** -0.5).reshape(L, dp)
        proj = np.stack([rms(proj[l], W["model.per_layer_projection_norm.weight"]) for l in range(L)])
        ple = (proj + W["model.embed_tokens_per_layer.weight"][t].reshape(L, dp) * math.sqrt(dp)) * 2 ** -0.5
        for l in range(L):
            if l in skipped:
                continue
            P = f"model.layers.{l}."
            x = rms(h, W[P + "input_layernorm.weight"])
            q = (W[P + "self_attn.q_proj.weight"] @ x).reshape(H, hd)
            k = (W[P + "self_attn.k_proj.weight"] @ x).reshape(KV, hd)
            v = (W[P + "self_attn.v_proj.weight"] @ x).reshape(KV, hd)
            q = np.stack([rope(q[j], p) for j in range(H)])
            k = np.stack([rope(k[j], p) for j in range(KV)])
            kcache[l].append(k)
            vcache[l].append(v)
            o = np.zeros((H, hd))
            for j in range(H):
                kv = j // (H // KV)
                s = np.array([q[j] @ kk[kv] for kk in kcache[l]]) / math.sqrt(hd)
                s = np.exp(s - s.max())
                s /= s.sum()
                o[j] = sum(s[i] * vcache[l][i][kv] for i in range(len(s)))
            h = h + W[P + "self_attn.o_proj.weight"] @ o.reshape(-1)
            x = rms(h, W[P + "post_attention_layernorm.weight"])
            m = widths[l]
            f = act(W[P + "mlp.gate_proj.weight"][:m] @ x) * (W[P + "mlp.up_proj.weight"][:m] @ x)
            h = h + W[P + "mlp.down_proj.weight"][:, :m] @ f
            g = act(W[P + "per_layer_input_gate.weight"] @ h) * ple[l]
            h = h + rms(W[P + "per_layer_projection.weight"] @ g, W[P + "post_per_layer_input_norm.weight"])
        out.append(rms(h, W["model.norm.weight"]) @ E.T)
    return np.stack(out)


def small_config():
    return dict(vocab_size=300, hidden_size=32, intermediate_size=64, granularities=[8, 16, 32, 64],
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, hidden_size_per_layer_input=8,
                num_hidden_layers=3, max_position_embeddings=64)


def check_forward(model, tokens, specs, tol=1e-4):
    W = model.state_numpy()
    for spec in specs:
        widths, skipped = parse_spec(spec, model.config)
        ref = np_forward(W, model.config, tokens, widths, skipped)
        got = model(torch.tensor([tokens]), widths, skipped)[0].detach().numpy()
        err = np.abs(ref - got).max()
        print(f"forward {spec:>16s}: max |torch - numpy(doc)| = {err:.2e}")
        assert err < tol, err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model_dir")
    a = ap.parse_args()
    torch.manual_seed(0)
    # non-trivial norm weights so "w" vs "1+w" mistakes show
    m = MatFormerPLE(small_config())
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.mul_(5)
    check_forward(m, [1, 5, 7, 299, 42, 3, 3, 100], ["XL", "S", "S-M-L", "M-skip-XL", "skip-skip-S"])
    # spec names
    c = m.config
    assert parse_spec("S-S-M", c) == ([8, 8, 16], set())
    assert parse_spec("S-skip-L", c) == ([8, 64, 32], {1})
    assert parse_spec("XL", c) == ([64] * 3, set())
    assert canonical_name([16, 16, 16], set(), c) == "M"
    assert canonical_name([8, 64, 32], {1}, c) == "S-skip-L"
    # safetensors round trip + bf16 rounding
    with tempfile.TemporaryDirectory() as td:
        x = np.array([1.0, 1.00390625, 1.01171875, -3.1415926, 0.0, np.inf, 1e-40], np.float32)
        b = st.f32_to_bf16_bits(x)
        # 1+2^-8 is a tie -> even (1.0); 1+3*2^-8 tie -> 1+2^-6
        assert list(st.bf16_bits_to_f32(b)[:3]) == [1.0, 1.0, 1.015625], st.bf16_bits_to_f32(b)
        assert st.bf16_bits_to_f32(b)[3] == np.float32(-3.140625)
        t = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": b, "c": np.arange(3, dtype=np.int64)}
        path = os.path.join(td, "x.safetensors")
        st.save_file(t, path, metadata={"k": "v"})
        raw = open(path, "rb").read()
        n = int.from_bytes(raw[:8], "little")
        assert (8 + n) % 8 == 0
        back, meta, dts = st.load_file(path, with_metadata=True)
        assert meta == {"k": "v"} and dts == {"a": "BF16", "b": "F32", "c": "I64"}
        for k in t:
            assert np.array_equal(back[k], t[k]), k
        hdr = raw[8:8 + n].decode()
        assert hdr.index('"a"') < hdr.index('"b"') < hdr.index('"c"')
        # model export / reload (f32 exact, bf16 == rounded)
        m.export(os.path.join(td, "f32"), dtype="float32")
        m2 = MatFormerPLE.from_dir(os.path.join(td, "f32"))
        for (k, v), (k2, v2) in zip(m.named_parameters(), m2.named_parameters()):
            assert k == k2 and torch.equal(v, v2), k
        m.export(os.path.join(td, "bf16"), dtype="bfloat16")
        m3 = MatFormerPLE.from_dir(os.path.join(td, "bf16"))
        for (k, v), (k2, v2) in zip(m.named_parameters(), m3.named_parameters()):
            exp = st.bf16_bits_to_f32(st.f32_to_bf16_bits(v.detach().numpy()))
            assert np.array_equal(exp, v2.detach().numpy()), k
        st.save_file(st.load_file(os.path.join(td, "bf16", "model.safetensors")), os.path.join(td, "rt.safetensors"),
                     metadata={"format": "pt"})
        assert open(os.path.join(td, "rt.safetensors"), "rb").read() == \
            open(os.path.join(td, "bf16", "model.safetensors"), "rb").read()
    print("safetensors round trip, bf16 rounding, export/reload: ok")
    if a.model_dir:
        md = MatFormerPLE.from_dir(a.model_dir)
        check_forward(md, [2, 100, 200, 300, 400, 17, 9], ["XL", "S-S-M-M-L-L", "S-skip-M-M-L-L"], tol=1e-3)
    print("all reference checks passed")


if __name__ == "__main__":
    main()
