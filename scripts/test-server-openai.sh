#!/usr/bin/env bash
# Points the official `openai` Python package at `gpt2q serve` (completions and chat, streamed
# and not, errors): scripts/server_openai_check.py against the release binary on an ephemeral
# loopback port.
#
#   scripts/test-server-openai.sh [GPT2Q_BINARY]
#
# The package is installed from PyPI into a virtual environment made once and reused:
# $GPT2Q_OPENAI_VENV, default target/openai-venv (needs `python3 -m venv`; on Debian the
# python3-venv package). The binary defaults to $CARGO_TARGET_DIR/release/gpt2q (built if absent).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-${CARGO_TARGET_DIR:-target}/release/gpt2q}
venv=${GPT2Q_OPENAI_VENV:-target/openai-venv}
[[ -x $bin ]] || cargo build --release --bin gpt2q
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -c "import openai" 2>/dev/null \
  || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1,<3"

log=$(mktemp)
"$bin" serve --port 0 --api-key test-key --parallel 2 >/dev/null 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
addr=""
for _ in $(seq 300); do
  addr=$(sed -n 's|.*ready on http://\([^ ]*\).*|\1|p' "$log")
  [[ -n $addr ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $addr ]] || { echo "gpt2q serve did not start:" >&2; cat "$log" >&2; exit 1; }
"$venv/bin/python" scripts/server_openai_check.py "http://$addr/v1" test-key
