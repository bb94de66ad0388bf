#!/usr/bin/env bash
# Placement planning figures: DeepSeek-V3-like shapes (256 experts, 58
# layers, 8 groups, 32 expert workers on 4 nodes) with 288 and 320 slots on
# Zipf 0.8 / 1.1 / 1.5 loads, then two drifting traces (minimal movement,
# planning on past windows). Loads come from ../shared/tools/eplb_ref's
# generator (needs Debian's python3-numpy); both planners run in one binary.
#
# Usage: bench/eplb_bench.sh [BIN_DIR (default build/bin)]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-build/bin}/switchyard-eplb-bench"
ref=../shared/tools/eplb_ref/eplb_ref.py
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gen() {  # NAME PHYSICAL TRACE SEED [extra generator flags]
  local name=$1 physical=$2 trace=$3 seed=$4
  shift 4
  /usr/bin/python3 "$ref" --experts 256 --layers 58 --gpus 32 --nodes 4 --groups 8 \
    --physical "$physical" --trace "$trace" --seed "$seed" --dump-load "$tmp/$name.json" \
    "$@" >/dev/null
}
for physical in 288 320; do
  files=()
  for s in 0.8 1.1 1.5; do
    gen "zipf${s}_p${physical}" "$physical" "zipf:$s" 0
    files+=("$tmp/zipf${s}_p${physical}.json")
  done
  echo "## $physical slots"
  "$bin" --gpus 32 --nodes 4 --groups 8 --physical "$physical" "${files[@]}"
done
echo "## drifting traces, 288 slots (8 windows)"
gen drift0.02 288 zipf:1.1 7 --windows 8 --drift 0.02
gen drift0.3 288 zipf:1.1 7 --windows 8 --drift 0.3
"$bin" --gpus 32 --nodes 4 --groups 8 --physical 288 "$tmp/drift0.02.json" "$tmp/drift0.3.json"
