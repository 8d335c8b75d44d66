"""Rank sentences by how natural the model finds them (lower perplexity = more natural).

    python examples/python/score_sentences.py [MODEL] [FILE]

Scores each line of FILE (default: a few built-in sentences) in one call and prints them from the
most to the least likely, with each token's surprisal (-log2 p, in bits) for the best one.
"""

import math
import sys

import gpt2q

model = gpt2q.Model(sys.argv[1] if len(sys.argv) > 1 else "models/tiny-gpt2-q8.g2q")
if len(sys.argv) > 2:
    with open(sys.argv[2], encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]
else:
    sentences = [
        "The cat sat on the mat.",
        "Mat the on sat cat the.",
        "It was a dark and stormy night.",
        "Colorless green ideas sleep furiously.",
    ]

scores = sorted(model.score(sentences), key=lambda s: s["perplexity"])
for s in scores:
    print(f"{s['perplexity']:12.1f}  {s['sum_logprob']:9.2f}  {s['text']}")

best = scores[0]
print(f"\nsurprisal of each token of {best['text']!r} (bits):")
for token, lp in zip(best["tokens"], best["logprobs"]):
    print(f"  {model.detokenize([token])!r:>12} {-lp / math.log(2):6.2f}")
