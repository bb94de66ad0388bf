#!/usr/bin/env bash
# The main job: builds Switchyard, starts a local cluster (coordinator,
# router, 2 attention workers, 3 expert workers over UCX on loopback) serving
# the shipped tiny Qwen3-MoE checkpoint (configs/local.yaml), sends one
# request with the client CLI, prints its JSON answer and stops the cluster.
# Extra arguments go to `switchyard-client generate`, e.g. --stream or
# --logprobs 3. To keep the cluster running instead:
#   build/bin/switchyard-local --config configs/local.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
CONFIG=${CONFIG:-configs/local.yaml}
scripts/build.sh >&2
export UCX_NET_DEVICES=lo

out=$(mktemp)
"$BUILD_DIR/bin/switchyard-local" --config "$CONFIG" >"$out" &
launcher=$!
trap 'kill -INT $launcher 2>/dev/null; wait $launcher 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 1 120); do
  grep -q "cluster ready" "$out" && break
  kill -0 $launcher 2>/dev/null || { echo "switchyard-local exited" >&2; exit 1; }
  sleep 1
done
grep "cluster ready" "$out" >&2 || { echo "cluster did not come up" >&2; exit 1; }
addr=$(sed -n 's/.*Generate API on \([^ ]*\).*/\1/p' "$out")
"$BUILD_DIR/bin/switchyard-client" generate --addr "$addr" \
  --prompt-ids 1,7,42,100,3 --max-new-tokens 24 "$@"
