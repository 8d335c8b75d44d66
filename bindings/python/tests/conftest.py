"""Fixtures of the gpt2q Python tests: the repository's models and reference outputs."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

import gpt2q

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
Q8_MODEL = ROOT / "models" / "tiny-gpt2-q8.g2q"


@pytest.fixture(scope="session")
def reference():
    """Hugging Face transformers' outputs for the tiny checkpoint (tests/fixtures/tiny-gpt2.json)."""
    return json.loads((FIXTURES / "tiny-gpt2.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def f32_path(tmp_path_factory):
    """The fixture checkpoint converted to f32 by gpt2q.convert (once per test run)."""
    out = tmp_path_factory.mktemp("models") / "tiny-f32.g2q"
    gpt2q.convert(FIXTURES / "tiny-gpt2", out, quant="f32")
    return out


@pytest.fixture(scope="session")
def f32(f32_path):
    return gpt2q.Model(f32_path, ctx=256)


@pytest.fixture(scope="session")
def q8():
    return gpt2q.Model(Q8_MODEL, ctx=256)


@pytest.fixture(scope="session")
def gpt2q_bin():
    """The gpt2q command (scripts/test-python.sh builds it and sets GPT2Q_BIN)."""
    path = os.environ.get("GPT2Q_BIN") or shutil.which("gpt2q")
    if not path or not os.path.exists(path):
        pytest.fail("set GPT2Q_BIN to the gpt2q binary (scripts/test-python.sh does)")
    return path


def run_cli(binary, *args, stdin=None):
    """Runs the gpt2q command; returns its stdout, failing the test on a non-zero exit."""
    done = subprocess.run(
        [binary, *map(str, args)], input=stdin, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode("utf-8")
