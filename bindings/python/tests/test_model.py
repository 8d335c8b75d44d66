"""Loading, info, tokenizing, chat, convert, errors, the GIL and Ctrl-C."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import gpt2q
from conftest import FIXTURES, Q8_MODEL, ROOT


def test_info_describes_the_model_and_its_memory(q8):
    info = q8.info
    assert (info["n_vocab"], info["n_ctx"], info["n_layer"], info["n_embd"]) == (50257, 512, 4, 256)
    assert info["quant"] == "q8" and info["kv"] == "f16" and info["ctx"] == 256
    assert info["file_size"] == os.path.getsize(Q8_MODEL)
    mem = info["memory"]
    assert mem["weights"] == info["file_size"]
    assert mem["total"] == mem["weights"] + mem["kv_cache"] + mem["scratch"]
    assert "tiny-gpt2" in repr(q8)


def test_tokenize_and_detokenize(q8):
    text = "Café déjà vu 🙂 “quoted”<|endoftext|>next"
    ids = q8.tokenize(text)
    assert 50256 in ids
    assert q8.detokenize(ids) == text
    assert q8.tokenize("The quick brown fox") == [464, 2068, 7586, 21831]
    assert q8.tokenize("") == []
    with pytest.raises(ValueError, match="out of range"):
        q8.detokenize([50257])


def test_a_chat_keeps_its_context_and_repeats_with_a_seed(q8):
    def conversation():
        chat = q8.chat(seed=11, max_tokens=12)
        return [chat.send("Hi there!"), chat.send("What is your name?")]

    first = conversation()
    assert first == conversation()
    chat = q8.chat(seed=11, max_tokens=12)
    assert "".join(chat.send("Hi there!", stream=True)) == first[0]
    templated = q8.chat(template="User: {user}\nBot:", stop="\n", seed=2, max_tokens=24)
    for _ in range(3):
        assert "\n" not in templated.send("Tell me about the sea.")
    with pytest.raises(ValueError, match="exactly once"):
        q8.chat(template="no placeholder")
    with pytest.raises(ValueError, match="max_tokens"):
        q8.chat(max_tokens=0)


def test_convert_writes_a_model_and_refuses_to_overwrite(f32_path, tmp_path):
    out = tmp_path / "tiny-q4.g2q"
    gpt2q.convert(FIXTURES / "tiny-gpt2", out, quant="q4")
    assert gpt2q.Model(out).info["quant"] == "q4"
    with pytest.raises(ValueError):
        gpt2q.convert(FIXTURES / "tiny-gpt2", out, quant="q4")
    with pytest.raises(ValueError, match="unknown quantisation"):
        gpt2q.convert(FIXTURES / "tiny-gpt2", tmp_path / "x.g2q", quant="q3")
    with pytest.raises(ValueError, match="not a directory"):
        gpt2q.convert(tmp_path / "no-such-checkpoint", tmp_path / "y.g2q")


def test_missing_and_damaged_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.g2q"):
        gpt2q.Model(tmp_path / "no-such.g2q")
    data = bytearray(Q8_MODEL.read_bytes())
    truncated = tmp_path / "truncated.g2q"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(gpt2q.ModelError):
        gpt2q.Model(truncated)
    flipped = tmp_path / "flipped.g2q"
    data[40] ^= 0xFF
    flipped.write_bytes(data)
    with pytest.raises(gpt2q.ModelError):
        gpt2q.Model(flipped)
    garbage = tmp_path / "garbage.g2q"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(gpt2q.ModelError):
        gpt2q.Model(garbage)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="KV cache type"):
        gpt2q.Model(Q8_MODEL, kv="f8")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        gpt2q.Model(Q8_MODEL, threads=0)
    with pytest.raises(ValueError, match="--ctx must be in 1..=512"):
        gpt2q.Model(Q8_MODEL, ctx=100_000)
    assert gpt2q.Model(Q8_MODEL, ctx=64, kv="q8", threads=1, mmap=True).info["kv"] == "q8"


def test_the_gil_is_released_during_generation(q8):
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    start = time.monotonic()
    q8.generate("The sea", max_tokens=200, ignore_eos=True, seed=1)
    elapsed = time.monotonic() - start
    done.set()
    t.join()
    # A thread sleeping 1 ms per tick gets at least a few ticks per 10 ms it is allowed to run.
    assert ticks >= max(3, elapsed * 100), (ticks, elapsed)


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import gpt2q
    m = gpt2q.Model(sys.argv[1], ctx=64)
    print("ready", flush=True)
    start = time.monotonic()
    try:
        m.generate("The sea", max_tokens=10**9, ignore_eos=True, seed=1)
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted after %.1f s" % (time.monotonic() - start), flush=True)
    print("after:", repr(m.generate("The sea", max_tokens=4, seed=1)), flush=True)
    try:
        m.score(["a line of text"] * 200_000)
        print("scored everything", flush=True)
    except KeyboardInterrupt:
        print("score interrupted", flush=True)
    print("then:", m.score("The sea")["tokens"], flush=True)
    """
)


def test_ctrl_c_interrupts_a_long_generation():
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(Q8_MODEL)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        lines = [child.stdout.readline(), child.stdout.readline()]
        assert lines[0].startswith("interrupted after"), lines
        assert lines[1].startswith("after: '"), lines
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert out.splitlines() == ["score interrupted", "then: [464, 5417]"], out + err
