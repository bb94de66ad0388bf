#!/usr/bin/env bash
# GPU kernel benchmarks in one run: the grouped expert FFN on every
# cuda::GroupedExpertFfn path (C++), then the PyTorch per-expert loop on the
# same shapes and routing, so both tables come from the same GPU and session.
#
# Usage: bench/gpu_kernels.sh [BIN_DIR (default build/bin)] [extra bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir="${1:-build/bin}"
shift || true
echo "## bench/gpu_kernels.sh ${bin_dir} $*"
echo "## grouped expert FFN: C++ (${bin_dir}/switchyard-grouped-gemm-bench)"
"${bin_dir}/switchyard-grouped-gemm-bench" "$@"
echo
echo "## grouped expert FFN: PyTorch baseline (bench/torch_grouped_gemm.py)"
python3 bench/torch_grouped_gemm.py
