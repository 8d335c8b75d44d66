#!/usr/bin/env python3
"""Write GGUF files with GPT-2 124M shapes and random weights, for llama-bench.

Mirrors what llama.cpp's convert_hf_to_gguf.py (conversion/gpt2.py, GPT2Model)
writes for the GPT2 architecture: same metadata keys, same tensor names, no
separate output.weight (llama.cpp then uses token_embd.weight as the LM head).

Weights: normal(0, 0.02); layer-norm weights 1, biases 0. All 2-D matrices
(token_embd + per-layer attn_qkv / attn_output / ffn_up / ffn_down) are
quantized to the chosen type (q8_0 or q4_0) with gguf.quants.quantize; norms,
biases and position_embd stay f32.

Orientation: numpy arrays are [out, in] (row-major); GGUFWriter reverses the
shape so GGUF/ggml sees ne = [in, out], which is what llama.cpp expects
(e.g. attn_qkv ne = {n_embd, 3*n_embd}).

Usage: python3 make_gguf.py [q8_0|q4_0 ...] [--outdir DIR] [--seed N]
"""
import argparse
import json
import os
import sys

import numpy as np
import gguf
from gguf.quants import quantize

HP = dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12, n_ff=3072, eps=1e-5)
# Any directory with GPT-2's vocab.json and merges.txt (the shared tiny model has the real ones).
TOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../shared/models/tiny-gpt2")

QTYPES = {
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}


def load_tokenizer(tok_dir):
    with open(os.path.join(tok_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    n = max(vocab.values()) + 1
    assert n == HP["n_vocab"], n
    tokens = [None] * n
    for tok, i in vocab.items():
        tokens[i] = tok
    assert all(t is not None for t in tokens)
    # convert_hf_to_gguf: added/special tokens (<|endoftext|>) -> CONTROL, others NORMAL
    toktypes = [gguf.TokenType.NORMAL] * n
    toktypes[50256] = gguf.TokenType.CONTROL
    merges = []
    with open(os.path.join(tok_dir, "merges.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#version"):
                continue
            merges.append(line)
    return tokens, toktypes, merges


def write(qname, outdir, seed, tok):
    qtype, ftype = QTYPES[qname]
    rng = np.random.default_rng(seed)
    E, V, C, F, L = HP["n_embd"], HP["n_vocab"], HP["n_ctx"], HP["n_ff"], HP["n_layer"]

    def randn(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))

    path = os.path.join(outdir, f"gpt2-124m-{qname}.gguf")
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])  # general.architecture = "gpt2"

    # --- metadata, as GPT2Model.set_gguf_parameters / prepare_metadata write it
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"GPT-2 124M random-weights ({qname})")
    w.add_block_count(L)
    w.add_context_length(C)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(HP["n_head"])
    w.add_layer_norm_eps(HP["eps"])
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # --- tokenizer, as _set_vocab_gpt2 + SpecialVocab write it
    tokens, toktypes, merges = tok
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    w.add_token_merges(merges)
    w.add_bos_token_id(50256)
    w.add_eos_token_id(50256)
    w.add_unk_token_id(50256)

    # --- tensors
    def mat(name, arr):  # arr: [out, in] float32 -> quantized
        q = quantize(arr, qtype)
        w.add_tensor(name, q, raw_dtype=qtype)

    def f32(name, arr):
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))

    ones = lambda n: np.ones(n, dtype=np.float32)
    zeros = lambda n: np.zeros(n, dtype=np.float32)

    mat("token_embd.weight", randn(V, E))          # ne = [768, 50257]; also the LM head
    f32("position_embd.weight", randn(C, E))       # ne = [768, 1024]
    for i in range(L):
        p = f"blk.{i}."
        f32(p + "attn_norm.weight", ones(E))
        f32(p + "attn_norm.bias", zeros(E))
        mat(p + "attn_qkv.weight", randn(3 * E, E))  # ne = [768, 2304]
        f32(p + "attn_qkv.bias", zeros(3 * E))
        mat(p + "attn_output.weight", randn(E, E))   # ne = [768, 768]
        f32(p + "attn_output.bias", zeros(E))
        f32(p + "ffn_norm.weight", ones(E))
        f32(p + "ffn_norm.bias", zeros(E))
        mat(p + "ffn_up.weight", randn(F, E))        # ne = [768, 3072]
        f32(p + "ffn_up.bias", zeros(F))
        mat(p + "ffn_down.weight", randn(E, F))      # ne = [3072, 768]
        f32(p + "ffn_down.bias", zeros(E))
    f32("output_norm.weight", ones(E))
    f32("output_norm.bias", zeros(E))
    # no output.weight: llama.cpp falls back to token_embd.weight (tied, as in GPT-2)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("types", nargs="*", help="q8_0 and/or q4_0 (default: both)")
    ap.add_argument("--outdir", default=".")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokdir", default=TOK_DIR)
    a = ap.parse_args()
    a.types = a.types or ["q8_0", "q4_0"]
    for t in a.types:
        if t not in QTYPES:
            ap.error(f"unknown type {t}; choose from {list(QTYPES)}")
    tok = load_tokenizer(a.tokdir)
    for t in a.types:
        write(t, a.outdir, a.seed, tok)


if __name__ == "__main__":
    sys.exit(main())
