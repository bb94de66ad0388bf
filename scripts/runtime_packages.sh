#!/usr/bin/env bash
# Prints the Debian packages that provide the shared libraries the given
# binaries load (ldd, then dpkg -S), one per line, sorted: what a runtime
# image must install (deploy/docker/Dockerfile.cpu). Libraries that no
# package provides (e.g. CUDA's under /usr/local/cuda) are printed to stderr
# as "unpackaged: PATH"; a library that does not resolve at all fails.
#   scripts/runtime_packages.sh build/bin/switchyard-coordinator ...
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 BINARY..." >&2; exit 2; }
libs=$(for b in "$@"; do ldd "$b"; done)
if grep -q "not found" <<<"$libs"; then
  grep "not found" <<<"$libs" | sort -u >&2
  echo "runtime_packages: unresolved libraries" >&2
  exit 1
fi
paths=$(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$libs" | sort -u)
for p in $paths; do
  real=$(readlink -f "$p")
  pkg=$(dpkg -S "$p" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true)
  if [[ -z "$pkg" ]]; then
    echo "unpackaged: $p" >&2
    continue
  fi
  pkg=${pkg%%:*}    # "libfoo:amd64: /path" or "libfoo: /path"
  echo "${pkg%%,*}"  # several packages: the first
done | sort -u
