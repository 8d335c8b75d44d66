#!/usr/bin/env bash
# Times gpt2q-convert (wall, user, system CPU, peak RSS) on random checkpoints in GPT-2's shapes,
# as recorded in docs/PERFORMANCE.md ("Converting a checkpoint").
#
#   scripts/bench-convert.sh [--shape small|medium|large|xl] [--quant q8,q4,q4-pure]
#                            [--threads 1,2] [--runs 3] [--compare OTHER_CONVERTER] [WORK_DIR]
#
# WORK_DIR (default: target/bench-convert) receives the checkpoint (small: 498 MB of f32; xl:
# 6.2 GB) and the converted files; it is reused between runs. Each configuration runs --runs
# times; every run is printed, then the median of the wall times. --compare times another
# converter binary (for example an older build) on the same checkpoint, single run per quant.
# Needs GNU time (/usr/bin/time). The first run of each shape also pays for reading the
# checkpoint from disk; the medians are page-cache-warm.
set -euo pipefail
cd "$(dirname "$0")/.."

shape=small quants=q8,q4,q4-pure threads=default runs=3 compare="" work=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --shape) shape=$2; shift 2 ;;
    --quant) quants=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --compare) compare=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) work=$1; shift ;;
  esac
done
work=${work:-target/bench-convert}
[[ -x /usr/bin/time ]] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }

cargo build --release -p gpt2q-convert --bin gpt2q-convert --example synthetic_checkpoint
bin=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$work"
ckpt=$work/ckpt-$shape
if [[ ! -f $ckpt/model.safetensors ]]; then
  "$bin/examples/synthetic_checkpoint" "$ckpt" "$shape" f32
fi
echo "checkpoint: $ckpt ($(($(stat -c %s "$ckpt/model.safetensors") / 1000000)) MB), $(nproc) cores"

# One timed conversion: prints "wall user sys maxrss_MiB".
measure() {
  /usr/bin/time -f "%e %U %S %M" -o "$work/time.txt" "$@" >/dev/null 2>&1
  awk '{printf "%s %s %s %.0f\n", $1, $2, $3, $4 / 1024}' "$work/time.txt"
}

echo "| converter | quant | threads | wall s (median) | user s | sys s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
IFS=, read -ra qs <<<"$quants"
IFS=, read -ra ts <<<"$threads"
for q in "${qs[@]}"; do
  for t in "${ts[@]}"; do
    targs=()
    [[ $t == default ]] || targs=(--threads "$t")
    rows=()
    for _ in $(seq "$runs"); do
      rows+=("$(measure "$bin/gpt2q-convert" "$ckpt" -o "$work/out-$shape-$q.g2q" -q "$q" -f --quiet "${targs[@]}")")
    done
    printf '%s\n' "${rows[@]}" | sort -n | awk -v q="$q" -v t="$t" -v n="$runs" '
      { w[NR] = $1; u[NR] = $2; s[NR] = $3; m[NR] = $4 }
      END { k = int((n + 1) / 2); printf "| gpt2q-convert | %s | %s | %.2f | %.2f | %.2f | %d |\n", q, t, w[k], u[k], s[k], m[k] }'
  done
  if [[ -n $compare ]]; then
    read -r w u s m < <(measure "$compare" "$ckpt" -o "$work/cmp-$shape-$q.g2q" -q "$q" -f --quiet)
    echo "| $(basename "$compare") | $q | default | $w | $u | $s | $m |"
  fi
done
