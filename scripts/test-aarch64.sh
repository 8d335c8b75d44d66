#!/usr/bin/env bash
# Runs the whole test suite for aarch64 under qemu user-mode emulation, once per emulated CPU:
#   cortex-a72 (Raspberry Pi 4 / Zero 2 W: ARMv8.0 NEON, no dotprod)
#   cortex-a76 (Raspberry Pi 5: ARMv8.2 with dotprod)
# Uses Debian's cross toolchain (rustc-web's /usr/bin/rustc and /usr/bin/cargo, whose aarch64
# standard library comes from libstd-rust-web-dev:arm64). Emulated runs check correctness only;
# never read timings from them.
#
# Install (as root, once):  scripts/test-aarch64.sh --install
# Run:                      scripts/test-aarch64.sh [cpu ...]
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

cpus=("$@")
[[ ${#cpus[@]} -gt 0 ]] || cpus=(cortex-a72 cortex-a76)

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
# Tests that start the gpt2q binary launch it through the emulator (no binfmt_misc needed).
export GPT2Q_TEST_RUNNER=qemu-aarch64
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/debian-cross"
target=aarch64-unknown-linux-gnu
/usr/bin/cargo build --release --workspace --tests --target "$target"
for cpu in "${cpus[@]}"; do
  echo "== aarch64 tests under qemu, QEMU_CPU=$cpu =="
  # The tests read this to assert which kernel path the dispatcher picked.
  # Skipped here, run natively: two CLI perplexity passes and three converter tests dominated by
  # q4 scale searches (platform-independent code; the kernels' end-to-end tests still run).
  QEMU_CPU="$cpu" GPT2Q_EXPECT_CPU="$cpu" /usr/bin/cargo test --release --workspace --target "$target" -- \
    --skip perplexity_prints_a_parsable_line --skip perplexity_compare_reports_kl_and_top1_agreement \
    --skip conversion_is_deterministic --skip q4_keeps_the_embedding_in_q8_and_q4_pure_only_its_frequent_rows \
    --skip the_sensitivity_report_ranks_every_matrix
done
