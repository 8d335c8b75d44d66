#!/usr/bin/env bash
# Builds the Python module (bindings/python) into a virtual environment and runs its pytest suite.
#
#   scripts/test-python.sh [PYTEST ARGS...]
#
# The venv is $GPT2Q_VENV, default target/python-venv (created on first use, with maturin, pytest
# and numpy from PyPI). The module is built with the `python` profile (release, unwinding panics),
# without LTO unless GPT2Q_PYTHON_LTO=1: the tests check the same numbers, and linking fat LTO
# costs minutes. The `gpt2q` binary is built too, for the tests that compare against the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
venv=${GPT2Q_VENV:-$target/python-venv}
python=${PYTHON:-python3}

if [[ ! -x "$venv/bin/python" ]]; then
  if ! "$python" -m venv "$venv"; then
    echo "test-python.sh: '$python -m venv' failed (on Debian: apt-get install -y python3-venv)" >&2
    exit 1
  fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9.4,<2" pytest numpy

if [[ "${GPT2Q_PYTHON_LTO:-0}" != 1 ]]; then
  export CARGO_PROFILE_PYTHON_LTO=false CARGO_PROFILE_PYTHON_CODEGEN_UNITS=16
  export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
export CARGO_TARGET_DIR=$target
cargo build --release --bin gpt2q
(cd bindings/python && VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH maturin develop --profile python)

export GPT2Q_BIN=$target/release/gpt2q
cd bindings/python
exec "$venv/bin/python" -m pytest -q tests "$@"
