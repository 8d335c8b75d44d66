"""Chat with the model, one line per turn (DialoGPT's convention, or --template).

    python examples/python/chat.py [MODEL] [--template 'User: {user}\\nBot:']

The conversation stays in the model's KV cache between turns. Ctrl-C stops a reply; Ctrl-D quits.
"""

import sys

import gpt2q

args = sys.argv[1:]
template = None
if "--template" in args:
    i = args.index("--template")
    template = args[i + 1].replace("\\n", "\n")
    del args[i : i + 2]
model = gpt2q.Model(args[0] if args else "models/tiny-gpt2-q8.g2q")
chat = model.chat(template=template, stop="\n" if template else None, max_tokens=60)

while True:
    try:
        line = input("> ")
    except EOFError:
        print()
        break
    if not line.strip():
        continue
    try:
        for piece in chat.send(line, stream=True):
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        print(" [stopped]", end="")
    print()
