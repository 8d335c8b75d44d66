#!/usr/bin/env bash
# Scoring throughput of the Python module against the gpt2q command (and transformers, if the
# venv has it) on the synthetic 124M model, as recorded in docs/PERFORMANCE.md ("Python
# bindings").
#
#   scripts/bench-python.sh [--quant q8] [bench_score.py args...]
#
# Builds a random GPT-2 small checkpoint (498 MB of f32, GPT-2's tokenizer) in
# target/bench-python once, converts it with gpt2q.convert, and builds the module and the CLI with
# the shipped profiles (fat LTO). The venv is $GPT2Q_VENV (default target/python-venv; see
# scripts/test-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
quant=q8
if [[ ${1:-} == --quant ]]; then quant=$2; shift 2; fi
target=${CARGO_TARGET_DIR:-$PWD/target}
venv=${GPT2Q_VENV:-$target/python-venv}
work=$target/bench-python
export CARGO_TARGET_DIR=$target

[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9.4,<2"
cargo build --release --bin gpt2q
cargo build --release -p gpt2q-convert --example synthetic_checkpoint
(cd bindings/python && VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH maturin develop --profile python)

mkdir -p "$work"
ckpt=$work/ckpt-small
[[ -f $ckpt/model.safetensors ]] || "$target/release/examples/synthetic_checkpoint" "$ckpt" small f32
model=$work/synthetic-124M-$quant.g2q
[[ -f $model ]] || "$venv/bin/python" -c "import gpt2q, sys; gpt2q.convert(sys.argv[1], sys.argv[2], quant=sys.argv[3])" "$ckpt" "$model" "$quant"

exec "$venv/bin/python" bindings/python/bench/bench_score.py --model "$model" \
  --gpt2q "$target/release/gpt2q" --text tests/fixtures/heldout.txt --hf-dir "$ckpt" "$@"
