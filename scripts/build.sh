#!/usr/bin/env bash
# Configures and builds Switchyard into build/ (or $BUILD_DIR).
#   scripts/build.sh [extra cmake -D options...]
# Installs the Debian packages it needs first (scripts/install_deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}

scripts/install_deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} "$@"
cmake --build "$BUILD_DIR" -j "$JOBS"
