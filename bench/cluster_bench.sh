#!/usr/bin/env bash
# Cluster throughput against the single-process engine on the same model, in
# one script so the ratios compare runs on the same machine at the same time:
#  1. switchyard-loadgen against the local multi-process cluster of
#     configs/local.yaml (2 attention + 3 expert workers, UCX on loopback);
#  2. the same against the same topology in switchyard-local's single-process
#     mode (inproc transport);
#  3. switchyard-engine-bench on the same model (no gRPC, no mesh).
# Usage: bench/cluster_bench.sh [DURATION_S] (default 10); run after scripts/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build}/bin
DURATION=${1:-10}
export UCX_NET_DEVICES=lo
work=$(mktemp -d)
trap 'pkill -INT -f "switchyard-local --config $work" 2>/dev/null || true; rm -rf "$work"' EXIT

run_cluster() {  # name config
  local name=$1 config=$2
  "$B/switchyard-local" --config "$config" --log-dir "$work/logs-$name" >"$work/$name.out" 2>&1 &
  local pid=$!
  for _ in $(seq 1 120); do
    grep -q "cluster ready" "$work/$name.out" && break
    sleep 1
  done
  local addr
  addr=$(sed -n 's/.*Generate API on \([^ ]*\).*/\1/p' "$work/$name.out")
  for conc in 1 8; do
    echo "== $name, concurrency $conc"
    "$B/switchyard-loadgen" --addr "$addr" --concurrency "$conc" --duration-s "$DURATION" \
      --warmup-s 2 --prompt-len 32 --prompt-len-max 96 --max-new-tokens 16 \
      --max-new-tokens-max 48 --seed 1
  done
  kill -INT $pid
  wait $pid || true
}

sed "s|path: tests/|path: $PWD/tests/|" configs/local.yaml >"$work/ucx.yaml"
sed -e 's/backend: ucx/backend: inproc/' "$work/ucx.yaml" >"$work/inproc.yaml"
run_cluster ucx "$work/ucx.yaml"
run_cluster inproc "$work/inproc.yaml"
echo "== single-process engine (switchyard-engine-bench)"
"$B/switchyard-engine-bench" --models qwen3_moe --batches 1,8 --prompt 64 --decode 32
