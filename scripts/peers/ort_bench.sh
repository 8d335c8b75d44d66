#!/usr/bin/env bash
# ONNX Runtime int8 next to `gpt2q bench` (see ort_bench.py and README.md): makes a venv with
# onnx, onnxruntime, numpy and safetensors from PyPI (no torch), checks that the ONNX graph is
# GPT-2 on the tiny fixture, then alternates the two benches.
#   scripts/peers/ort_bench.sh [--gpt2q PATH] [--rounds N] [--threads 1,2] [--repeat R]
# Environment: ORT_VENV (default ~/.cache/gpt2q-ort-venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${ORT_VENV:-$HOME/.cache/gpt2q-ort-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet onnxruntime==1.32.0 onnx==1.23.2 numpy safetensors
fi
"$venv/bin/python" "$here/ort_bench.py" check
exec "$venv/bin/python" "$here/ort_bench.py" bench "$@"
