#!/usr/bin/env bash
# Builds for armv7 (32-bit Raspberry Pi OS) and runs a cheap subset of the tests under qemu-arm:
# the library's unit tests, the kernel, loader and chat tests, and two golden reference tests, on
# an emulated Cortex-A7 (NEON + VFPv4, so the armv7 NEON kernels; the tests assert that path through
# GPT2Q_EXPECT_CPU). Then the kernel tests again on a Cortex-A15 (NEON), on a Cortex-A8 (NEON
# without VFPv4: the scalar fallback must be picked) and with GPT2Q_KERNELS=scalar, and 32-bit
# `usize` arithmetic throughout.
#
# Debian 12's own rustc-web cannot be used here: its armhf standard library
# (libstd-rust-web-dev:armhf) must be the exact version of the installed rustc-web, and only the
# security archive carries the matching one. The script therefore uses rustup's armv7 std with
# Debian's cross gcc and libc.
#
# Install (as root, once):  scripts/test-armv7.sh --install
# Run:                      scripts/test-armv7.sh
#
# The rest (CLI, memory, the other reference tests) is left to the native and aarch64 suites,
# which run the same portable code above the kernels.
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
cargo_test() { cargo test --release -p gpt2q --target "$target" "$@"; }
echo "== armv7 tests under qemu-arm, Cortex-A7 (armv7 NEON kernels) =="
export QEMU_CPU=cortex-a7 GPT2Q_EXPECT_CPU=cortex-a7
cargo_test --lib --bins --test kernels --test loader --test chat
# Two golden tests: f32 logits against transformers, and the q8 (int8 kernels) perplexity.
cargo_test --test reference -- f32_matches_transformers_logits_and_top10 q8_perplexity_within_0_5_percent
echo "== armv7 kernel tests: Cortex-A15 (NEON), Cortex-A8 (scalar fallback), GPT2Q_KERNELS=scalar =="
for cpu in cortex-a15 cortex-a8; do
  QEMU_CPU=$cpu GPT2Q_EXPECT_CPU=$cpu cargo_test --lib --test kernels -- kernels:: dispatch_picks
done
GPT2Q_KERNELS=scalar cargo_test --test kernels -- dispatch_picks
