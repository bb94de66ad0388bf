// Launchers of the CUDA kernels (kernels/cuda/*.cu), called by the CUDA
// backend glue (backend.cc) after kernels.cc has validated the parameters.
//
// This header is compiled by nvcc and by the host compiler alike, so it uses
// only the plain types of kernels/types.h and the CUDA runtime: no abseil.
// Every launcher queues its work on `stream` and returns the launch's
// cudaError_t (cudaGetLastError), never blocks, and never allocates: scratch
// memory comes in as `workspace` of at least the size its *WorkspaceBytes
// function names. Pointers are device memory. `dtype` is kF32 or kBF16
// (backend.cc rejects kF16 before calling).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/types.h"

namespace sy::kernels::cuda {

// ---- elementwise.cu ----------------------------------------------------------
cudaError_t Embedding(cudaStream_t stream, DType dtype, const int32_t* ids, int64_t num_tokens,
                      const void* table, int64_t vocab, int64_t hidden, void* out);
cudaError_t RmsNorm(cudaStream_t stream, DType dtype, const void* x, int64_t x_stride,
                    const void* w, void* y, int64_t y_stride, int64_t rows, int64_t dim, float eps);
cudaError_t AddRmsNorm(cudaStream_t stream, DType dtype, void* residual, const void* x,
                       const void* w, void* y, int64_t rows, int64_t dim, float eps);
cudaError_t Add(cudaStream_t stream, DType dtype, void* y, const void* x, int64_t n);
// y[r, c] += bias[c] for a [rows, cols] matrix.
cudaError_t AddBias(cudaStream_t stream, DType dtype, void* y, const void* bias, int64_t rows,
                    int64_t cols);
cudaError_t SiluMul(cudaStream_t stream, DType dtype, const void* in, void* out, int64_t rows,
                    int64_t inter);
cudaError_t Rope(cudaStream_t stream, DType dtype, void* x, int64_t num_tokens, int64_t num_heads,
                 int64_t token_stride, int64_t head_stride, const int32_t* positions,
                 const RopeParams& params);
cudaError_t CacheWrite(cudaStream_t stream, DType dtype, const void* src, int64_t src_stride,
                       int64_t num_tokens, int64_t row_elems, const int32_t* slots, void* cache);
cudaError_t Copy2D(cudaStream_t stream, DType dtype, const void* src, int64_t src_stride, void* dst,
                   int64_t dst_stride, int64_t rows, int64_t cols);
cudaError_t SigmoidGateMul(cudaStream_t stream, DType dtype, void* y, const void* gate,
                           int64_t gate_stride, int64_t rows, int64_t dim);
// dst[i] = (to) src[i] between fp32 and bf16 (either direction) on the device.
cudaError_t Convert(cudaStream_t stream, DType src_dtype, const void* src, DType dst_dtype,
                    void* dst, int64_t n);

// ---- attention.cu ------------------------------------------------------------
// Paged attention (kernels.h), prefill and decode, GQA and MLA's absorbed form.
size_t PagedAttentionWorkspaceBytes(const AttentionBatch& batch, const AttentionShape& shape,
                                    int num_multiprocessors);
cudaError_t PagedAttention(cudaStream_t stream, DType dtype, const void* q, const void* k_cache,
                           const void* v_cache, void* out, const AttentionBatch& batch,
                           const AttentionShape& shape, int num_multiprocessors, void* workspace,
                           size_t workspace_bytes);

// ---- moe.cu ------------------------------------------------------------------
cudaError_t MoeRoute(cudaStream_t stream, const float* logits, int64_t num_tokens,
                     const RouterParams& params, int32_t* topk_ids, float* topk_weights);
size_t MoePermuteWorkspaceBytes(int64_t num_tokens, int64_t top_k, int64_t num_experts);
cudaError_t MoePermute(cudaStream_t stream, DType dtype, const void* x, int64_t num_tokens,
                       int64_t hidden, const int32_t* topk_ids, int64_t top_k, int64_t num_experts,
                       int64_t* offsets, int32_t* row_pos, void* gathered, void* workspace,
                       size_t workspace_bytes);
cudaError_t MoeCombine(cudaStream_t stream, DType dtype, const void* expert_out,
                       const int32_t* row_pos, const float* topk_weights, int64_t num_tokens,
                       int64_t top_k, int64_t hidden, void* out);

// ---- grouped_gemm.cu ---------------------------------------------------------
// The grouped expert FFN for few rows per expert (decode): reads each active
// expert's weights once, offsets and pointer arrays on the device, no host
// synchronisation (CUDA-graph safe). `inter_buf` is [num_rows, inter] scratch
// of `dtype`.
cudaError_t GroupedExpertFfnSmallM(cudaStream_t stream, DType dtype, const void* x,
                                   const int64_t* offsets, int64_t num_experts, int64_t num_rows,
                                   const void* const* gate_up, const void* const* down,
                                   int64_t hidden, int64_t inter, void* inter_buf, void* out);

// ---- grouped_gemm_sm90.cu ---------------------------------------------------
// The grouped expert FFN on Hopper tensor cores (wgmma; the binary must
// contain sm_90a code): bf16, hidden and inter multiples of 8, at most 1024
// experts, 16-byte-aligned weights. `inter_buf` is [num_rows, inter] bf16
// scratch, `scratch` GroupedGemmSm90ScratchBytes of 128-byte-aligned device
// memory (the kernel's weight tensor maps). Device offsets and pointers, no
// host synchronisation (CUDA-graph safe).
size_t GroupedGemmSm90ScratchBytes(int num_multiprocessors);
bool GroupedGemmSm90Supported(DType dtype, int64_t num_experts, int64_t hidden, int64_t inter);
cudaError_t GroupedExpertFfnSm90(cudaStream_t stream, const void* x, const int64_t* offsets,
                                 int64_t num_experts, int64_t num_rows, const void* const* gate_up,
                                 const void* const* down, int64_t hidden, int64_t inter,
                                 void* inter_buf, void* scratch, void* out,
                                 int num_multiprocessors);

// ---- sampling.cu -------------------------------------------------------------
size_t SampleTokensWorkspaceBytes(int64_t rows, int64_t vocab);
cudaError_t SampleTokens(cudaStream_t stream, const float* logits, int64_t rows, int64_t vocab,
                         const SampleParams* params, int32_t* tokens, float* logprobs,
                         void* workspace, size_t workspace_bytes);

}  // namespace sy::kernels::cuda
