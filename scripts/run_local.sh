#!/usr/bin/env bash
# The main job: builds Switchyard and generates 24 tokens from a shipped tiny
# Qwen3-MoE checkpoint with the single-process engine, printing the JSON
# result (tokens, logprobs, timings). Extra arguments go to
# switchyard-generate, e.g. --model tests/data/goldens/deepseek_v3.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
scripts/build.sh >&2
exec "$BUILD_DIR/bin/switchyard-generate" \
  --model tests/data/goldens/qwen3_moe \
  --prompt-ids 1,7,42,100,3 --max-new-tokens 24 --logprobs 3 "$@"
