#!/usr/bin/env bash
# Packs switchyard-engine-bench with the shared libraries it needs (except
# libc/libm/libstdc++/libgcc_s, which the target has in newer versions) into
# out/benchpkg, to run on a machine without the build dependencies:
#   LD_LIBRARY_PATH=out/benchpkg out/benchpkg/switchyard-engine-bench --root .
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR" --target switchyard_engine_bench
rm -rf out/benchpkg
mkdir -p out/benchpkg
cp "$BUILD_DIR/bin/switchyard-engine-bench" out/benchpkg/
strip out/benchpkg/switchyard-engine-bench
for lib in $(ldd "$BUILD_DIR/bin/switchyard-engine-bench" | awk '{print $3}' |
             grep -v -E '^$|/libc\.so|/libm\.so|/libstdc\+\+|/libgcc_s'); do
  cp -L "$lib" out/benchpkg/
done
du -sh out/benchpkg
