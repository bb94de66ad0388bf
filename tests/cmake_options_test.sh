#!/usr/bin/env bash
# Build options fail loudly: SWITCHYARD_WITH_CUDA=ON without a CUDA toolkit,
# and unknown values of SWITCHYARD_WITH_CUDA / SWITCHYARD_SANITIZER, are
# configure errors naming the option. Usage: cmake_options_test.sh SOURCE_DIR
set -u
src=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0
passes=0

expect_failure() {  # name, expected message, cmake args...
  local name=$1 msg=$2
  shift 2
  local out
  if out=$(cmake -S "$src" -B "$work/$name" -G Ninja "$@" 2>&1); then
    echo "FAIL $name: configure succeeded"
    fails=$((fails + 1))
  elif ! grep -q "$msg" <<<"$out"; then
    echo "FAIL $name: error does not mention '$msg':"
    echo "$out" | tail -8
    fails=$((fails + 1))
  else
    echo "ok   $name"
    passes=$((passes + 1))
  fi
}

expect_failure cuda_on_without_toolkit "SWITCHYARD_WITH_CUDA=ON but no usable CUDA" \
  -DSWITCHYARD_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER=/nonexistent/bin/nvcc
expect_failure cuda_bad_value "SWITCHYARD_WITH_CUDA must be AUTO, ON or OFF" \
  -DSWITCHYARD_WITH_CUDA=maybe
expect_failure sanitizer_bad_value "SWITCHYARD_SANITIZER must be" \
  -DSWITCHYARD_WITH_CUDA=OFF -DSWITCHYARD_SANITIZER=leaky

# AUTO without a toolkit falls back to a CPU-only build.
if out=$(cmake -S "$src" -B "$work/auto" -G Ninja -DCMAKE_CUDA_COMPILER=/nonexistent/bin/nvcc 2>&1) &&
   grep -q "CUDA=OFF" <<<"$out"; then
  echo "ok   cuda_auto_without_toolkit"
  passes=$((passes + 1))
else
  echo "FAIL cuda_auto_without_toolkit"
  echo "$out" | tail -8
  fails=$((fails + 1))
fi
echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
