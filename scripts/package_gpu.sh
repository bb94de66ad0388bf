#!/usr/bin/env bash
# Packs the GPU tests and benchmarks with the shared libraries they need
# (except the C/C++ runtime and the CUDA libraries, which a CUDA 13 machine
# has) into out/gpupkg.tar.xz, to run on a GPU machine without the build
# dependencies:
#   mkdir -p /tmp/gpupkg && tar -xJf out/gpupkg.tar.xz -C /tmp/gpupkg
#   LD_LIBRARY_PATH=/tmp/gpupkg/lib:/usr/local/cuda/lib64 /tmp/gpupkg/bin/cuda_kernels_test
# Tests find the repository's data through SY_SOURCE_DIR baked in at build
# time; run them from a checkout at the same path or pass --root to benches.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
TESTS=(cuda_kernels_test cuda_attention_test cuda_moe_test sampling_kernels_test gpu_golden_test
       kernels_test)
BINS=(switchyard-engine-bench switchyard-attention-bench switchyard-grouped-gemm-bench
      switchyard-generate)
cmake --build "$BUILD_DIR" --target "${TESTS[@]}" switchyard_engine_bench \
  switchyard_attention_bench switchyard_grouped_gemm_bench switchyard_generate
rm -rf out/gpupkg out/gpupkg.tar.xz
mkdir -p out/gpupkg/bin out/gpupkg/lib
for t in "${TESTS[@]}"; do cp "$BUILD_DIR/tests/$t" out/gpupkg/bin/; done
for b in "${BINS[@]}"; do cp "$BUILD_DIR/bin/$b" out/gpupkg/bin/; done
strip out/gpupkg/bin/*
for f in out/gpupkg/bin/*; do
  ldd "$f" | awk '{print $3}' |
    grep -v -E '^$|/libc\.so|/libm\.so|/libstdc\+\+|/libgcc_s|/libdl\.so|/libpthread|/librt\.so|/libcudart|/libcublas' ||
    true
done | sort -u | while read -r lib; do cp -L "$lib" out/gpupkg/lib/; done
tar -C out/gpupkg -cJf out/gpupkg.tar.xz bin lib
du -sh out/gpupkg out/gpupkg.tar.xz
