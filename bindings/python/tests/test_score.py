"""Scoring and logits: the CLI's numbers, the reference's, and the documented conventions."""

import math
import re

import numpy as np
import pytest

from conftest import FIXTURES, run_cli

LOGIT_TOLERANCE = 1e-3  # as tests/reference.rs


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def test_a_score_has_its_tokens_logprobs_sum_and_perplexity(q8):
    s = q8.score("The quick brown fox")
    assert s["text"] == "The quick brown fox"
    assert s["tokens"] == q8.tokenize("The quick brown fox")
    assert len(s["logprobs"]) == len(s["tokens"])
    assert all(lp < 0 for lp in s["logprobs"])
    assert s["sum_logprob"] == pytest.approx(sum(s["logprobs"]), abs=1e-9)
    assert s["perplexity"] == pytest.approx(math.exp(-s["sum_logprob"] / len(s["tokens"])))
    batch = q8.score(["The quick brown fox", "", "Café 🙂"])
    assert [b["text"] for b in batch] == ["The quick brown fox", "", "Café 🙂"]
    assert batch[0] == s
    assert batch[1]["tokens"] == [] and batch[1]["perplexity"] is None


def test_logprobs_are_the_log_softmax_from_endoftext(f32):
    text = "It was a dark and stormy night, and"
    s = f32.score(text)
    ids = [f32.info["eos_id"]] + s["tokens"]
    lsm = log_softmax(f32.logits(ids))
    expected = [lsm[i, t] for i, t in enumerate(s["tokens"])]
    assert np.allclose(s["logprobs"], expected, atol=1e-4)


def test_score_agrees_with_the_cli_perplexity_over_the_same_windows(q8, gpt2q_bin, tmp_path):
    text = (FIXTURES / "heldout.txt").read_text(encoding="utf-8")[:2500]
    window, stride = 64, 24
    s = q8.score(text, window=window, stride=stride)
    # The CLI scores <|endoftext|> + text (the sequence score runs) in the same windows; its
    # windows cover the first `covered` tokens, each after the first scored once.
    path = tmp_path / "text.txt"
    path.write_text("<|endoftext|>" + text, encoding="utf-8")
    covered = window + stride * ((len(s["tokens"]) + 1 - window) // stride)
    out = run_cli(
        gpt2q_bin, "perplexity", "-m", FIXTURES.parent.parent / "models/tiny-gpt2-q8.g2q",
        "-f", path, "--ctx", window, "--stride", stride, "--max-tokens", covered,
    )
    cli_mean = float(re.search(r"mean_nll: (\S+)", out).group(1))
    ours = -sum(s["logprobs"][: covered - 1]) / (covered - 1)
    assert abs(ours - cli_mean) < 1e-5, (ours, cli_mean)


def test_score_equals_the_score_command(q8, gpt2q_bin):
    import json

    lines = ["The quick brown fox", "", "a longer line, with punctuation!"]
    out = run_cli(
        gpt2q_bin, "score", "-m", FIXTURES.parent.parent / "models/tiny-gpt2-q8.g2q",
        "-f", "-", "--ctx", 256, stdin="\n".join(lines).encode(),
    )
    cli = [json.loads(l) for l in out.splitlines()]
    ours = q8.score(lines)
    for a, b in zip(ours, cli):
        assert a["tokens"] == b["tokens"]
        assert np.allclose(a["logprobs"], b["logprobs"], rtol=0, atol=1e-12)


def test_logits_match_the_reference(f32, reference):
    for p in reference["prompts"]:
        expected = np.array(p["last_logits"], dtype=np.float32)
        all_rows = f32.logits(p["ids"])
        last = f32.logits(p["ids"], last_only=True)
        assert all_rows.dtype == np.float32 and all_rows.shape == (len(p["ids"]), 50257)
        assert last.shape == (50257,)
        assert np.array_equal(all_rows[-1], last)
        assert np.abs(last - expected).max() <= LOGIT_TOLERANCE, p["name"]
        # The reference's log-probability of its greedy next token, within twice the tolerance.
        nxt = p["greedy"]["ids"][0]
        assert abs(log_softmax(last)[nxt] - log_softmax(expected)[nxt]) <= 2 * LOGIT_TOLERANCE


def test_bad_windows_and_inputs(q8):
    long = "The old lighthouse keeper counted the ships. " * 40
    with pytest.raises(ValueError, match="stride 64"):
        q8.score(long, window=64, stride=64)
    with pytest.raises(ValueError, match="window must be in 2..=512"):
        q8.score("x", window=1000)
    with pytest.raises(TypeError):
        q8.score(123)
    with pytest.raises(ValueError, match="do not fit in the context"):
        q8.logits([464] * 300)
    with pytest.raises(ValueError, match="no tokens"):
        q8.logits([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        q8.logits([50257])
