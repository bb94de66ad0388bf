#!/usr/bin/env bash
# Serving throughput with metrics on versus off: the same local cluster
# (configs/local.yaml's topology) run ROUNDS times each way, alternating
# (on, off, on, off, ...), switchyard-loadgen for SECONDS each; with metrics
# on, every process's /metrics is scraped once a second during the run, as
# Prometheus would. Prints each run's output tokens/s and the ratio of the
# means (on / off).
# Usage: bench/metrics_overhead.sh [ROUNDS] [SECONDS] (default 3, 20); after scripts/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build}/bin
ROUNDS=${1:-3}
SECS=${2:-20}
export UCX_NET_DEVICES=lo
work=$(mktemp -d)
pid=""
stop() {
  if [ -n "$pid" ]; then
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
trap 'stop; rm -rf "$work"' EXIT
# metrics: "on" (the YAML's default ports) or "off" (every port 0).
run() {
  local mode=$1 yaml="$work/cluster-$1.yaml"
  sed '/^metrics:/,/^[^ ]/{/^  /d}' configs/local.yaml | sed '/^metrics:/d' >"$yaml"
  sed -i "s|tests/data/goldens/qwen3_moe|$PWD/tests/data/goldens/qwen3_moe|" "$yaml"
  if [ "$mode" = off ]; then
    printf 'metrics:\n  coordinator_port: 0\n  router_port: 0\n  attention_worker_base_port: 0\n  expert_worker_base_port: 0\n' >>"$yaml"
  fi
  "$B/switchyard-local" --config "$yaml" --log-dir "$work/logs-$mode" >"$work/local.out" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do
    grep -q "cluster ready" "$work/local.out" && break
    sleep 0.5
  done
  grep -q "cluster ready" "$work/local.out" || { cat "$work/local.out"; exit 1; }
  local scraper=""
  if [ "$mode" = on ]; then
    ports=$(sed -n 's|.*metrics of .* on http://127.0.0.1:\([0-9]*\)/metrics|\1|p' "$work/local.out")
    (while true; do
       for p in $ports; do curl -s -o /dev/null "http://127.0.0.1:$p/metrics" || true; done
       sleep 1
     done) &
    scraper=$!
  fi
  "$B/switchyard-loadgen" --addr 127.0.0.1:50051 --concurrency 8 --duration-s "$SECS" \
    --warmup-s 3 --prompt-len 16 --prompt-len-max 64 --max-new-tokens 16 \
    --max-new-tokens-max 64 --json >"$work/load.out" 2>&1
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null && wait "$scraper" 2>/dev/null || true
  stop
  tail -1 "$work/load.out" | sed -n 's/.*"output_tokens_per_s":\([0-9.e+-]*\).*/\1/p'
}
echo "command: bench/metrics_overhead.sh $ROUNDS $SECS"
on=() off=()
for r in $(seq 1 "$ROUNDS"); do
  a=$(run on)
  b=$(run off)
  printf "round %d: metrics on %.1f tokens/s, off %.1f tokens/s\n" "$r" "$a" "$b"
  on+=("$a") off+=("$b")
done
printf '%s\n' "${on[@]}" >"$work/on"
printf '%s\n' "${off[@]}" >"$work/off"
awk 'NR == FNR { s += $1; n++; next } { t += $1; m++ }
     END { printf "mean: metrics on %.1f, off %.1f tokens/s; on / off = %.3f\n", s / n, t / m, (s / n) / (t / m) }' \
  "$work/on" "$work/off"
