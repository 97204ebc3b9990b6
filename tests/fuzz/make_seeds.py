#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).

Run from the repository root after a normal build (it needs the Python stubs
in build/proto/python):  /usr/bin/python3 tests/fuzz/make_seeds.py
The seeds are committed; this script says where they came from.
"""
import hashlib
import json
import os
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "build", "proto", "python"))
from matformer.v1 import matformer_pb2 as pb  # noqa: E402

CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def requests():
    # First byte: message type in bits 0-5 (0 Generate, 1 Score, 2 Tokenize); bit 6: the tiny
    # Gemma 3n checkpoint instead of the default model; bit 7: the call has a deadline.
    g = pb.GenerateRequest(text="And God said", max_new_tokens=8, tier="interactive")
    write("request", "generate_text", b"\x00" + g.SerializeToString())
    g = pb.GenerateRequest(max_new_tokens=4, spec_name="S-S-M-M-L-XL", stop_sequences=["\n", "Lord"])
    g.token_ids.ids.extend([2, 45, 7, 100])
    g.sampling.temperature = 0.7
    g.sampling.top_k = 40
    g.sampling.top_p = 0.9
    g.sampling.seed = 3
    g.latency_budget.nanos = 250000000
    write("request", "generate_ids_spec", b"\x80" + g.SerializeToString())
    g = pb.GenerateRequest(text="In the beginning", layer_widths=[192, 384, 384, 768, 768, 1536],
                           skipped_layers=[1], max_expected_loss=5.0, tier="batch")
    write("request", "generate_widths", b"\x00" + g.SerializeToString())
    s = pb.ScoreRequest(text="In the beginning", continuation_text=" God created", tier="standard", spec_name="XL")
    write("request", "score_text", b"\x01" + s.SerializeToString())
    s = pb.ScoreRequest(continuation_token_ids=pb.TokenIds(ids=[5, 6]))
    s.token_ids.ids.extend([2, 10, 11])
    write("request", "score_ids", b"\x81" + s.SerializeToString())
    write("request", "tokenize_text", b"\x02" + pb.TokenizeRequest(text="Let there be light").SerializeToString())
    t = pb.TokenizeRequest()
    t.token_ids.ids.extend([2, 300, 301, 302])
    write("request", "tokenize_ids", b"\x02" + t.SerializeToString())
    g = pb.GenerateRequest(max_new_tokens=6, tier="interactive")
    g.chat.messages.add(role="user", content="the cat")
    write("request", "gemma3n_generate_chat", b"\x40" + g.SerializeToString())
    g = pb.GenerateRequest(max_new_tokens=2)  # over the fuzz build's 64-token prompt limit
    g.chat.messages.add(role="system", content="be brief")
    g.chat.messages.add(role="user", content="the cat")
    g.chat.messages.add(role="assistant", content="is on")
    g.chat.messages.add(role="user", content="the mat")
    write("request", "gemma3n_generate_chat_turns", b"\x40" + g.SerializeToString())
    g = pb.GenerateRequest(text="the cat", layer_widths=[32] * 10 + [128] * 15, skipped_layers=[3, 21])
    write("request", "gemma3n_generate_widths", b"\xc0" + g.SerializeToString())


def tokenizer():
    write("tokenizer", "english", "And God said, Let there be light: and there was light.")
    write("tokenizer", "unicode", "Genèse 1:1 — Au commencement, Dieu créa ✨ 天地")
    write("tokenizer", "invalid_utf8", b"abc\xff\xfe\xc3(\xe2\x82 def")
    write("tokenizer", "ids", b"\xff" + struct.pack("<5i", 2, 100, 7999, -1, 1 << 30))


def safetensors(name, tensors, metadata=None):
    header, data = {}, b""
    for tname, (dtype, shape, payload) in tensors.items():
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    write("safetensors", name, struct.pack("<Q", len(text)) + text + data)


def safetensors_seeds():
    safetensors("f32_bf16", {"a": ("F32", [2, 3], struct.pack("<6f", *range(6))),
                             "b": ("BF16", [4], b"\x80\x3f" * 4)}, {"format": "pt"})
    safetensors("empty_and_scalar", {"empty": ("F32", [0, 4], b""), "scalar": ("F32", [], struct.pack("<f", 1.5))})


def configs():
    shutil.copy(os.path.join(ROOT, "models", "default", "config.json"), os.path.join(CORPUS, "model_config", "default"))
    shutil.copy(os.path.join(ROOT, "tests", "data", "gemma3n-tiny", "config.json"),
                os.path.join(CORPUS, "model_config", "gemma3n_tiny"))


def tiers():
    shutil.copy(os.path.join(ROOT, "deploy", "tiers.json"), os.path.join(CORPUS, "tiers", "deploy"))
    write("tiers", "minimal", '{"tiers": [{"name": "a", "latency_budget_ms": 0.5}]}')
    write("tiers", "empty", '{"tiers": []}')


def auth_tokens():
    digest = hashlib.sha256(b"hashed-token-0123456789").hexdigest()
    file = json.dumps({"alice-token-0123456789": {"name": "alice", "tiers": ["interactive", "none"]},
                       "ops-token-0123456789abcdef": {"name": "ops", "tiers": "*"},
                       "sha256:" + digest: {"name": "hashed", "tiers": ["batch"]}})
    write("auth_tokens", "alice", "Bearer alice-token-0123456789\n" + file)
    write("auth_tokens", "hashed", "bearer  hashed-token-0123456789\n" + file)
    write("auth_tokens", "unknown", "Basic dXNlcjpwYXNz\n" + file)


if __name__ == "__main__":
    requests()
    tokenizer()
    safetensors_seeds()
    configs()
    tiers()
    auth_tokens()
