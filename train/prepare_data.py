#!/usr/bin/python3
"""Corpus extraction, train/held-out split and SentencePiece tokenizer.

Corpus: the King James Version of the Bible (public domain, 1611), as shipped
by the Debian package `bible-kjv-text` and printed by the `bible` program of
the Debian package `bible-kjv` (`apt-get install bible-kjv`, which pulls in
bible-kjv-text). This script installs nothing.

Documents are chapters (1189 of them); each document is one line of text, the
chapter's verses joined by single spaces (verse numbers and headings dropped).
Held-out split: every 50th chapter (index % 50 == 25), i.e. 24 chapters spread
over the whole book, never trained on and never seen by the tokenizer trainer.

Outputs (in --work):
  data/train.txt        training chapters, one per line
  data/heldout.txt      held-out chapters, one per line (also copied to --heldout_out)
  tokenizer.model/.vocab SentencePiece BPE, vocab 4096, byte_fallback
  data/train_tokens.npy int32 stream: for each chapter [BOS] + pieces + [EOS]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

import numpy as np

HELDOUT_EVERY = 50
HELDOUT_PHASE = 25


def extract_kjv():
    exe = shutil.which("bible")
    if exe is None:
        sys.exit("the `bible` program is missing: apt-get install bible-kjv")
    out = subprocess.run([exe, "-l1000000", "Gen1:1-Rev22:21"], check=True,
                         capture_output=True, text=True).stdout
    chapters, cur = [], None
    for line in out.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^\s+(\d+)\s+(.*)$", line)
        if m:
            cur.append(m.group(2).strip())
        else:  # chapter heading, e.g. "Genesis 1"
            cur = []
            chapters.append((line.strip(), cur))
    docs = [" ".join(v) for _, v in chapters]
    docs = [re.sub(r"\s+", " ", d).strip() for d in docs]
    if len(docs) != 1189:
        sys.exit(f"expected 1189 chapters, got {len(docs)}")
    return [h for h, _ in chapters], docs


def split(docs):
    train, held = [], []
    for i, d in enumerate(docs):
        (held if i % HELDOUT_EVERY == HELDOUT_PHASE else train).append(d)
    return train, held


def train_tokenizer(train_docs, work, vocab_size):
    import sentencepiece as spm
    # Sentences for the trainer: verses are long enough; use the chapter lines
    # split at sentence-ish boundaries to stay under max_sentence_length.
    sents_path = os.path.join(work, "data", "spm_input.txt")
    with open(sents_path, "w") as f:
        for d in train_docs:
            for s in re.split(r"(?<=[.;:?!])\s+", d):
                if s:
                    f.write(s + "\n")
    prefix = os.path.join(work, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=sents_path, model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, split_digits=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="</s>", bos_piece="<s>", unk_piece="<unk>",
        num_threads=2, max_sentence_length=16384, minloglevel=2)
    return prefix + ".model"


def encode_docs(sp, docs):
    """[BOS] + pieces + [EOS] for each document, concatenated."""
    out = []
    for d in docs:
        out.append(sp.bos_id())
        out.extend(sp.encode(d))
        out.append(sp.eos_id())
    return np.asarray(out, dtype=np.int32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="build/train")
    ap.add_argument("--heldout_out", default="models/default/heldout.txt")
    ap.add_argument("--vocab_size", type=int, default=4096)
    args = ap.parse_args(argv)
    prepare(args.work, args.heldout_out, args.vocab_size)


def prepare(work, heldout_out, vocab_size=4096):
    import sentencepiece as spm
    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    _, docs = extract_kjv()
    train_docs, held_docs = split(docs)
    with open(os.path.join(work, "data", "train.txt"), "w") as f:
        f.write("\n".join(train_docs) + "\n")
    with open(os.path.join(work, "data", "heldout.txt"), "w") as f:
        f.write("\n".join(held_docs) + "\n")
    if heldout_out:
        os.makedirs(os.path.dirname(os.path.abspath(heldout_out)), exist_ok=True)
        shutil.copyfile(os.path.join(work, "data", "heldout.txt"), heldout_out)
    tok = train_tokenizer(train_docs, work, vocab_size)
    sp = spm.SentencePieceProcessor(model_file=tok)
    train_tokens = encode_docs(sp, train_docs)
    np.save(os.path.join(work, "data", "train_tokens.npy"), train_tokens)
    held_tokens = encode_docs(sp, held_docs)
    info = {"train_docs": len(train_docs), "heldout_docs": len(held_docs),
            "train_bytes": sum(len(d) + 1 for d in train_docs),
            "heldout_bytes": sum(len(d) + 1 for d in held_docs),
            "train_tokens": int(train_tokens.size), "heldout_tokens": int(held_tokens.size),
            "tokenizer": tok, "pieces": sp.get_piece_size()}
    print("data:", info, flush=True)
    return info


if __name__ == "__main__":
    main()
