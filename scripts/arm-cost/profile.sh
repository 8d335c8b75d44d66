#!/usr/bin/env bash
# Where an emulated gpt2q run spends its guest instructions, per function: the difference of two
# bench runs (like arm-cost.sh), so only the per-token work shows. Counts, not time.
#
# Usage: scripts/arm-cost/profile.sh [-c CPU] [-q QUANT] [-w decode|prefill] [-n TOP] [-t THREADS] GPT2Q_BINARY
# Prints "Minsn/token  share  function" for the TOP functions (default 25).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cpu=cortex-a76 q=q8 what=decode top=25 threads=1
while getopts "c:q:w:n:t:" o; do
  case $o in
    c) cpu=$OPTARG ;; q) q=$OPTARG ;; w) what=$OPTARG ;; n) top=$OPTARG ;; t) threads=$OPTARG ;;
    *) sed -n '2,7p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
bin=${1:?usage: profile.sh [options] GPT2Q_BINARY}
out=$(mktemp -d)
gcc -shared -fPIC -O2 -o "$out/insnprofile.so" "$here/insnprofile.c"
if [[ $what == decode ]]; then a=(-p 0 -n 4) b=(-p 0 -n 12) div=16; else a=(-p 32 -n 0) b=(-p 64 -n 0) div=64; fi
for run in a b; do
  declare -n args=$run
  # One host core: the plugin's counters are not atomic (see arm-cost.sh).
  QEMU_CPU=$cpu taskset -c 0 qemu-aarch64 -plugin "$out/insnprofile.so,out=$out/$run.txt" "$bin" \
    bench --synthetic 124M --quant "$q" -t "$threads" -r 1 "${args[@]}" >"$out/$run.log" 2>&1
done
nm -C --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ {print $1, substr($0, index($0, $3))}' | sort >"$out/syms.txt"
python3 - "$out" "$div" "$top" <<'PY'
import bisect, collections, sys
out, div, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
syms = [(int(a, 16), name) for a, name in (l.rstrip("\n").split(" ", 1) for l in open(f"{out}/syms.txt"))]
addrs = [a for a, _ in syms]
def per_fn(path):
    blocks = [tuple(int(v, 16) if i == 0 else int(v) for i, v in enumerate(l.split())) for l in open(path)]
    # A position-independent executable is loaded at a base qemu picks: the one that puts most
    # executed instructions inside the symbol table's range.
    bases = collections.Counter((v - addrs[bisect.bisect_right(addrs, v & 0xFFFFFFF) - 1]) & ~0xFFFFFFF for v, _, _ in blocks)
    base = 0x5500000000 if any(v >= 0x5500000000 for v, _, _ in blocks) else 0
    acc = collections.Counter()
    for v, n, e in blocks:
        i = bisect.bisect_right(addrs, v - base) - 1
        acc[syms[i][1] if i >= 0 and v >= base else "?"] += n * e
    return acc
a, b = per_fn(f"{out}/a.txt"), per_fn(f"{out}/b.txt")
diff = {k: (b[k] - a.get(k, 0)) / div for k in b}
total = sum(diff.values())
print(f"{total / 1e6:.2f} Minsn/token in all")
for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{v / 1e6:8.2f}  {v / total:6.1%}  {k[:110]}")
PY
rm -rf "$out"
