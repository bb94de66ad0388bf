#!/usr/bin/env bash
# Every GPU benchmark in one run, each beside its peer or bound measured in
# the same run (the figures in docs/gpu.md come from this script):
#  1. grouped expert FFN, every path, beside cuBLAS's bf16 peak, the copy
#     bandwidth and a PyTorch per-expert loop (bench/gpu_kernels.sh);
#  2. decode attention (GQA, MLA) beside the copy bandwidth;
#  3. engine decode of the dummy Qwen3-30B-A3B slice beside the HBM bound,
#     then Hugging Face transformers generating with the same model shape.
#
# Usage: bench/gpu_bench.sh [BIN_DIR (default build/bin)]
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir="${1:-build/bin}"
export NCCL_NVLS_ENABLE=0
bench/gpu_kernels.sh "${bin_dir}"
echo
echo "## decode attention (${bin_dir}/switchyard-attention-bench)"
"${bin_dir}/switchyard-attention-bench"
echo
echo "## engine decode (${bin_dir}/switchyard-engine-bench)"
"${bin_dir}/switchyard-engine-bench" --models qwen3_30b_a3b_2layers --device cuda \
  --batches 1,16,32,64,256 --prompt 32 --decode 64 --repeats 3 --root .
echo
echo "## Hugging Face transformers, same model shape (bench/hf_decode.py)"
PYTHONUNBUFFERED=1 python3 bench/hf_decode.py --batch-sizes 1,16,32,64,256 --prompt-len 32 \
  --new-tokens 64
