"""Scoring throughput of the Python module against the gpt2q command, and against Hugging Face
transformers on CPU when it is installed (docs/PERFORMANCE.md, "Python bindings").

    python bench_score.py --model M.g2q --gpt2q BIN --text FILE [--hf-dir CHECKPOINT]

Two workloads, each run by both sides on the same model, threads and windows:
  long   one text of --tokens tokens in windows of --window advancing by --stride:
         model.score(text) against `gpt2q perplexity --ctx W --stride S` (the same windows);
  lines  --lines short lines (sentences of the text): model.score(list) against `gpt2q score`.
Times are the median of --runs runs; the CLI's include loading the model (measured separately
and subtracted), Python's do not. A benchmark, not a test: it asserts nothing.
"""

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

import gpt2q


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli(binary, *args, stdin=None):
    done = subprocess.run([binary, *map(str, args)], input=stdin, capture_output=True, check=True)
    return done.stdout.decode(), done.stderr.decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--gpt2q", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--hf-dir", help="the Hugging Face checkpoint the model was converted from")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()

    model = gpt2q.Model(a.model, ctx=a.window, threads=a.threads)
    text = open(a.text, encoding="utf-8").read()
    W, S = a.window, a.stride
    # <|endoftext|> + text, cut so that the perplexity windows cover it exactly.
    ids = model.tokenize(text)[: a.tokens]
    n = len(ids) + 1
    n = W + S * ((n - W) // S)
    long_text = model.detokenize(ids[: n - 1])
    assert len(model.tokenize(long_text)) == n - 1, "the cut text re-tokenizes differently"
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")) if s.strip()]
    lines = sentences[: a.lines]
    line_tokens = sum(len(model.tokenize(l)) for l in lines)
    print(f"model {a.model} ({model.info['quant']}), {a.threads} threads, window {W}, stride {S}")

    with tempfile.TemporaryDirectory() as tmp:
        long_path = os.path.join(tmp, "long.txt")
        with open(long_path, "w", encoding="utf-8") as f:
            f.write("<|endoftext|>" + long_text)
        lines_path = os.path.join(tmp, "lines.txt")
        with open(lines_path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        common = ["-m", a.model, "-t", a.threads]
        scored = len(model.score(long_text, window=W, stride=S)["logprobs"])
        runs = {
            "load": lambda: cli(a.gpt2q, "score", *common, "-f", "-", stdin=b""),
            "py_long": lambda: model.score(long_text, window=W, stride=S),
            "cli_long": lambda: cli(
                a.gpt2q, "perplexity", *common, "-f", long_path, "--ctx", W, "--stride", S
            ),
            "py_lines": lambda: model.score(lines, window=W, stride=S),
            "cli_lines": lambda: cli(
                a.gpt2q, "score", *common, "-f", lines_path, "--ctx", W, "--stride", S
            ),
        }
        # Interleaved, so that a change in the machine's load hits both sides alike.
        times = {k: [] for k in runs}
        for _ in range(a.runs):
            for k, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        load = med["load"]
        py_long, py_lines = med["py_long"], med["py_lines"]
        cli_long, cli_lines = med["cli_long"] - load, med["cli_lines"] - load

    print(f"(gpt2q score on no input, i.e. loading the model: {load:.3f} s, subtracted below)")
    print("| workload | tokens scored | gpt2q CLI tok/s | Python tok/s | Python / CLI time |")
    print("|---|---|---|---|---|")
    print(f"| one text, windows {W}/{S} | {scored} | {scored / cli_long:.0f} | {scored / py_long:.0f} | {py_long / cli_long:.3f} |")
    print(f"| {len(lines)} lines | {line_tokens} | {line_tokens / cli_lines:.0f} | {line_tokens / py_lines:.0f} | {py_lines / cli_lines:.3f} |")

    if a.hf_dir:
        bench_transformers(a, long_text, lines, W, S, scored, line_tokens, py_long, py_lines)


def bench_transformers(a, long_text, lines, W, S, scored, line_tokens, py_long, py_lines):
    try:
        import torch
        from transformers import GPT2LMHeadModel, GPT2TokenizerFast
    except ImportError:
        print("transformers/torch not installed: no comparison with them")
        return
    torch.set_num_threads(a.threads)
    tok = GPT2TokenizerFast.from_pretrained(a.hf_dir)
    hf = GPT2LMHeadModel.from_pretrained(a.hf_dir, torch_dtype=torch.float32).eval()
    eos = tok.eos_token_id

    def logprobs(ids):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0]
        return torch.log_softmax(logits.float(), -1)

    def score_long():
        seq = [eos] + tok.encode(long_text)
        start, done, out = 0, 1, []
        while True:
            end = min(start + W, len(seq))
            lp = logprobs(seq[start:end])
            for t in range(max(done, start + 1), end):
                out.append(lp[t - 1 - start, seq[t]].item())
            done = end
            if end == len(seq):
                return out
            start = min(start + S, len(seq) - W)

    def score_lines():
        for line in lines:
            seq = [eos] + tok.encode(line)
            lp = logprobs(seq)
            [lp[t - 1, seq[t]].item() for t in range(1, len(seq))]

    hf_long = median_time(score_long, a.runs)
    hf_lines = median_time(score_lines, a.runs)
    print(f"| transformers {a.threads} threads, one text | {scored} | {scored / hf_long:.0f} tok/s | gpt2q Python is {hf_long / py_long:.2f}x faster |")
    print(f"| transformers {a.threads} threads, {len(lines)} lines | {line_tokens} | {line_tokens / hf_lines:.0f} tok/s | gpt2q Python is {hf_lines / py_lines:.2f}x faster |")


if __name__ == "__main__":
    main()
