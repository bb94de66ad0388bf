#!/usr/bin/env bash
# CPU used by an idle local cluster: starts switchyard-local with CONFIG
# (default configs/local.yaml), lets the mesh settle into its idle pauses,
# then sums the user + system time of all its processes over SECONDS.
# Usage: bench/idle_cpu.sh [CONFIG] [SECONDS] (default 10); run after scripts/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build}/bin
CONFIG=$(realpath "${1:-configs/local.yaml}")
SECONDS_MEASURED=${2:-10}
export UCX_NET_DEVICES=lo
work=$(mktemp -d)
"$B/switchyard-local" --config "$CONFIG" --log-dir "$work/logs" >"$work/out" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do
  grep -q "cluster ready" "$work/out" && break
  sleep 1
done
grep -q "cluster ready" "$work/out" || { cat "$work/out"; exit 1; }
sleep 3  # the idle pauses back off to attention_worker.max_idle_sleep_us
ticks() {  # user + system clock ticks of every process of the cluster
  local sum=0 p
  for p in $(pgrep -f -- "--config $CONFIG"); do
    [ -r "/proc/$p/stat" ] || continue
    sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$sum"
}
a=$(ticks)
sleep "$SECONDS_MEASURED"
b=$(ticks)
echo "command: bench/idle_cpu.sh $* "
awk -v d=$((b - a)) -v hz="$(getconf CLK_TCK)" -v s="$SECONDS_MEASURED" -v c="$CONFIG" \
  'BEGIN { printf "idle cluster (%s): %.1f%% of one core over %d s\n", c, 100 * d / hz / s, s }'
