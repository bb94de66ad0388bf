// Dispatcher of the device-neutral kernel API: checks what it can check
// without touching the data (negative sizes, inconsistent parameters), then
// routes each call by (device, dtype) to a backend: the CPU's fp32 reference
// or the CUDA kernels (fp32 and bf16); every other combination is
// UnimplementedError.
#include "kernels/kernels.h"

#include <initializer_list>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/dispatch.h"

namespace sy::kernels {
namespace {

using internal::IsCpuF32;
using internal::Unsupported;

// InvalidArgument naming the first negative size.
absl::Status NonNegative(absl::string_view fn,
                         std::initializer_list<std::pair<absl::string_view, int64_t>> sizes) {
  for (const auto& [name, value] : sizes) {
    if (value < 0) {
      return absl::InvalidArgumentError(absl::StrCat(fn, ": ", name, " is negative (", value, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status Invalid(absl::string_view fn, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(fn, ": ", what));
}

#if SY_WITH_CUDA
absl::Status CudaPagedAttention(const Context& ctx, DType dtype, const void* q, const void* k_cache,
                                const void* v_cache, void* out, const AttentionBatch& batch,
                                const AttentionShape& shape) {
  const int sms = cuda::NumMultiprocessors(ctx);
  const size_t bytes = cuda::PagedAttentionWorkspaceBytes(batch, shape, sms);
  SY_ASSIGN_OR_RETURN(void* ws, cuda::Workspace(ctx, bytes));
  return cuda::Check(cuda::PagedAttention(cuda::Stream(ctx), dtype, q, k_cache, v_cache, out, batch,
                                          shape, sms, ws, bytes),
                     "PagedAttention");
}

absl::Status CudaMoePermute(const Context& ctx, DType dtype, const void* x, int64_t num_tokens,
                            int64_t hidden, const int32_t* topk_ids, int64_t top_k,
                            int64_t num_experts, int64_t* offsets, int32_t* row_pos,
                            void* gathered) {
  const size_t bytes = cuda::MoePermuteWorkspaceBytes(num_tokens, top_k, num_experts);
  SY_ASSIGN_OR_RETURN(void* ws, cuda::Workspace(ctx, bytes));
  return cuda::Check(cuda::MoePermute(cuda::Stream(ctx), dtype, x, num_tokens, hidden, topk_ids,
                                      top_k, num_experts, offsets, row_pos, gathered, ws, bytes),
                     "MoePermute");
}

absl::Status CudaSampleTokens(const Context& ctx, const float* logits, int64_t rows, int64_t vocab,
                              const SampleParams* params, int32_t* tokens, float* logprobs) {
  const size_t bytes = cuda::SampleTokensWorkspaceBytes(rows, vocab);
  SY_ASSIGN_OR_RETURN(void* ws, cuda::Workspace(ctx, bytes));
  return cuda::Check(cuda::SampleTokens(cuda::Stream(ctx), logits, rows, vocab, params, tokens,
                                        logprobs, ws, bytes),
                     "SampleTokens");
}
#endif

}  // namespace

absl::Status Linear(const Context& ctx, DType dtype, const void* x, const void* w, const void* bias,
                    void* y, int64_t m, int64_t n, int64_t k) {
  SY_RETURN_IF_ERROR(NonNegative("Linear", {{"m", m}, {"n", n}, {"k", k}}));
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (m > kIntMax || n > kIntMax || k > kIntMax) {
    return Invalid("Linear", "a dimension exceeds the 32-bit GEMM range");
  }
  SY_ROUTE_CUDA("Linear", dtype, cuda::Linear(ctx, dtype, x, w, bias, y, m, n, k));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("Linear", ctx, dtype);
  cpu::Linear(static_cast<const float*>(x), static_cast<const float*>(w),
              static_cast<const float*>(bias), static_cast<float*>(y), m, n, k);
  return absl::OkStatus();
}

absl::Status Embedding(const Context& ctx, DType dtype, const int32_t* ids, int64_t num_tokens,
                       const void* table, int64_t vocab, int64_t hidden, void* out) {
  SY_RETURN_IF_ERROR(
      NonNegative("Embedding", {{"num_tokens", num_tokens}, {"vocab", vocab}, {"hidden", hidden}}));
  SY_LAUNCH_CUDA(
      "Embedding", dtype,
      cuda::Embedding(cuda::Stream(ctx), dtype, ids, num_tokens, table, vocab, hidden, out));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("Embedding", ctx, dtype);
  return cpu::Embedding(ids, num_tokens, static_cast<const float*>(table), vocab, hidden,
                        static_cast<float*>(out));
}

absl::Status RmsNorm(const Context& ctx, DType dtype, const void* x, int64_t x_stride,
                     const void* w, void* y, int64_t y_stride, int64_t rows, int64_t dim,
                     float eps) {
  SY_RETURN_IF_ERROR(NonNegative("RmsNorm", {{"rows", rows}, {"dim", dim}}));
  SY_LAUNCH_CUDA(
      "RmsNorm", dtype,
      cuda::RmsNorm(cuda::Stream(ctx), dtype, x, x_stride, w, y, y_stride, rows, dim, eps));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("RmsNorm", ctx, dtype);
  cpu::RmsNorm(static_cast<const float*>(x), x_stride, static_cast<const float*>(w),
               static_cast<float*>(y), y_stride, rows, dim, eps);
  return absl::OkStatus();
}

absl::Status Add(const Context& ctx, DType dtype, void* y, const void* x, int64_t n) {
  SY_RETURN_IF_ERROR(NonNegative("Add", {{"n", n}}));
  SY_LAUNCH_CUDA("Add", dtype, cuda::Add(cuda::Stream(ctx), dtype, y, x, n));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("Add", ctx, dtype);
  cpu::Add(static_cast<float*>(y), static_cast<const float*>(x), n);
  return absl::OkStatus();
}

absl::Status SiluMul(const Context& ctx, DType dtype, const void* in, void* out, int64_t rows,
                     int64_t inter) {
  SY_RETURN_IF_ERROR(NonNegative("SiluMul", {{"rows", rows}, {"inter", inter}}));
  SY_LAUNCH_CUDA("SiluMul", dtype, cuda::SiluMul(cuda::Stream(ctx), dtype, in, out, rows, inter));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("SiluMul", ctx, dtype);
  cpu::SiluMul(static_cast<const float*>(in), static_cast<float*>(out), rows, inter);
  return absl::OkStatus();
}

absl::Status Rope(const Context& ctx, DType dtype, void* x, int64_t num_tokens, int64_t num_heads,
                  int64_t token_stride, int64_t head_stride, const int32_t* positions,
                  const RopeParams& params) {
  SY_RETURN_IF_ERROR(NonNegative(
      "Rope",
      {{"num_tokens", num_tokens}, {"num_heads", num_heads}, {"rotary_dim", params.rotary_dim}}));
  if (params.rotary_dim % 2 != 0) return Invalid("Rope", "rotary_dim must be even");
  if (params.rotary_dim > 0 && params.inv_freq == nullptr) {
    return Invalid("Rope", "inv_freq is null");
  }
  SY_LAUNCH_CUDA("Rope", dtype,
                 cuda::Rope(cuda::Stream(ctx), dtype, x, num_tokens, num_heads, token_stride,
                            head_stride, positions, params));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("Rope", ctx, dtype);
  cpu::Rope(static_cast<float*>(x), num_tokens, num_heads, token_stride, head_stride, positions,
            params);
  return absl::OkStatus();
}

absl::Status CacheWrite(const Context& ctx, DType dtype, const void* src, int64_t src_stride,
                        int64_t num_tokens, int64_t row_elems, const int32_t* slots, void* cache) {
  SY_RETURN_IF_ERROR(
      NonNegative("CacheWrite", {{"num_tokens", num_tokens}, {"row_elems", row_elems}}));
  SY_LAUNCH_CUDA("CacheWrite", dtype,
                 cuda::CacheWrite(cuda::Stream(ctx), dtype, src, src_stride, num_tokens, row_elems,
                                  slots, cache));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("CacheWrite", ctx, dtype);
  cpu::CacheWrite(static_cast<const float*>(src), src_stride, num_tokens, row_elems, slots,
                  static_cast<float*>(cache));
  return absl::OkStatus();
}

absl::Status PagedAttention(const Context& ctx, DType dtype, const void* q, const void* k_cache,
                            const void* v_cache, void* out, const AttentionBatch& batch,
                            const AttentionShape& shape) {
  SY_RETURN_IF_ERROR(NonNegative("PagedAttention", {{"num_seqs", batch.num_seqs},
                                                    {"num_heads", shape.num_heads},
                                                    {"head_dim", shape.head_dim},
                                                    {"v_dim", shape.v_dim}}));
  if (shape.num_kv_heads <= 0 || shape.num_heads % shape.num_kv_heads != 0) {
    return Invalid("PagedAttention", "num_heads must be a positive multiple of num_kv_heads");
  }
  if (batch.num_seqs > 0 && batch.block_size <= 0) {
    return Invalid("PagedAttention", "block_size must be positive");
  }
  SY_ROUTE_CUDA("PagedAttention", dtype,
                CudaPagedAttention(ctx, dtype, q, k_cache, v_cache, out, batch, shape));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("PagedAttention", ctx, dtype);
  cpu::PagedAttention(static_cast<const float*>(q), static_cast<const float*>(k_cache),
                      static_cast<const float*>(v_cache), static_cast<float*>(out), batch, shape);
  return absl::OkStatus();
}

absl::Status MoeRoute(const Context& ctx, const float* logits, int64_t num_tokens,
                      const RouterParams& params, int32_t* topk_ids, float* topk_weights) {
  SY_RETURN_IF_ERROR(NonNegative("MoeRoute", {{"num_tokens", num_tokens}}));
  if (params.num_experts <= 0 || params.top_k <= 0 || params.top_k > params.num_experts) {
    return Invalid("MoeRoute", "need 0 < top_k <= num_experts");
  }
  if (params.method != TopkMethod::kGreedy) {
    if (params.num_groups <= 0 || params.num_experts % params.num_groups != 0) {
      return Invalid("MoeRoute", "num_groups must divide num_experts");
    }
    if (params.topk_groups <= 0 || params.topk_groups > params.num_groups) {
      return Invalid("MoeRoute", "need 0 < topk_groups <= num_groups");
    }
    if (params.method == TopkMethod::kNoAuxTc && params.num_experts / params.num_groups < 2) {
      return Invalid("MoeRoute", "kNoAuxTc needs at least 2 experts per group");
    }
  }
  if (ctx.device == Device::kCuda &&
      (params.num_experts > 512 || params.top_k > 32 || params.num_groups > 64)) {
    return Invalid("MoeRoute", "CUDA supports up to 512 experts, top_k 32 and 64 groups");
  }
  // Router logits are fp32 on every device: only the device selects a backend.
  SY_LAUNCH_CUDA(
      "MoeRoute", DType::kF32,
      cuda::MoeRoute(cuda::Stream(ctx), logits, num_tokens, params, topk_ids, topk_weights));
  if (ctx.device != Device::kCpu) return Unsupported("MoeRoute", ctx, DType::kF32);
  cpu::MoeRoute(logits, num_tokens, params, topk_ids, topk_weights);
  return absl::OkStatus();
}

absl::Status GroupedExpertFfn(const Context& ctx, DType dtype, const void* x,
                              const int64_t* offsets, int64_t num_experts, int64_t num_rows,
                              const void* const* gate_up, const void* const* down, int64_t hidden,
                              int64_t inter, void* out) {
  SY_RETURN_IF_ERROR(NonNegative("GroupedExpertFfn", {{"num_experts", num_experts},
                                                      {"num_rows", num_rows},
                                                      {"hidden", hidden},
                                                      {"inter", inter}}));
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (hidden > kIntMax || 2 * inter > kIntMax) {
    return Invalid("GroupedExpertFfn", "a dimension exceeds the 32-bit GEMM range");
  }
  SY_ROUTE_CUDA("GroupedExpertFfn", dtype,
                cuda::GroupedExpertFfn(ctx, dtype, x, offsets, num_experts, num_rows, gate_up, down,
                                       hidden, inter, out));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("GroupedExpertFfn", ctx, dtype);
  // Typed copies of the per-expert weight pointers.
  std::vector<const float*> gate_up_f(static_cast<size_t>(num_experts));
  std::vector<const float*> down_f(static_cast<size_t>(num_experts));
  for (int64_t e = 0; e < num_experts; ++e) {
    gate_up_f[static_cast<size_t>(e)] = static_cast<const float*>(gate_up[e]);
    down_f[static_cast<size_t>(e)] = static_cast<const float*>(down[e]);
  }
  cpu::GroupedExpertFfn(static_cast<const float*>(x), offsets, num_experts, gate_up_f.data(),
                        down_f.data(), hidden, inter, static_cast<float*>(out));
  return absl::OkStatus();
}

bool GroupedExpertFfnGraphSafe(const Context& ctx, DType dtype, int64_t num_experts,
                               int64_t num_rows, int64_t hidden, int64_t inter) {
  if (ctx.device != Device::kCuda ||
      !internal::CudaReady(ctx, dtype, "GroupedExpertFfnGraphSafe").ok()) {
    return false;
  }
#if SY_WITH_CUDA
  return cuda::GroupedExpertFfnGraphSafe(ctx, dtype, num_experts, num_rows, hidden, inter);
#else
  return false;  // (CudaReady is never OK without CUDA)
#endif
}

absl::Status LinearF32Out(const Context& ctx, DType dtype, const void* x, const void* w, float* y,
                          int64_t m, int64_t n, int64_t k) {
  SY_RETURN_IF_ERROR(NonNegative("LinearF32Out", {{"m", m}, {"n", n}, {"k", k}}));
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (m > kIntMax || n > kIntMax || k > kIntMax) {
    return Invalid("LinearF32Out", "a dimension exceeds the 32-bit GEMM range");
  }
  SY_ROUTE_CUDA("LinearF32Out", dtype, cuda::LinearF32Out(ctx, dtype, x, w, y, m, n, k));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("LinearF32Out", ctx, dtype);
  cpu::Linear(static_cast<const float*>(x), static_cast<const float*>(w), nullptr, y, m, n, k);
  return absl::OkStatus();
}

absl::Status AddRmsNorm(const Context& ctx, DType dtype, void* residual, const void* x,
                        const void* w, void* y, int64_t rows, int64_t dim, float eps) {
  SY_RETURN_IF_ERROR(NonNegative("AddRmsNorm", {{"rows", rows}, {"dim", dim}}));
  if (ctx.device == Device::kCuda && dim > 12288) {
    return Invalid("AddRmsNorm", "dim above 12288 is not supported on CUDA");
  }
  SY_LAUNCH_CUDA("AddRmsNorm", dtype,
                 cuda::AddRmsNorm(cuda::Stream(ctx), dtype, residual, x, w, y, rows, dim, eps));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("AddRmsNorm", ctx, dtype);
  cpu::AddRmsNorm(static_cast<float*>(residual), static_cast<const float*>(x),
                  static_cast<const float*>(w), static_cast<float*>(y), rows, dim, eps);
  return absl::OkStatus();
}

absl::Status MoePermute(const Context& ctx, DType dtype, const void* x, int64_t num_tokens,
                        int64_t hidden, const int32_t* topk_ids, int64_t top_k, int64_t num_experts,
                        int64_t* offsets, int32_t* row_pos, void* gathered) {
  SY_RETURN_IF_ERROR(NonNegative("MoePermute", {{"num_tokens", num_tokens},
                                                {"hidden", hidden},
                                                {"top_k", top_k},
                                                {"num_experts", num_experts}}));
  if (num_experts == 0 || top_k == 0) return Invalid("MoePermute", "need num_experts, top_k > 0");
  if (num_tokens * top_k > std::numeric_limits<int32_t>::max()) {
    return Invalid("MoePermute", "num_tokens * top_k exceeds the 32-bit row range");
  }
  if (ctx.device == Device::kCuda && num_experts > 8192) {
    return Invalid("MoePermute", "CUDA supports up to 8192 experts");
  }
  SY_ROUTE_CUDA("MoePermute", dtype,
                CudaMoePermute(ctx, dtype, x, num_tokens, hidden, topk_ids, top_k, num_experts,
                               offsets, row_pos, gathered));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("MoePermute", ctx, dtype);
  return cpu::MoePermute(static_cast<const float*>(x), num_tokens, hidden, topk_ids, top_k,
                         num_experts, offsets, row_pos, static_cast<float*>(gathered));
}

absl::Status MoeCombine(const Context& ctx, DType dtype, const void* expert_out,
                        const int32_t* row_pos, const float* topk_weights, int64_t num_tokens,
                        int64_t top_k, int64_t hidden, void* out) {
  SY_RETURN_IF_ERROR(NonNegative(
      "MoeCombine", {{"num_tokens", num_tokens}, {"top_k", top_k}, {"hidden", hidden}}));
  SY_LAUNCH_CUDA("MoeCombine", dtype,
                 cuda::MoeCombine(cuda::Stream(ctx), dtype, expert_out, row_pos, topk_weights,
                                  num_tokens, top_k, hidden, out));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("MoeCombine", ctx, dtype);
  cpu::MoeCombine(static_cast<const float*>(expert_out), row_pos, topk_weights, num_tokens, top_k,
                  hidden, static_cast<float*>(out));
  return absl::OkStatus();
}

absl::Status SampleTokens(const Context& ctx, const float* logits, int64_t rows, int64_t vocab,
                          const SampleParams* params, int32_t* tokens, float* logprobs) {
  SY_RETURN_IF_ERROR(NonNegative("SampleTokens", {{"rows", rows}, {"vocab", vocab}}));
  if (rows > 0 && vocab == 0) return Invalid("SampleTokens", "vocab must be positive");
  SY_ROUTE_CUDA("SampleTokens", DType::kF32,
                CudaSampleTokens(ctx, logits, rows, vocab, params, tokens, logprobs));
  if (ctx.device != Device::kCpu) return Unsupported("SampleTokens", ctx, DType::kF32);
  return cpu::SampleTokens(logits, rows, vocab, params, tokens, logprobs);
}

}  // namespace sy::kernels
