"""Generation: the CLI's greedy output, seeds, streaming, stop strings, tasks and bad arguments."""

import pytest

from conftest import run_cli


def prompts(reference, names=("short", "sentence", "dialogue", "unicode_emoji")):
    return [p for p in reference["prompts"] if p["name"] in names]


def test_greedy_equals_the_cli_and_the_reference(f32, f32_path, gpt2q_bin, reference):
    for p in prompts(reference):
        text = f32.generate(p["text"], max_tokens=32, temperature=0, ignore_eos=True)
        cli = run_cli(
            gpt2q_bin, "run", "-m", f32_path, "-p", p["text"], "-n", 32,
            "--greedy", "--ignore-eos", "-q",
        )
        assert p["text"] + text + "\n" == cli, p["name"]
        assert p["text"] + text == p["greedy"]["full_text"], p["name"]


def test_same_seed_same_text(q8):
    a = q8.generate("The sea", max_tokens=24, seed=42)
    assert a == q8.generate("The sea", max_tokens=24, seed=42)
    assert a != q8.generate("The sea", max_tokens=24, seed=43)
    assert isinstance(a, str) and a


def test_a_stream_yields_the_same_text_in_pieces(q8):
    whole = q8.generate("Once upon a time", max_tokens=40, seed=7)
    pieces = list(q8.generate("Once upon a time", max_tokens=40, seed=7, stream=True))
    assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == whole
    # Leaving the loop early stops the generation; the model is usable right after.
    stream = q8.generate("Once upon a time", max_tokens=10_000, seed=7, stream=True, ignore_eos=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert next(iter(stream), None) is None
    assert q8.generate("Once upon a time", max_tokens=40, seed=7) == whole


def test_stop_strings_end_the_text_before_them(f32):
    prompt = "It was a dark and stormy night, and"

    def greedy(**kw):
        return f32.generate(prompt, max_tokens=32, temperature=0, ignore_eos=True, **kw)

    full = greedy()
    assert full.startswith("\nthe man, and the\n“I”"), "the fixture's greedy text"
    assert greedy(stop=" and") == "\nthe man,"
    # The earliest of several stop strings wins; one split across tokens never shows.
    assert greedy(stop=["“I”", "man"]) == "\nthe "
    assert greedy(stop=["the\n“"]) == "\nthe man, and "
    assert "".join(greedy(stop=[" and"], stream=True)) == "\nthe man,"
    assert greedy(stop="not in the text") == full


def test_a_task_answers_on_one_line(q8):
    answer = q8.generate("What is the capital of Italy?", task="qa")
    assert "\n" not in answer
    assert q8.generate("What is the capital of Italy?", task="qa") == answer, "qa is greedy"


def test_bad_arguments_are_value_errors_with_the_cli_messages(q8):
    with pytest.raises(ValueError, match=r"--top-p must be in \(0, 1\], got 2"):
        q8.generate("x", top_p=2)
    with pytest.raises(ValueError, match="--temperature"):
        q8.generate("x", temperature=-1)
    with pytest.raises(ValueError, match='unknown task "poem"'):
        q8.generate("x", task="poem")
    with pytest.raises(ValueError, match="stop string is empty"):
        q8.generate("x", stop=["a", ""])
    with pytest.raises(TypeError):
        q8.generate("x", stop=3)
    with pytest.raises(ValueError, match="more than the context of 256"):
        q8.generate("word " * 300)


def test_an_empty_prompt_starts_from_endoftext(q8):
    assert isinstance(q8.generate("", max_tokens=5, seed=1), str)
    assert q8.generate("Hello", max_tokens=0) == ""
