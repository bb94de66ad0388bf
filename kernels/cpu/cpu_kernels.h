// fp32 CPU backend of the kernel API (kernels/kernels.h).
//
// These are the typed implementations behind the dispatcher in kernels.cc:
// same semantics and layouts as the public functions, with float pointers in
// host memory. Sizes and parameters are assumed valid (kernels.cc rejects the
// parameter combinations it can check). GEMMs go through OpenBLAS; the other
// loops use OpenMP once a call is large enough to pay for the threads.
//
// Sources: cpu_kernels.cc (dense and elementwise ops, expert FFN),
// attention.cc (paged attention), moe.cc (router).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/kernels.h"

namespace sy::kernels::cpu {

// y[m, n] = x[m, k] . w[n, k]^T (+ bias[n]).
void Linear(const float* x, const float* w, const float* bias, float* y, int64_t m, int64_t n,
            int64_t k);

// out[t, :] = table[ids[t], :]. The ids are host memory here, so they are
// checked: an id outside [0, vocab) is InvalidArgument (out may then be
// partially written).
absl::Status Embedding(const int32_t* ids, int64_t num_tokens, const float* table, int64_t vocab,
                       int64_t hidden, float* out);

// y = x * rsqrt(mean(x^2) + eps) * w over strided rows; x == y is allowed.
void RmsNorm(const float* x, int64_t x_stride, const float* w, float* y, int64_t y_stride,
             int64_t rows, int64_t dim, float eps);

// residual += x; y = rmsnorm(residual) * w over contiguous rows.
void AddRmsNorm(float* residual, const float* x, const float* w, float* y, int64_t rows,
                int64_t dim, float eps);

// y[i] += x[i].
void Add(float* y, const float* x, int64_t n);

// out[r, i] = silu(in[r, i]) * in[r, inter + i].
void SiluMul(const float* in, float* out, int64_t rows, int64_t inter);

// In-place rotary embedding (neox or interleaved pairs), see kernels.h.
void Rope(float* x, int64_t num_tokens, int64_t num_heads, int64_t token_stride,
          int64_t head_stride, const int32_t* positions, const RopeParams& params);

// cache[slots[t] * row_elems + j] = src[t * src_stride + j]; slot < 0 skips.
void CacheWrite(const float* src, int64_t src_stride, int64_t num_tokens, int64_t row_elems,
                const int32_t* slots, float* cache);

// Causal attention over a paged KV cache, see kernels.h.
void PagedAttention(const float* q, const float* k_cache, const float* v_cache, float* out,
                    const AttentionBatch& batch, const AttentionShape& shape);

// MoE router (scores, grouped selection, combine weights), see kernels.h.
void MoeRoute(const float* logits, int64_t num_tokens, const RouterParams& params,
              int32_t* topk_ids, float* topk_weights);

// Grouped SwiGLU expert FFN over rows sorted by expert, see kernels.h.
void GroupedExpertFfn(const float* x, const int64_t* offsets, int64_t num_experts,
                      const float* const* gate_up, const float* const* down, int64_t hidden,
                      int64_t inter, float* out);

// Stable counting sort of (token, k) pairs by expert and the row gather, see
// kernels.h. An id outside [0, num_experts) is InvalidArgument.
absl::Status MoePermute(const float* x, int64_t num_tokens, int64_t hidden, const int32_t* topk_ids,
                        int64_t top_k, int64_t num_experts, int64_t* offsets, int32_t* row_pos,
                        float* gathered);

// out[t] = sum_k w[t, k] * expert_out[row_pos[t, k]] in k order.
void MoeCombine(const float* expert_out, const int32_t* row_pos, const float* topk_weights,
                int64_t num_tokens, int64_t top_k, int64_t hidden, float* out);

// Token sampling (sampling.cc), see kernels.h. Parameters out of range
// (temperature < 0, top_p outside (0, 1], ...) are InvalidArgument.
absl::Status SampleTokens(const float* logits, int64_t rows, int64_t vocab,
                          const SampleParams* params, int32_t* tokens, float* logprobs);

}  // namespace sy::kernels::cpu
