// Device-neutral kernel API: the model math behind the engine.
//
// Every function takes an execution Context (device + stream), the element
// type of its activations/weights, plain pointers and sizes. The CPU backend
// (kernels/cpu, fp32, GEMMs through OpenBLAS) is the reference; a CUDA backend
// fills the same functions for Context{Device::kCuda, stream}, so the engine
// does not change when it arrives. An unsupported device/dtype combination is
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

namespace sy::kernels {

enum class Device { kCpu, kCuda };
enum class DType { kF32, kBF16, kF16 };

struct Context {
  Device device = Device::kCpu;
  void* stream = nullptr;  // cudaStream_t for kCuda; unused on the CPU
};

// y[m, n] = x[m, k] . w[n, k]^T (+ bias[n] when bias != nullptr).
absl::Status Linear(const Context& ctx, DType dtype, const void* x, const void* w, const void* bias,
                    void* y, int64_t m, int64_t n, int64_t k);

// out[t, :] = table[ids[t], :] for t < num_tokens; ids must be < vocab.
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
struct RopeParams {
  int64_t rotary_dim = 0;
  bool interleaved = false;
  const float* inv_freq = nullptr;  // [rotary_dim / 2], host memory on the CPU
  float attention_scaling = 1.0f;
};
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
struct AttentionBatch {
  int64_t num_seqs = 0;
  const int32_t* q_start = nullptr;       // [num_seqs + 1]
  const int32_t* context_lens = nullptr;  // [num_seqs]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  int64_t block_size = 0;
};
struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;    // q/k dot-product length
  int64_t v_dim = 0;       // value length
  int64_t q_stride = 0;    // elements between tokens in q  (>= num_heads * head_dim)
  int64_t out_stride = 0;  // elements between tokens in out (>= num_heads * v_dim)
  int64_t k_slot_stride = 0;
  int64_t v_slot_stride = 0;
  float scale = 1.0f;  // multiplies q.k before softmax
};
absl::Status PagedAttention(const Context& ctx, DType dtype, const void* q, const void* k_cache,
                            const void* v_cache, void* out, const AttentionBatch& batch,
                            const AttentionShape& shape);

// MoE router: scores, expert selection and combine weights for each token.
enum class ScoreFunction { kSoftmax, kSigmoid };
enum class TopkMethod {
  kGreedy,              // plain top-k of the scores
  kGroupLimitedGreedy,  // DeepSeek-V2: groups ranked by their max score
  kNoAuxTc,             // DeepSeek-V3: groups ranked by sum of top-2 (score + bias)
};
struct RouterParams {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  ScoreFunction score = ScoreFunction::kSoftmax;
  TopkMethod method = TopkMethod::kGreedy;
  int64_t num_groups = 1;    // n_group; experts split in equal contiguous groups
  int64_t topk_groups = 1;   // topk_group: groups kept
  bool renormalize = false;  // divide the k weights by their sum (+1e-20)
  float scaling = 1.0f;      // routed_scaling_factor, applied last
  // Added to the scores for *selection only* (e_score_correction_bias /
  // expert_bias); the weights use the raw scores. May be nullptr.
  const float* correction_bias = nullptr;  // [num_experts]
  // Selection value given to experts of groups that are not kept: 0 for the
  // transformers DeepSeek/GLM routers, -inf for Param2MoE (Bailing-MoE-V2).
  float dropped_group_value = 0.0f;
};
// Router logits are always fp32 (as in the reference implementations).
// Experts of groups that are not kept get `dropped_group_value` for
// selection. Ties break toward the lower index.
absl::Status MoeRoute(const Context& ctx, const float* logits,  // [num_tokens, num_experts]
                      int64_t num_tokens, const RouterParams& params,
                      int32_t* topk_ids,     // [num_tokens, top_k]
                      float* topk_weights);  // [num_tokens, top_k]

// Grouped SwiGLU expert FFN over rows sorted by expert:
// for each expert e with rows [offsets[e], offsets[e+1]) of x:
//   out_rows = down_e(silu(gate_e x) * up_e x)
// gate_up[e] is [2 * inter, hidden] (gate rows first), down[e] is
// [hidden, inter]; experts with no rows are skipped.
absl::Status GroupedExpertFfn(const Context& ctx, DType dtype, const void* x,  // [rows, hidden]
                              const int64_t* offsets,                          // [num_experts + 1]
                              int64_t num_experts, const void* const* gate_up,
                              const void* const* down, int64_t hidden, int64_t inter,
                              void* out);  // [rows, hidden]

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
