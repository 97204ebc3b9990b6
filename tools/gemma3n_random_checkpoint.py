#!/usr/bin/python3
"""Writes a random-weight Gemma 3n text checkpoint in Hugging Face layout.

For benchmarks and smoke tests at real shapes without downloading Google's
weights: config.json (Gemma3nForCausalLM) and one model.safetensors with every
`model.language_model.*` tensor core/gemma3n loads, in bf16 (or f32). The data
is streamed tensor by tensor in chunks, so an E4B-sized file (~15 GB) needs
little memory. Presets follow the published E2B / E4B text configs; --layers
and --vocab shrink them (kv-shared layers and the attention pattern follow).

  /usr/bin/python3 tools/gemma3n_random_checkpoint.py --preset e2b --out /tmp/e2b
"""
import argparse
import json
import os
import struct

import numpy as np

PRESETS = {
    # hidden, ffn, layers, heads, kv heads, head_dim, kv-shared layers
    "e2b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=30, num_attention_heads=8,
                num_key_value_heads=2, head_dim=256, num_kv_shared_layers=10),
    "e4b": dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=35, num_attention_heads=8,
                num_key_value_heads=2, head_dim=256, num_kv_shared_layers=15),
}


def make_config(preset, layers, vocab):
    p = dict(PRESETS[preset])
    full_layers = p["num_hidden_layers"]
    if layers:
        # Keep the published share of KV-shared layers, in whole attention periods of 5.
        p["num_kv_shared_layers"] = max(0, round(p["num_kv_shared_layers"] * layers / full_layers / 5) * 5)
        p["num_hidden_layers"] = layers
    L = p["num_hidden_layers"]
    return {
        "architectures": ["Gemma3nForCausalLM"],
        "model_type": "gemma3n_text",
        "vocab_size": vocab + 256 if vocab == 262144 else vocab,
        "vocab_size_per_layer_input": vocab,
        "hidden_size": p["hidden_size"],
        "intermediate_size": [p["intermediate_size"]] * L,
        "num_hidden_layers": L,
        "num_attention_heads": p["num_attention_heads"],
        "num_key_value_heads": p["num_key_value_heads"],
        "head_dim": p["head_dim"],
        "hidden_size_per_layer_input": 256,
        "laurel_rank": 64,
        "altup_num_inputs": 4,
        "altup_active_idx": 0,
        "altup_correct_scale": True,
        "altup_coef_clip": 120.0,
        "num_kv_shared_layers": p["num_kv_shared_layers"],
        "layer_types": ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(L)],
        "sliding_window": 512,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "activation_sparsity_pattern": [0.95 if i < 10 else 0.0 for i in range(L)],
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
        "pad_token_id": 0,
        "torch_dtype": "bfloat16",
    }


def tensors(c):
    """(name, shape, mean, std) of every tensor, in the order core/gemma3n expects them."""
    d, n, dp = c["hidden_size"], c["altup_num_inputs"], c["hidden_size_per_layer_input"]
    L, hd = c["num_hidden_layers"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = [("embed_tokens.weight", (c["vocab_size"], d), 0, 0.4 / d ** 0.5 * 5),
           ("embed_tokens_per_layer.weight", (c["vocab_size_per_layer_input"], L * dp), 0, 0.05),
           ("per_layer_model_projection.weight", (L * dp, d), 0, d ** -0.5),
           ("per_layer_projection_norm.weight", (dp,), 1, 0.1),
           ("norm.weight", (d,), 1, 0.1)]
    for i in range(n - 1):
        out.append((f"altup_projections.{i}.weight", (d, d), 0, d ** -0.5))
        out.append((f"altup_unembed_projections.{i}.weight", (d, d), 0, d ** -0.5))
    for l in range(L):
        ff = c["intermediate_size"][l]
        p = f"layers.{l}."
        out += [(p + "altup.correct_output_scale", (d,), 0.8, 0.2),
                (p + "altup.correction_coefs.weight", (n, n), 0, 0.3),
                (p + "altup.prediction_coefs.weight", (n * n, n), 0, 0.3),
                (p + "altup.modality_router.weight", (n, d), 0, 1.0),
                (p + "altup.router_norm.weight", (d,), 1, 0.1),
                (p + "input_layernorm.weight", (d,), 1, 0.1),
                (p + "self_attn.q_proj.weight", (q, d), 0, d ** -0.5),
                (p + "self_attn.k_proj.weight", (kv, d), 0, d ** -0.5),
                (p + "self_attn.v_proj.weight", (kv, d), 0, d ** -0.5),
                (p + "self_attn.o_proj.weight", (d, q), 0, q ** -0.5),
                (p + "self_attn.q_norm.weight", (hd,), 0.7, 0.1),
                (p + "self_attn.k_norm.weight", (hd,), 0.7, 0.1),
                (p + "post_attention_layernorm.weight", (d,), 0.3, 0.1),
                (p + "laurel.linear_left.weight", (c["laurel_rank"], d), 0, d ** -0.5),
                (p + "laurel.linear_right.weight", (d, c["laurel_rank"]), 0, c["laurel_rank"] ** -0.5),
                (p + "laurel.post_laurel_norm.weight", (d,), 1, 0.1),
                (p + "pre_feedforward_layernorm.weight", (d,), 1, 0.1),
                (p + "mlp.gate_proj.weight", (ff, d), 0, d ** -0.5),
                (p + "mlp.up_proj.weight", (ff, d), 0, d ** -0.5),
                (p + "mlp.down_proj.weight", (d, ff), 0, ff ** -0.5),
                (p + "post_feedforward_layernorm.weight", (d,), 0.3, 0.1),
                (p + "per_layer_input_gate.weight", (dp, d), 0, d ** -0.5),
                (p + "per_layer_projection.weight", (d, dp), 0, dp ** -0.5),
                (p + "post_per_layer_input_norm.weight", (d,), 0.3, 0.1)]
    return [("model.language_model." + name, shape, mean, std) for name, shape, mean, std in out]


def to_bf16(values):
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even (no NaNs here)
    return rounded.astype(np.uint16)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="e2b")
    parser.add_argument("--layers", type=int, default=0, help="fewer layers than the preset (0 = as published)")
    parser.add_argument("--vocab", type=int, default=262144, help="PLE vocabulary (the text vocabulary adds 256 "
                        "multimodal ids when it is 262144, as published)")
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    config = make_config(args.preset, args.layers, args.vocab)
    if args.dtype == "f32":
        config["torch_dtype"] = "float32"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    entries = sorted(tensors(config))  # safetensors headers list names sorted; data follows in that order
    element = 2 if args.dtype == "bf16" else 4
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _, _ in entries:
        size = int(np.prod(shape)) * element
        header[name] = {"dtype": "BF16" if args.dtype == "bf16" else "F32", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    rng = np.random.default_rng(args.seed)
    chunk_elements = 1 << 24
    with open(os.path.join(args.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for name, shape, mean, std in entries:
            remaining = int(np.prod(shape))
            while remaining:
                count = min(remaining, chunk_elements)
                values = (mean + std * rng.standard_normal(count, dtype=np.float32)).astype(np.float32)
                f.write((to_bf16(values) if args.dtype == "bf16" else values).tobytes())
                remaining -= count
    print(f"wrote {args.out}: {config['num_hidden_layers']} layers, {offset / 1e9:.2f} GB of weights")


if __name__ == "__main__":
    main()
