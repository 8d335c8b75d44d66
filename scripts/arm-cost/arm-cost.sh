#!/usr/bin/env bash
# The ARM cost model: guest instructions per decoded token and per prompt token of a gpt2q build,
# counted under qemu user-mode emulation by the TCG plugin insncount.c (GPT-2 124M shapes, random
# weights, 1 thread). Instruction counts are exact and repeatable; they are not time, but on the
# in-order Cortex-A53 (Pi Zero 2 W, Pi 3) they are close to it and on the A72/A76 a good guide.
#
# Per-token figures are differences of two runs, so loading, synthetic-weight generation and
# warm-up cancel:   decode  = (bench -p 0 -n 12  −  bench -p 0 -n 4) / 16   (warm-up + 1 repeat)
#                   prefill = (bench -p 64 -n 0  −  bench -p 32 -n 0) / 64
#
# Usage: scripts/arm-cost/arm-cost.sh [-c "cortex-a72 cortex-a76"] [-q "q8 q4"] [-w "decode prefill"]
#                                     [-o OUT_DIR] [-t THREADS] GPT2Q_BINARY
#   GPT2Q_BINARY: an aarch64 build (scripts/test-aarch64.sh builds one under target/debian-cross),
#                 or an armv7 one (then -c takes qemu-arm CPUs such as cortex-a7 or cortex-a15).
#   -t THREADS: instructions are summed over all threads (spinning and duplicated work show).
#   Prints one line per CPU × quant × measurement: "cpu quant what Minsn/token simd-share ldst-share".
#   The SIMD/FP and load/store shares are meaningful on aarch64 only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cpus="cortex-a72 cortex-a76" quants="q8 q4" what="decode prefill" out="" threads=1
while getopts "c:q:w:o:t:" o; do
  case $o in
    c) cpus=$OPTARG ;; q) quants=$OPTARG ;; w) what=$OPTARG ;; o) out=$OPTARG ;; t) threads=$OPTARG ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
bin=${1:?usage: arm-cost.sh [options] GPT2Q_BINARY}
out=${out:-$(mktemp -d)}
mkdir -p "$out"
plugin=$out/insncount.so
[[ -f $plugin ]] || gcc -shared -fPIC -O2 -o "$plugin" "$here/insncount.c"

qemu=qemu-aarch64
if file -L "$bin" | grep -q "ARM,"; then
  qemu=qemu-arm
  export QEMU_LD_PREFIX=/usr/arm-linux-gnueabihf
fi

# count NAME CPU ARGS... -> "insns simd ldst" of one run of the binary
count() {
  local name=$1 cpu=$2
  shift 2
  # The plugin's counters are not atomic: with several guest threads, qemu runs on one host
  # core so that no increment is lost to a race.
  QEMU_CPU=$cpu timeout 3000 taskset -c 0 "$qemu" -plugin "$plugin,out=$out/$name.json" "$bin" "$@" \
    >"$out/$name.log" 2>&1 || { echo "run $name failed: see $out/$name.log" >&2; exit 1; }
  python3 -c "import json; d = json.load(open('$out/$name.json')); print(d['insns'], d['simd_fp'], d['ldst'])"
}

# per_token CPU QUANT WHAT
per_token() {
  local cpu=$1 q=$2 w=$3 a b div
  local common=(bench --synthetic 124M --quant "$q" -t "$threads" -r 1)
  if [[ $w == decode ]]; then
    a=(-p 0 -n 4) b=(-p 0 -n 12) div=16
  else
    a=(-p 32 -n 0) b=(-p 64 -n 0) div=64
  fi
  read -r i1 s1 l1 < <(count "$cpu-$q-$w-a" "$cpu" "${common[@]}" "${a[@]}")
  read -r i2 s2 l2 < <(count "$cpu-$q-$w-b" "$cpu" "${common[@]}" "${b[@]}")
  python3 -c "
i, s, l = $i2 - $i1, $s2 - $s1, $l2 - $l1
print(f'$cpu $q $w {i / $div / 1e6:.1f} Minsn/token simd {s / i:.2f} ldst {l / i:.2f}')"
}

for cpu in $cpus; do
  for q in $quants; do
    for w in $what; do
      per_token "$cpu" "$q" "$w"
    done
  done
done | tee "$out/summary.txt"
