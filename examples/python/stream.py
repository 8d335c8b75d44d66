"""Stream a generation to the terminal as it is sampled; Ctrl-C stops it.

    python examples/python/stream.py [MODEL] [PROMPT]
"""

import sys

import gpt2q

model = gpt2q.Model(sys.argv[1] if len(sys.argv) > 1 else "models/tiny-gpt2-q8.g2q")
prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"

print(prompt, end="", flush=True)
try:
    for piece in model.generate(prompt, max_tokens=200, temperature=0.8, top_k=40, stream=True):
        print(piece, end="", flush=True)
except KeyboardInterrupt:
    print(" [stopped]", end="")
print()
