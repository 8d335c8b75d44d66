"""Memory: scoring many lines stays within the plan plus a bounded batch; no growth per call."""

import gc

import gpt2q
from conftest import Q8_MODEL

MIB = 1024 * 1024


def rss():
    """Current resident set size in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def reset_peak():
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def test_scoring_ten_thousand_lines_in_one_call_stays_bounded():
    m = gpt2q.Model(Q8_MODEL, ctx=64)
    # Short lines (one or two tokens, as a word list has) keep the test to seconds; a session
    # per line or every line's logits kept would still show as hundreds of MiB.
    words = ["the", "sea", "dog", "house", "night", "and", "city", "time"]
    lines = [words[i % 8] + ("" if i % 3 else " " + words[(i // 8) % 8]) for i in range(10_000)]
    m.score(lines[:50])  # the scoring session exists from here on
    gc.collect()
    reset_peak()
    before = rss()
    results = m.score(lines)
    peak = peak_rss() - before
    assert len(results) == 10_000 and results[-1]["text"] == lines[-1]
    # What the results themselves take, measured by freeing them.
    with_results = rss()
    del results
    gc.collect()
    results_size = max(0, with_results - rss())
    print(f"peak growth {peak / MIB:.1f} MiB, of which results {results_size / MIB:.1f} MiB")
    # One text's logits are 50257 x 4 bytes per token: holding them for every line would be
    # about 3 GiB, a session per line more.
    assert peak - results_size < 32 * MIB


def test_no_growth_over_a_thousand_calls():
    m = gpt2q.Model(Q8_MODEL, ctx=64)

    def calls(n):
        for i in range(n):
            m.score("a short line %d" % i)
            m.generate("Hi", max_tokens=2, seed=i)
            m.tokenize("some text")

    calls(100)
    gc.collect()
    before = rss()
    calls(1000)
    gc.collect()
    grown = rss() - before
    print(f"RSS grew {grown / 1024:.0f} KiB over 1000 calls")
    assert grown < 4 * MIB


def test_models_are_freed():
    def load_and_use():
        m = gpt2q.Model(Q8_MODEL, ctx=64)
        m.score("x")
        m.chat(max_tokens=2, seed=1).send("hi")
        del m
        gc.collect()

    # Warm up: the allocator settles (arenas of new threads, glibc's mmap threshold).
    for _ in range(10):
        load_and_use()
    before = rss()
    for _ in range(30):
        load_and_use()
    grown = rss() - before
    size = Q8_MODEL.stat().st_size
    print(f"RSS grew {grown / MIB:.1f} MiB over 30 loads of a {size / MIB:.1f} MiB model")
    # The allocator may keep the pages of one freed scoring session (about 26 MiB at ctx 64:
    # glibc raises its mmap threshold after a large free), but not one per load: keeping a
    # model file, a session or anything over 1.7 MiB per load would exceed this.
    assert grown < 3 * size
