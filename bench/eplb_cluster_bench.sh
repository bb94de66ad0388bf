#!/usr/bin/env bash
# Serving through re-placements, in one script so the runs share the machine
# and the time: the local cluster of configs/local.yaml (2 attention + 3
# expert workers with 2 redundant slots, UCX on loopback), switchyard-loadgen
# at a fixed concurrency, alternately
#   steady:  DURATION s with no rebalance;
#   moving:  DURATION s while `switchyard-admin rebalance` runs every INTERVAL
#            s (--force), alternating the global and hierarchical policies of
#            DeepSeek's from-scratch planner (eplb.planner: deepseek), so that
#            each one re-places experts;
# ROUNDS times each. Prints every run's output tokens/s, TPOT and errors, the
# rebalances' outcomes (experts moved, seconds each), and per mode the mean
# and the spread (max - min) over the rounds: the spread of the steady runs
# is the run-to-run noise a re-placement's cost is judged against.
#
# Usage: bench/eplb_cluster_bench.sh [DURATION_S (10)] [ROUNDS (3)] [INTERVAL_S (1)]
#        [CONCURRENCY (8)]; run after scripts/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build}/bin
DURATION=${1:-10}
ROUNDS=${2:-3}
INTERVAL=${3:-1}
CONC=${4:-8}
export UCX_NET_DEVICES=lo
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

sed "s|path: tests/|path: $PWD/tests/|" configs/local.yaml >"$work/cluster.yaml"
cat >>"$work/cluster.yaml" <<YAML
eplb:
  planner: deepseek
  groups: 4
  nodes: 1
YAML
echo "## bench/eplb_cluster_bench.sh $DURATION $ROUNDS $INTERVAL $CONC"
echo "# cluster: configs/local.yaml + eplb {planner: deepseek, groups: 4, nodes: 1}; $(nproc) cores"
"$B/switchyard-local" --config "$work/cluster.yaml" --log-dir "$work/logs" >"$work/local.out" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  grep -q "cluster ready" "$work/local.out" && break
  sleep 1
done
addr=$(sed -n 's/.*Generate API on \([^ ]*\).*/\1/p' "$work/local.out")
coord=$(sed -n 's/^  listen: \(.*:50100\)$/\1/p' "$work/cluster.yaml" | head -1)
coord=${coord:-127.0.0.1:50100}
[ -n "$addr" ] || { echo "cluster did not start"; cat "$work/local.out"; exit 1; }

loadgen() {  # name
  "$B/switchyard-loadgen" --addr "$addr" --concurrency "$CONC" --duration-s "$DURATION" \
    --warmup-s 1 --prompt-len 16 --prompt-len-max 64 --max-new-tokens 16 --max-new-tokens-max 48 \
    --seed 7 --json | tail -1 >"$work/$1.json"
}

rebalance_loop() {  # name: until loadgen's window ends
  local end=$((SECONDS + DURATION + 1)) i=0
  sleep 1  # the warm-up
  while [ $SECONDS -lt $end ]; do
    local policy=global
    [ $((i % 2)) -eq 1 ] && policy=hierarchical
    "$B/switchyard-admin" rebalance --addr "$coord" --policy "$policy" --force \
      >>"$work/$1.rebalances" 2>&1 || true
    i=$((i + 1))
    sleep "$INTERVAL"
  done
}

summary() {  # name mode
  python3 - "$work/$1.json" "$work/$1.rebalances" "$1" "$2" <<'PY'
import json, sys, os
r = json.load(open(sys.argv[1]))
moves = []
if os.path.exists(sys.argv[2]):
    for line in open(sys.argv[2]):
        line = line.strip()
        if line.startswith("{"):
            moves.append(json.loads(line))
committed = [m for m in moves if m["outcome"] == "committed"]
print(f"{sys.argv[3]:10s} {sys.argv[4]:7s} tok/s {r['output_tokens_per_s']:8.1f}  "
      f"TPOT p50 {r['tpot_ms']['p50']:6.2f} p99 {r['tpot_ms']['p99']:6.2f} ms  "
      f"requests {r['requests_completed']:5d} errors {r['errors']}  "
      f"rebalances {len(committed)} committed / {len(moves)}"
      + (f", {sum(m['moved_experts'] for m in committed)} experts moved, "
         f"{max(m['seconds'] for m in committed) * 1000:.0f} ms the longest" if committed else ""))
PY
}

for round in $(seq 1 "$ROUNDS"); do
  loadgen "steady-$round"
  summary "steady-$round" steady
  rebalance_loop "moving-$round" &
  rl=$!
  loadgen "moving-$round"
  wait $rl
  summary "moving-$round" moving
done
python3 - "$work" "$ROUNDS" <<'PY'
import json, sys
work, rounds = sys.argv[1], int(sys.argv[2])
for mode in ("steady", "moving"):
    tok = [json.load(open(f"{work}/{mode}-{i}.json"))["output_tokens_per_s"] for i in range(1, rounds + 1)]
    tpot = [json.load(open(f"{work}/{mode}-{i}.json"))["tpot_ms"]["p50"] for i in range(1, rounds + 1)]
    print(f"# {mode}: tok/s mean {sum(tok) / len(tok):.1f} (spread {max(tok) - min(tok):.1f}), "
          f"TPOT p50 mean {sum(tpot) / len(tpot):.2f} ms (spread {max(tpot) - min(tpot):.2f})")
PY
