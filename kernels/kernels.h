// Device-neutral kernel API: the model math behind the engine.
//
// Every function takes an execution Context (device + stream), the element
// type of its activations/weights, plain pointers and sizes. The CPU backend
// (kernels/cpu, fp32, GEMMs through OpenBLAS) is the reference; the CUDA
// backend (kernels/cuda, bf16 or fp32 storage, fp32 accumulation) fills the
// same functions for a Context from kernels::DeviceContext (kernels/device.h),
// so the engine does not change with the device. On CUDA every call is
// asynchronous on the context's stream, and its pointers are device memory
// (types.h). An unsupported device/dtype combination is
// absl::UnimplementedError, never a crash. Shapes are validated by the caller
// (the model loader); kernels assume consistent sizes.
//
// Layout conventions: row-major; weights in PyTorch nn.Linear layout
// [out_features, in_features]. Pointers for one call must not alias unless a
// function says so. All functions are safe to call from several threads on
// distinct outputs.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/types.h"

namespace sy::kernels {

// y[m, n] = x[m, k] . w[n, k]^T (+ bias[n] when bias != nullptr).
absl::Status Linear(const Context& ctx, DType dtype, const void* x, const void* w, const void* bias,
                    void* y, int64_t m, int64_t n, int64_t k);

// y[m, n] (fp32) = x[m, k] . w[n, k]^T with x and w of `dtype`: router
// logits and lm_head, whose outputs stay fp32 whatever the weights' type.
absl::Status LinearF32Out(const Context& ctx, DType dtype, const void* x, const void* w, float* y,
                          int64_t m, int64_t n, int64_t k);

// out[t, :] = table[ids[t], :] for t < num_tokens; ids must be < vocab (on
// the CPU an id outside it is InvalidArgument; on CUDA, where ids are device
// memory, such a row is written as zeros).
absl::Status Embedding(const Context& ctx, DType dtype, const int32_t* ids, int64_t num_tokens,
                       const void* table,                          // [vocab, hidden]
                       int64_t vocab, int64_t hidden, void* out);  // [num_tokens, hidden]

// RMSNorm over `dim` elements of each of `rows` rows:
//   y = x * rsqrt(mean(x^2) + eps) * w
// Row r starts at x + r * x_stride (elements) and y + r * y_stride; x == y
// (in place) is allowed. Per-head q/k norms use rows = tokens * heads.
absl::Status RmsNorm(const Context& ctx, DType dtype, const void* x, int64_t x_stride,
                     const void* w,  // [dim]
                     void* y, int64_t y_stride, int64_t rows, int64_t dim, float eps);

// Fused residual add and RMSNorm over contiguous rows:
//   residual[r, :] += x[r, :];  y[r, :] = rmsnorm(residual[r, :]) * w
absl::Status AddRmsNorm(const Context& ctx, DType dtype, void* residual,  // [rows, dim]
                        const void* x,                                    // [rows, dim]
                        const void* w,                                    // [dim]
                        void* y,                                          // [rows, dim]
                        int64_t rows, int64_t dim, float eps);

// y[i] += x[i] for i < n.
absl::Status Add(const Context& ctx, DType dtype, void* y, const void* x, int64_t n);

// out[r, i] = silu(in[r, i]) * in[r, inter + i]: the SwiGLU of a fused
// gate/up projection (gate rows first, then up rows).
absl::Status SiluMul(const Context& ctx, DType dtype, const void* in,  // [rows, 2 * inter]
                     void* out,                                        // [rows, inter]
                     int64_t rows, int64_t inter);

// Rotary position embedding, applied in place to the first `rotary_dim`
// elements of each head. Head h of token t starts at
// x + t * token_stride + h * head_stride. Frequencies: inv_freq[i], i <
// rotary_dim / 2; the angle is positions[t] * inv_freq[i]; cos/sin are
// multiplied by `attention_scaling` (1 except for YaRN).
//   neox (interleaved == false): pairs (i, i + rotary_dim/2)
//   interleaved (GPT-J / DeepSeek MLA): pairs (2i, 2i + 1)
absl::Status Rope(const Context& ctx, DType dtype, void* x, int64_t num_tokens, int64_t num_heads,
                  int64_t token_stride, int64_t head_stride, const int32_t* positions,
                  const RopeParams& params);

// Writes token rows into a paged cache: cache[slots[t] * row_elems + j] =
// src[t * src_stride + j] for j < row_elems. slot = block * block_size +
// offset. A negative slot skips the row.
absl::Status CacheWrite(const Context& ctx, DType dtype, const void* src, int64_t src_stride,
                        int64_t num_tokens, int64_t row_elems, const int32_t* slots, void* cache);

// Causal attention of a batch of sequences over a paged KV cache.
//
// Sequence s owns query tokens [q_start[s], q_start[s+1]) of q/out; they are
// the last q_len tokens of its context of context_lens[s] tokens (already
// written to the cache), so query i sits at position context_lens[s] - q_len
// + i and attends to cache positions 0..that position. Position p of sequence
// s lives in slot block_tables[s * max_blocks_per_seq + p / block_size] *
// block_size + p % block_size.
//
// Cache rows: key of slot x, kv head g at k_cache + x * k_slot_stride + g *
// head_dim; value at v_cache + x * v_slot_stride + g * v_dim. MLA's absorbed
// form uses num_kv_heads = 1 with k and v pointing into the same latent rows.
// Query head h reads kv head h / (num_heads / num_kv_heads).
absl::Status PagedAttention(const Context& ctx, DType dtype, const void* q, const void* k_cache,
                            const void* v_cache, void* out, const AttentionBatch& batch,
                            const AttentionShape& shape);

// Router logits are always fp32 (as in the reference implementations).
// Experts of groups that are not kept get `dropped_group_value` for
// selection. Ties break toward the lower index.
absl::Status MoeRoute(const Context& ctx, const float* logits,  // [num_tokens, num_experts]
                      int64_t num_tokens, const RouterParams& params,
                      int32_t* topk_ids,     // [num_tokens, top_k]
                      float* topk_weights);  // [num_tokens, top_k]

// MoE token permutation: sorts the num_tokens * top_k (token, k) pairs by
// expert, stably (the pairs of one expert in (token, k) order, as a counting
// sort), and gathers their activations:
//   rows of expert e: [offsets[e], offsets[e + 1])
//   row_pos[t * top_k + k]: the sorted row of pair (t, k)
//   gathered[row_pos[t * top_k + k], :] = x[t, :]
// An id outside [0, num_experts) is InvalidArgument on the CPU; on CUDA (ids
// in device memory) such a pair gets row_pos -1 and no row.
absl::Status MoePermute(const Context& ctx, DType dtype, const void* x,  // [num_tokens, hidden]
                        int64_t num_tokens, int64_t hidden,
                        const int32_t* topk_ids,  // [num_tokens, top_k]
                        int64_t top_k, int64_t num_experts,
                        int64_t* offsets,  // [num_experts + 1]
                        int32_t* row_pos,  // [num_tokens * top_k]
                        void* gathered);   // [num_tokens * top_k, hidden]

// The inverse of MoePermute with the weighted combine:
//   out[t, :] = sum_k topk_weights[t, k] * expert_out[row_pos[t * top_k + k], :]
// summed in k order; a negative row_pos contributes nothing.
absl::Status MoeCombine(const Context& ctx, DType dtype,
                        const void* expert_out,     // [num_tokens * top_k, hidden]
                        const int32_t* row_pos,     // [num_tokens * top_k]
                        const float* topk_weights,  // [num_tokens, top_k]
                        int64_t num_tokens, int64_t top_k, int64_t hidden,
                        void* out);  // [num_tokens, hidden]

// Grouped SwiGLU expert FFN over rows sorted by expert:
// for each expert e with rows [offsets[e], offsets[e+1]) of x:
//   out_rows = down_e(silu(gate_e x) * up_e x)
// gate_up[e] is [2 * inter, hidden] (gate rows first), down[e] is
// [hidden, inter]; experts with no rows are skipped. num_rows is
// offsets[num_experts] (a host value: on CUDA the offsets are device memory,
// and the backend picks its kernel from the average rows per expert).
absl::Status GroupedExpertFfn(const Context& ctx, DType dtype, const void* x,  // [rows, hidden]
                              const int64_t* offsets,                          // [num_experts + 1]
                              int64_t num_experts, int64_t num_rows, const void* const* gate_up,
                              const void* const* down, int64_t hidden, int64_t inter,
                              void* out);  // [rows, hidden]

// True when GroupedExpertFfn with these sizes runs without host
// synchronisation on `ctx`, so that it can be captured in a CUDA graph: on
// CUDA up to 2 rows per expert on average (the small-M kernel) and, on
// Hopper in bf16, at any size (the wgmma grouped GEMM). False on the CPU (no
// graphs there).
bool GroupedExpertFfnGraphSafe(const Context& ctx, DType dtype, int64_t num_experts,
                               int64_t num_rows, int64_t hidden, int64_t inter);

// Picks one token per row of fp32 logits [rows, vocab] with the row's
// SampleParams (types.h): greedy argmax (ties to the lower id) when
// temperature == 0; otherwise e_i = exp((logit_i - max) / temperature) as
// fixed-point weights (kernels/sampling_math.h), ranked by (e desc, id asc):
// top_k keeps the first k, top_p the shortest prefix of those whose weight
// reaches top_p of theirs, min_p drops e < min_p (the largest e is 1), and the
// draw takes, in that order, the first kept token whose cumulative weight
// exceeds u * kept weight, u = CounterUniform(seed, step): integer arithmetic,
// so the same token on every device. logprobs[r] (may be null) is
// log_softmax(logits[r])[token], the raw distribution's, whatever the
// sampling settings. NaN logits count as -inf, +inf as the largest float.
// Parameters out of range are InvalidArgument on the CPU; on CUDA (parameters
// in device memory) such a row gets token -1 and the caller validates first.
absl::Status SampleTokens(const Context& ctx, const float* logits,  // [rows, vocab]
                          int64_t rows, int64_t vocab,
                          const SampleParams* params,  // [rows]
                          int32_t* tokens,             // [rows]
                          float* logprobs);            // [rows] or nullptr

// ---- Layout helpers (kernels/layout_kernels.cc) ----------------------------

// Strided batched GEMM: for b < batch,
//   y_b[m, n] = x_b[m, k] . w_b[n, k]^T
// where row i of x_b starts at x + b * x_batch_stride + i * x_row_stride,
// w_b = w + b * w_batch_stride is a contiguous [n, k] matrix, and row i of y_b
// starts at y + b * y_batch_stride + i * y_row_stride. Used for MLA's
// per-head absorbed projections.
absl::Status BatchedLinear(const Context& ctx, DType dtype, const void* x, int64_t x_row_stride,
                           int64_t x_batch_stride, const void* w, int64_t w_batch_stride, void* y,
                           int64_t y_row_stride, int64_t y_batch_stride, int64_t batch, int64_t m,
                           int64_t n, int64_t k);

// dst[r * dst_stride + c] = src[r * src_stride + c] for r < rows, c < cols.
absl::Status Copy2D(const Context& ctx, DType dtype, const void* src, int64_t src_stride, void* dst,
                    int64_t dst_stride, int64_t rows, int64_t cols);

// y[r, :] *= sigmoid(gate[r * gate_stride]) for r < rows (Qwen2-MoE's gated
// shared expert).
absl::Status SigmoidGateMul(const Context& ctx, DType dtype, void* y, const void* gate,
                            int64_t gate_stride, int64_t rows, int64_t dim);

}  // namespace sy::kernels
