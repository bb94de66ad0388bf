#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs dependencies, builds
# everything with warnings as errors, checks formatting, runs every test, then
# runs them again under sanitizers (scripts/sanitize.sh).
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
# The same suites under AddressSanitizer + UndefinedBehaviorSanitizer, and the
# transport and coordinator tests under ThreadSanitizer (SY_SANITIZERS=0
# skips them).
if [ "${SY_SANITIZERS:-1}" != 0 ]; then scripts/sanitize.sh; fi
