// Dispatcher of the device-neutral kernel API: checks what it can check
// without touching the data (negative sizes, inconsistent parameters), then
// routes each call by (device, dtype) to a backend. Only the CPU fp32 backend
// exists so far; every other combination is UnimplementedError.
#include "kernels/kernels.h"

#include <initializer_list>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "kernels/cpu/cpu_kernels.h"

namespace sy::kernels {
namespace {

absl::string_view DeviceName(Device device) {
  switch (device) {
    case Device::kCpu:
      return "cpu";
    case Device::kCuda:
      return "cuda";
  }
  return "unknown";
}

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
  }
  return "unknown";
}

bool IsCpuF32(const Context& ctx, DType dtype) {
  return ctx.device == Device::kCpu && dtype == DType::kF32;
}

absl::Status Unsupported(absl::string_view fn, const Context& ctx, DType dtype) {
  return absl::UnimplementedError(absl::StrCat(fn, ": not implemented for device ",
                                               DeviceName(ctx.device), " and dtype ",
                                               DTypeName(dtype)));
}

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

}  // namespace

absl::Status Linear(const Context& ctx, DType dtype, const void* x, const void* w, const void* bias,
                    void* y, int64_t m, int64_t n, int64_t k) {
  SY_RETURN_IF_ERROR(NonNegative("Linear", {{"m", m}, {"n", n}, {"k", k}}));
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (m > kIntMax || n > kIntMax || k > kIntMax) {
    return Invalid("Linear", "a dimension exceeds the 32-bit GEMM range");
  }
  if (!IsCpuF32(ctx, dtype)) return Unsupported("Linear", ctx, dtype);
  cpu::Linear(static_cast<const float*>(x), static_cast<const float*>(w),
              static_cast<const float*>(bias), static_cast<float*>(y), m, n, k);
  return absl::OkStatus();
}

absl::Status Embedding(const Context& ctx, DType dtype, const int32_t* ids, int64_t num_tokens,
                       const void* table, int64_t vocab, int64_t hidden, void* out) {
  SY_RETURN_IF_ERROR(
      NonNegative("Embedding", {{"num_tokens", num_tokens}, {"vocab", vocab}, {"hidden", hidden}}));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("Embedding", ctx, dtype);
  return cpu::Embedding(ids, num_tokens, static_cast<const float*>(table), vocab, hidden,
                        static_cast<float*>(out));
}

absl::Status RmsNorm(const Context& ctx, DType dtype, const void* x, int64_t x_stride,
                     const void* w, void* y, int64_t y_stride, int64_t rows, int64_t dim,
                     float eps) {
  SY_RETURN_IF_ERROR(NonNegative("RmsNorm", {{"rows", rows}, {"dim", dim}}));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("RmsNorm", ctx, dtype);
  cpu::RmsNorm(static_cast<const float*>(x), x_stride, static_cast<const float*>(w),
               static_cast<float*>(y), y_stride, rows, dim, eps);
  return absl::OkStatus();
}

absl::Status Add(const Context& ctx, DType dtype, void* y, const void* x, int64_t n) {
  SY_RETURN_IF_ERROR(NonNegative("Add", {{"n", n}}));
  if (!IsCpuF32(ctx, dtype)) return Unsupported("Add", ctx, dtype);
  cpu::Add(static_cast<float*>(y), static_cast<const float*>(x), n);
  return absl::OkStatus();
}

absl::Status SiluMul(const Context& ctx, DType dtype, const void* in, void* out, int64_t rows,
                     int64_t inter) {
  SY_RETURN_IF_ERROR(NonNegative("SiluMul", {{"rows", rows}, {"inter", inter}}));
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
  if (!IsCpuF32(ctx, dtype)) return Unsupported("Rope", ctx, dtype);
  cpu::Rope(static_cast<float*>(x), num_tokens, num_heads, token_stride, head_stride, positions,
            params);
  return absl::OkStatus();
}

absl::Status CacheWrite(const Context& ctx, DType dtype, const void* src, int64_t src_stride,
                        int64_t num_tokens, int64_t row_elems, const int32_t* slots, void* cache) {
  SY_RETURN_IF_ERROR(
      NonNegative("CacheWrite", {{"num_tokens", num_tokens}, {"row_elems", row_elems}}));
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
  // Router logits are fp32 on every device: only the device selects a backend.
  if (ctx.device != Device::kCpu) return Unsupported("MoeRoute", ctx, DType::kF32);
  cpu::MoeRoute(logits, num_tokens, params, topk_ids, topk_weights);
  return absl::OkStatus();
}

absl::Status GroupedExpertFfn(const Context& ctx, DType dtype, const void* x,
                              const int64_t* offsets, int64_t num_experts,
                              const void* const* gate_up, const void* const* down, int64_t hidden,
                              int64_t inter, void* out) {
  SY_RETURN_IF_ERROR(NonNegative(
      "GroupedExpertFfn", {{"num_experts", num_experts}, {"hidden", hidden}, {"inter", inter}}));
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (hidden > kIntMax || 2 * inter > kIntMax) {
    return Invalid("GroupedExpertFfn", "a dimension exceeds the 32-bit GEMM range");
  }
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

}  // namespace sy::kernels
