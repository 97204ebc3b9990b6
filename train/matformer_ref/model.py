"""MatFormer-PLE reference model (docs/model-format.md), PyTorch.

All math is f32. Tensor names match the safetensors names exactly:
`dict(model.named_parameters())` keys == the file's tensor names.
"""
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import safetensors_io as st
from .spec import parse_spec

DEFAULT_CONFIG = {
    "model_type": "matformer_ple",
    "vocab_size": 4096,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_size_per_layer_input": 64,
    "granularities": [192, 384, 768, 1536],
    "granularity_names": ["S", "M", "L", "XL"],
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 1024,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}


def rms_norm(x, w, eps):
    # x / sqrt(mean(x^2) + eps) * w  (no 1 + w)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def _act(name):
    if name == "gelu_pytorch_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    raise ValueError(f"unknown hidden_activation {name!r}")


def _linear(x, w):
    return F.linear(x, w)


def store_kv(x):
    """Keys (after RoPE) and values as a KV cache would hold them; identity here.
    tests/parity replaces it to round to bf16 like the engine's bf16 KV pool."""
    return x


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, H, KV, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.H, self.KV, self.hd = H, KV, hd
        self.q_proj = nn.Linear(d, H * hd, bias=False)
        self.k_proj = nn.Linear(d, KV * hd, bias=False)
        self.v_proj = nn.Linear(d, KV * hd, bias=False)
        self.o_proj = nn.Linear(H * hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.KV, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.KV, self.hd).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = store_kv(apply_rope(k, cos, sin))
        v = store_kv(v)
        rep = self.H // self.KV
        if rep > 1:  # query head j reads kv head j // rep
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
        att = att.masked_fill(mask, float("-inf"))
        att = torch.softmax(att, dim=-1)
        o = torch.matmul(att, v).transpose(1, 2).reshape(B, T, self.H * self.hd)
        return self.o_proj(o)


def rope_tables(T, hd, theta, device=None, offset=0):
    inv_freq = theta ** (-torch.arange(0, hd // 2, dtype=torch.float64, device=device) * 2.0 / hd)
    pos = torch.arange(offset, offset + T, dtype=torch.float64, device=device)
    a = pos[:, None] * inv_freq[None, :]
    return torch.cos(a).float(), torch.sin(a).float()  # [T, hd/2]


def apply_rope(x, cos, sin):
    # rotate-half (GPT-NeoX) style
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.act = _act(c["hidden_activation"])

    def forward(self, x, m):
        # granularity m: first m neurons (views of the weights, no copies)
        g = _linear(x, self.gate_proj.weight[:m])
        u = _linear(x, self.up_proj.weight[:m])
        return _linear(self.act(g) * u, self.down_proj.weight[:, :m])


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, dp, eps = c["hidden_size"], c["hidden_size_per_layer_input"], c["rms_norm_eps"]
        self.input_layernorm = RMSNorm(d, eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.mlp = MLP(c)
        self.per_layer_input_gate = nn.Linear(d, dp, bias=False)
        self.per_layer_projection = nn.Linear(dp, d, bias=False)
        self.post_per_layer_input_norm = RMSNorm(d, eps)
        self.act = _act(c["hidden_activation"])

    def forward(self, h, ple_l, m, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        h = h + self.mlp(self.post_attention_layernorm(h), m)
        g = self.act(self.per_layer_input_gate(h)) * ple_l
        h = h + self.post_per_layer_input_norm(self.per_layer_projection(g))
        return h


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        V, d, L, dp = c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["hidden_size_per_layer_input"]
        self.embed_tokens = nn.Embedding(V, d)
        self.embed_tokens_per_layer = nn.Embedding(V, L * dp)
        self.per_layer_model_projection = nn.Linear(d, L * dp, bias=False)
        self.per_layer_projection_norm = RMSNorm(dp, c["rms_norm_eps"])
        self.layers = nn.ModuleList([DecoderLayer(c) for _ in range(L)])
        self.norm = RMSNorm(d, c["rms_norm_eps"])


class MatFormerPLE(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = dict(DEFAULT_CONFIG)
        c.update(config)
        assert c["model_type"] == "matformer_ple"
        assert c["tie_word_embeddings"], "only tied embeddings are supported"
        assert c["granularities"][-1] == c["intermediate_size"]
        self.config = c
        self.model = Inner(c)
        self.init_weights()

    # ---- init ----
    def init_weights(self, std=0.02):
        L = self.config["num_hidden_layers"]
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "per_layer_projection.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * L))  # scaled residual outputs
            else:
                nn.init.normal_(p, std=std)

    # ---- forward ----
    def per_layer_inputs(self, tokens, h):
        c = self.config
        L, dp, d = c["num_hidden_layers"], c["hidden_size_per_layer_input"], c["hidden_size"]
        m = self.model
        proj = m.per_layer_model_projection(h) * (d ** -0.5)
        proj = proj.view(*proj.shape[:-1], L, dp)
        proj = m.per_layer_projection_norm(proj)
        table = m.embed_tokens_per_layer(tokens).view(*tokens.shape, L, dp) * math.sqrt(dp)
        return (proj + table) * (2 ** -0.5)  # [B, T, L, dp]

    def forward(self, tokens, widths=None, skipped=None, return_hidden=False):
        """tokens [B, T] (long) -> logits [B, T, V] (f32).

        widths: FFN width per layer (default: all XL); skipped: set of layer
        indices run as the identity.
        """
        c = self.config
        L, d = c["num_hidden_layers"], c["hidden_size"]
        if widths is None:
            widths = [c["intermediate_size"]] * L
        elif isinstance(widths, int):
            widths = [widths] * L
        skipped = set(skipped or ())
        for w in widths:
            if w not in c["granularities"]:
                raise ValueError(f"width {w} is not a granularity")
        if tokens.dim() == 1:
            tokens = tokens[None]
        B, T = tokens.shape
        m = self.model
        h = m.embed_tokens(tokens) * math.sqrt(d)
        ple = self.per_layer_inputs(tokens, h)
        cos, sin = rope_tables(T, c["head_dim"], c["rope_theta"], device=tokens.device)
        mask = torch.ones(T, T, dtype=torch.bool, device=tokens.device).triu(1)
        for i, layer in enumerate(m.layers):
            if i in skipped:
                continue
            h = layer(h, ple[:, :, i, :], widths[i], cos, sin, mask)
        h = m.norm(h)
        if return_hidden:
            return h
        return F.linear(h, m.embed_tokens.weight)

    def forward_spec(self, tokens, spec_name):
        widths, skipped = parse_spec(spec_name, self.config)
        return self.forward(tokens, widths, skipped)

    # ---- I/O ----
    def state_numpy(self):
        return {k: v.detach().cpu().float().numpy() for k, v in self.named_parameters()}

    def export(self, out_dir, dtype="bfloat16", tokenizer_path=None, extra_config=None):
        """Write config.json + model.safetensors (+ tokenizer.model)."""
        os.makedirs(out_dir, exist_ok=True)
        cfg = dict(self.config)
        cfg["torch_dtype"] = dtype
        if extra_config:
            cfg.update(extra_config)
        tensors = {}
        for k, v in self.state_numpy().items():
            tensors[k] = st.f32_to_bf16_bits(v) if dtype == "bfloat16" else np.ascontiguousarray(v, dtype=np.float32)
        st.save_file(tensors, os.path.join(out_dir, "model.safetensors"),
                     metadata={"format": "pt"})
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        if tokenizer_path:
            import shutil
            dst = os.path.join(out_dir, "tokenizer.model")
            if os.path.abspath(tokenizer_path) != os.path.abspath(dst):
                shutil.copyfile(tokenizer_path, dst)

    @classmethod
    def from_dir(cls, model_dir):
        """Load a model directory; bf16 weights are upcast to f32."""
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        model = cls(cfg)
        tensors, _, dtypes = st.load_file(os.path.join(model_dir, "model.safetensors"), with_metadata=True)
        params = dict(model.named_parameters())
        extra = set(tensors) - set(params)
        missing = set(params) - set(tensors)
        if extra or missing:
            raise ValueError(f"tensor mismatch: extra={sorted(extra)} missing={sorted(missing)}")
        with torch.no_grad():
            for k, p in params.items():
                a = tensors[k]
                a = st.bf16_bits_to_f32(a) if dtypes[k] == "BF16" else a.astype(np.float32)
                if tuple(a.shape) != tuple(p.shape):
                    raise ValueError(f"{k}: shape {a.shape} != {tuple(p.shape)}")
                p.copy_(torch.from_numpy(np.array(a)))
        model.eval()
        return model
