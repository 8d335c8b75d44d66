#!/usr/bin/env bash
# ONNX Runtime int8 next to `gpt2q bench` (see ort_bench.py and README.md): makes a venv with
# onnx, onnxruntime, numpy and safetensors from PyPI, checks that the ONNX graph is GPT-2 on the
# tiny fixture, then alternates the two benches.
#   scripts/peers/ort_bench.sh [--graph lean|hf] [--gpt2q PATH] [--rounds N] [--threads 1,2]
#                              [--repeat R]
# --graph hf exports transformers' GPT-2 through torch.onnx instead of writing the lean graph;
# its venv also holds torch and transformers (about 6 GB: PyPI's Linux torch pulls the CUDA
# packages).
# Environment: ORT_VENV (default ~/.cache/gpt2q-ort-venv), ORT_HF_VENV (default
# ~/.cache/gpt2q-ort-hf-venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
graph=lean
prev=
for a in "$@"; do
  [[ "$prev" == --graph ]] && graph="$a"
  [[ "$a" == --graph=* ]] && graph="${a#--graph=}"
  prev="$a"
done
packages=(onnxruntime==1.32.0 onnx==1.23.2 numpy safetensors)
venv="${ORT_VENV:-$HOME/.cache/gpt2q-ort-venv}"
if [[ "$graph" == hf ]]; then
  packages+=(torch==2.15.0 transformers==5.24.0 onnxscript==0.7.2)
  venv="${ORT_HF_VENV:-$HOME/.cache/gpt2q-ort-hf-venv}"
fi
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "${packages[@]}"
fi
"$venv/bin/python" "$here/ort_bench.py" check --graph "$graph"
exec "$venv/bin/python" "$here/ort_bench.py" bench "$@"
