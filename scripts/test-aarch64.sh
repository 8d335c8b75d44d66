#!/usr/bin/env bash
# Runs the test suite for aarch64 under qemu user-mode emulation on two emulated CPUs:
#   cortex-a76 (Raspberry Pi 5: ARMv8.2 with dotprod): the whole suite
#   cortex-a72 (Raspberry Pi 4 / Zero 2 W: ARMv8.0 NEON, no dotprod): the kernel-dependent tests
# Uses Debian's cross toolchain (rustc-web's /usr/bin/rustc and /usr/bin/cargo, whose aarch64
# standard library comes from libstd-rust-web-dev:arm64). Emulated runs check correctness only;
# never read timings from them.
#
# Install (as root, once):  scripts/test-aarch64.sh --install
# Run:                      scripts/test-aarch64.sh          (the CI split below)
#                           scripts/test-aarch64.sh CPU ...  (the whole suite on each CPU)
set -euo pipefail
cd "$(dirname "$0")/.."

install() {
  dpkg --add-architecture arm64
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
}

if [[ "${1:-}" == "--install" ]]; then
  install
  exit 0
fi

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
# Tests that start the gpt2q binary launch it through the emulator (no binfmt_misc needed).
export GPT2Q_TEST_RUNNER=qemu-aarch64
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/debian-cross"
target=aarch64-unknown-linux-gnu
/usr/bin/cargo build --release --workspace --tests --target "$target"

# Skipped under emulation, run natively: two CLI perplexity passes and three converter tests
# dominated by q4 scale searches (platform-independent code; the kernels' end-to-end tests still
# run).
skips=(--skip perplexity_prints_a_parsable_line --skip perplexity_compare_reports_kl_and_top1_agreement
  --skip conversion_is_deterministic --skip q4_keeps_the_embedding_in_q8_and_q4_pure_only_its_frequent_rows
  --skip the_sensitivity_report_ranks_every_matrix)

# suite CPU [cargo test selection...]: the tests read GPT2Q_EXPECT_CPU to assert which kernel
# path the dispatcher picked.
suite() {
  local cpu=$1
  shift
  echo "== aarch64 tests under qemu, QEMU_CPU=$cpu =="
  QEMU_CPU="$cpu" GPT2Q_EXPECT_CPU="$cpu" /usr/bin/cargo test --release --target "$target" "$@" -- "${skips[@]}"
}

if [[ $# -gt 0 ]]; then
  for cpu in "$@"; do
    suite "$cpu" --workspace
  done
else
  # Everything on the Pi 5's CPU; on the Pi 4's, what runs through the kernels the dispatcher
  # picks differently there (no dotprod): the unit tests (kernel twins included), the kernel and
  # golden reference tests and the allocation check. CLI, loader, tokenizer and converter code
  # is the same on both.
  suite cortex-a76 --workspace
  suite cortex-a72 -p gpt2q --lib --test kernels --test reference --test alloc_free
fi
