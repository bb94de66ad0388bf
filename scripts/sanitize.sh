#!/usr/bin/env bash
# The test suites under sanitizers (part of scripts/test.sh; SY_SANITIZERS=0
# there skips it):
#   - AddressSanitizer + UndefinedBehaviorSanitizer: every unit and
#     end-to-end test (CPU build, -O1) in build-asan/;
#   - ThreadSanitizer: the transport and coordinator tests (and the
#     coordinator's rebalancer) in build-tsan/.
# Any sanitizer report fails the test that hit it (halt_on_error).
#   scripts/sanitize.sh [asan|tsan]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
which=${1:-all}

configure() {  # dir sanitizer
  cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 \
    -DSWITCHYARD_WITH_CUDA=OFF "-DSWITCHYARD_SANITIZER=$2" >/dev/null
}

export UCX_NET_DEVICES=lo
export SY_FUZZ_SECONDS=${SY_FUZZ_SECONDS:-20}
export SY_SOAK_SECONDS=${SY_SOAK_SECONDS:-30}
if [ "$which" = all ] || [ "$which" = asan ]; then
  echo "[sanitize] AddressSanitizer + UndefinedBehaviorSanitizer: build-asan"
  configure build-asan address,undefined
  cmake --build build-asan -j "$JOBS"
  # LeakSanitizer stays on: a leak fails the test (but OpenSSL's per-process
  # allocations, scripts/lsan.supp).
  ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1 \
    LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp" \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$JOBS"
fi
if [ "$which" = all ] || [ "$which" = tsan ]; then
  echo "[sanitize] ThreadSanitizer: build-tsan (transport and coordinator tests)"
  configure build-tsan thread
  TSAN_TESTS=(transport_conformance_test coordinator_test rebalancer_test)
  cmake --build build-tsan -j "$JOBS" --target "${TSAN_TESTS[@]}"
  # UCX's memory hooks (libucm, on madvise at thread exit) crash under TSan's
  # interceptors; the transport does not need them.
  UCX_MEM_EVENTS=no \
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp" \
    ctest --test-dir build-tsan --output-on-failure -j "$JOBS" \
    -R "^($(IFS='|'; echo "${TSAN_TESTS[*]}"))\$"
fi
