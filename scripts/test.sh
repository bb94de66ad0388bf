#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs dependencies, builds
# everything with warnings as errors, checks formatting, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
scripts/build.sh
scripts/check_format.sh
# Bounded fuzzing (seconds per fuzz test binary): safetensors headers,
# config.json, the cluster YAML, the MoE wire format and the Generate API.
export SY_FUZZ_SECONDS=${SY_FUZZ_SECONDS:-20}
export UCX_NET_DEVICES=lo
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${JOBS:-$(nproc)}"
