#!/usr/bin/env bash
# Installs every Debian 12 package Switchyard builds and tests with.
# Safe to run repeatedly; needs root (or sudo) and Debian's package archive.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git python3
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libyaml-cpp-dev prometheus-cpp-dev libucx-dev ucx-utils
  libopenblas-dev libopenblas-openmp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev clang-format libssl-dev openssl
  prometheus python3-yaml
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[install_deps] all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "[install_deps] installing: ${missing[*]}"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
