#!/usr/bin/env bash
# Builds for armv7 (32-bit Raspberry Pi OS) and runs a cheap subset of the tests under qemu-arm:
# the library's unit tests, the golden reference tests, the chat tests and the CLI tests. On 32-bit
# ARM stable Rust has no NEON intrinsics, so this checks the portable scalar kernels and 32-bit
# `usize` arithmetic.
#
# Debian 12's own rustc-web cannot be used here: its armhf standard library
# (libstd-rust-web-dev:armhf) must be the exact version of the installed rustc-web, and only the
# security archive carries the matching one. The script therefore uses rustup's armv7 std with
# Debian's cross gcc and libc.
#
# Install (as root, once):  scripts/test-armv7.sh --install
# Run:                      scripts/test-armv7.sh
#
# The CLI tests that run long scalar perplexity passes are skipped (the aarch64 suite runs them; the
# reference tests already check the scalar path's numbers): emulated scalar code is slow.
set -euo pipefail
cd "$(dirname "$0")/.."
target=armv7-unknown-linux-gnueabihf

if [[ "${1:-}" == "--install" ]]; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user
  rustup target add "$target"
  exit 0
fi

# qemu-arm finds the armhf dynamic loader and libc here (from libc6-armhf-cross).
export QEMU_LD_PREFIX=/usr/arm-linux-gnueabihf
# Tests that start the gpt2q binary launch it through the emulator (no binfmt_misc needed).
export GPT2Q_TEST_RUNNER=qemu-arm
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/armv7"
echo "== armv7 tests under qemu-arm (scalar kernels) =="
cargo test --release -p gpt2q --target "$target" --lib --test reference --test chat --test cli -- \
  --skip perplexity_prints_a_parsable_line --skip perplexity_compare_reports_kl_and_top1_agreement
