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

# k8s_manifest_test validates the manifests with Node.js and npm (the
# machines here have NodeSource's nodejs, which brings npm; elsewhere Debian's
# packages do) and renders them with kubectl, which Debian 12 does not
# package: it must come with the machine.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  PACKAGES+=(nodejs npm)
fi
if ! command -v kubectl >/dev/null; then
  echo "[install_deps] warning: kubectl is not on PATH (not in Debian 12); k8s_manifest_test needs it" >&2
fi

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
