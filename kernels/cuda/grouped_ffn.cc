// The grouped SwiGLU expert FFN on CUDA: picks between the small-M kernel
// (grouped_gemm.cu) and, on Hopper in bf16, the wgmma grouped GEMM
// (grouped_gemm_sm90.cu), both with device offsets and no host
// synchronisation, and cuBLAS (offsets and weight pointers copied to the
// host first, a synchronisation that prefill-sized inputs amortise).
//
// Scratch: Workspace2 holds the intermediates ([rows, inter] for kSmallM;
// [rows, 2 * inter] then [rows, inter] for cuBLAS), Workspace the device
// pointer arrays of the grouped cuBLAS calls.
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/backend.h"
#include "kernels/cuda/launch.h"

namespace sy::kernels::cuda {
namespace {

// Without the sm90 kernel, kAuto takes the small-M kernel while rows <=
// kSmallMRowsPerExpert * num_experts. The grouped GEMM benchmark on an H200
// put the crossover there: at 1 row per expert on average the two paths tie,
// at 2-4 cuBLAS's grouped GEMM is 1.05-1.4x faster, at 8 it is 2-3.5x
// faster. While a CUDA graph is being captured kAuto always takes the
// small-M kernel: the cuBLAS paths synchronise with the host.
constexpr int64_t kSmallMRowsPerExpert = 2;
// kAuto's per-expert cuBLAS loop: at least this many rows per expert on
// average and experts of at least this many weights per matrix.
constexpr int64_t kLoopRowsPerExpert = 128;
constexpr int64_t kLoopMinExpertElems = int64_t{1} << 23;

absl::Status BlasOk(cublasStatus_t s, absl::string_view fn) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(fn, ": cuBLAS failed with status ", static_cast<int>(s),
                                          " (", cublasGetStatusString(s), ")"));
}

cudaDataType_t BlasType(DType dtype) { return dtype == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF; }

struct HostExperts {
  std::vector<int64_t> offsets;      // [num_experts + 1]
  std::vector<const void*> gate_up;  // [num_experts]
  std::vector<const void*> down;     // [num_experts]
};

absl::StatusOr<HostExperts> CopyExpertsToHost(const Context& ctx, const int64_t* offsets,
                                              int64_t num_experts, const void* const* gate_up,
                                              const void* const* down) {
  if (IsCapturing(ctx)) {
    return absl::FailedPreconditionError(
        "GroupedExpertFfn: the cuBLAS paths read the offsets on the host and cannot run during "
        "CUDA graph capture (use kSmallM)");
  }
  HostExperts h;
  const auto n = static_cast<size_t>(num_experts);
  h.offsets.resize(n + 1);
  h.gate_up.resize(n);
  h.down.resize(n);
  SY_RETURN_IF_ERROR(cuda::Copy(ctx, h.offsets.data(), offsets, static_cast<int64_t>((n + 1) * 8),
                                cudaMemcpyDeviceToHost, false));
  SY_RETURN_IF_ERROR(cuda::Copy(ctx, h.gate_up.data(), gate_up,
                                static_cast<int64_t>(n * sizeof(void*)), cudaMemcpyDeviceToHost,
                                false));
  SY_RETURN_IF_ERROR(cuda::Copy(ctx, h.down.data(), down, static_cast<int64_t>(n * sizeof(void*)),
                                cudaMemcpyDeviceToHost, true));
  return h;
}

// Row-major y[m, n] = x[m, k] . w[n, k]^T as column-major C (n x m) = w^T x
// (see backend.cc's Gemm), for one expert.
absl::Status ExpertGemm(cublasHandle_t blas, DType dtype, const void* x, const void* w, void* y,
                        int64_t m, int64_t n, int64_t k) {
  const float alpha = 1.0f, beta = 0.0f;
  return BlasOk(
      cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                   static_cast<int>(k), &alpha, w, BlasType(dtype), static_cast<int>(k), x,
                   BlasType(dtype), static_cast<int>(k), &beta, y, BlasType(dtype),
                   static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "GroupedExpertFfn(cublasGemmEx)");
}

absl::Status CublasFfn(const Context& ctx, DType dtype, const void* x, int64_t num_experts,
                       int64_t num_rows, const HostExperts& h, int64_t hidden, int64_t inter,
                       void* out, bool grouped) {
  const int64_t elem = dtype == DType::kF32 ? 4 : 2;
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (num_rows > kIntMax || h.offsets[0] != 0 ||
      h.offsets[static_cast<size_t>(num_experts)] != num_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("GroupedExpertFfn: offsets must run from 0 to num_rows (", num_rows, ")"));
  }
  // [rows, 2 * inter] gate/up outputs, then [rows, inter] activations, each
  // 256-byte aligned.
  const int64_t gu_bytes = (num_rows * 2 * inter * elem + 255) / 256 * 256;
  SY_ASSIGN_OR_RETURN(void* scratch,
                      Workspace2(ctx, static_cast<size_t>(gu_bytes + num_rows * inter * elem)));
  char* gu = static_cast<char*>(scratch);
  char* act = gu + gu_bytes;
  const char* xb = static_cast<const char*>(x);
  char* ob = static_cast<char*>(out);
  cublasHandle_t blas = BlasHandle(ctx);

  std::vector<int64_t> active;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t rows = h.offsets[static_cast<size_t>(e + 1)] - h.offsets[static_cast<size_t>(e)];
    if (rows < 0) return absl::InvalidArgumentError("GroupedExpertFfn: offsets decrease");
    if (rows > 0) active.push_back(e);
  }
  if (active.empty()) return absl::OkStatus();

  if (!grouped) {
    for (const int64_t e : active) {
      const int64_t begin = h.offsets[static_cast<size_t>(e)];
      const int64_t rows = h.offsets[static_cast<size_t>(e + 1)] - begin;
      SY_RETURN_IF_ERROR(ExpertGemm(blas, dtype, xb + begin * hidden * elem,
                                    h.gate_up[static_cast<size_t>(e)],
                                    gu + begin * 2 * inter * elem, rows, 2 * inter, hidden));
    }
    SY_RETURN_IF_ERROR(
        Check(SiluMul(Stream(ctx), dtype, gu, act, num_rows, inter), "GroupedExpertFfn(SiluMul)"));
    for (const int64_t e : active) {
      const int64_t begin = h.offsets[static_cast<size_t>(e)];
      const int64_t rows = h.offsets[static_cast<size_t>(e + 1)] - begin;
      SY_RETURN_IF_ERROR(ExpertGemm(blas, dtype, act + begin * inter * elem,
                                    h.down[static_cast<size_t>(e)], ob + begin * hidden * elem,
                                    rows, hidden, inter));
    }
    return absl::OkStatus();
  }

  // One group per active expert (its own n = rows); every group holds one
  // problem. The A/B/C pointer arrays live on the device (Workspace).
  const auto groups = static_cast<int>(active.size());
  std::vector<cublasOperation_t> op_t(groups, CUBLAS_OP_T), op_n(groups, CUBLAS_OP_N);
  std::vector<int> m1(groups, static_cast<int>(2 * inter)), m2(groups, static_cast<int>(hidden));
  std::vector<int> n(groups), k1(groups, static_cast<int>(hidden)),
      k2(groups, static_cast<int>(inter));
  std::vector<int> ld_gu(groups, static_cast<int>(2 * inter));
  std::vector<int> size(groups, 1);
  std::vector<float> alpha(groups, 1.0f), beta(groups, 0.0f);
  // Pointer table: [A1 | B1 | C1 | A2 | B2 | C2], groups entries each.
  std::vector<const void*> table(static_cast<size_t>(6 * groups));
  for (int g = 0; g < groups; ++g) {
    const auto e = static_cast<size_t>(active[static_cast<size_t>(g)]);
    const int64_t begin = h.offsets[e];
    n[g] = static_cast<int>(h.offsets[e + 1] - begin);
    table[static_cast<size_t>(0 * groups + g)] = h.gate_up[e];
    table[static_cast<size_t>(1 * groups + g)] = xb + begin * hidden * elem;
    table[static_cast<size_t>(2 * groups + g)] = gu + begin * 2 * inter * elem;
    table[static_cast<size_t>(3 * groups + g)] = h.down[e];
    table[static_cast<size_t>(4 * groups + g)] = act + begin * inter * elem;
    table[static_cast<size_t>(5 * groups + g)] = ob + begin * hidden * elem;
  }
  SY_ASSIGN_OR_RETURN(void* dev_table, Workspace(ctx, table.size() * sizeof(void*)));
  // Pageable source: cudaMemcpyAsync has staged it when it returns.
  SY_RETURN_IF_ERROR(cuda::Copy(ctx, dev_table, table.data(),
                                static_cast<int64_t>(table.size() * sizeof(void*)),
                                cudaMemcpyHostToDevice, false));
  auto* ptrs = static_cast<const void**>(dev_table);
  const cudaDataType_t type = BlasType(dtype);
  SY_RETURN_IF_ERROR(BlasOk(cublasGemmGroupedBatchedEx(
                                blas, op_t.data(), op_n.data(), m1.data(), n.data(), k1.data(),
                                alpha.data(), ptrs, type, k1.data(), ptrs + groups, type, k1.data(),
                                beta.data(), const_cast<void* const*>(ptrs + 2 * groups), type,
                                ld_gu.data(), groups, size.data(), CUBLAS_COMPUTE_32F),
                            "GroupedExpertFfn(cublasGemmGroupedBatchedEx gate_up)"));
  SY_RETURN_IF_ERROR(
      Check(SiluMul(Stream(ctx), dtype, gu, act, num_rows, inter), "GroupedExpertFfn(SiluMul)"));
  return BlasOk(cublasGemmGroupedBatchedEx(
                    blas, op_t.data(), op_n.data(), m2.data(), n.data(), k2.data(), alpha.data(),
                    ptrs + 3 * groups, type, k2.data(), ptrs + 4 * groups, type, k2.data(),
                    beta.data(), const_cast<void* const*>(ptrs + 5 * groups), type, m2.data(),
                    groups, size.data(), CUBLAS_COMPUTE_32F),
                "GroupedExpertFfn(cublasGemmGroupedBatchedEx down)");
}

}  // namespace

bool GroupedFfnSm90Available(const Context& ctx, DType dtype, int64_t num_experts, int64_t hidden,
                             int64_t inter) {
  return ComputeCapability(ctx) == 90 &&
         GroupedGemmSm90Supported(dtype, num_experts, hidden, inter);
}

bool GroupedExpertFfnGraphSafe(const Context& ctx, DType dtype, int64_t num_experts,
                               int64_t num_rows, int64_t hidden, int64_t inter) {
  // kAuto's choice without host synchronisation: the small-M kernel, or the
  // sm90 kernel wherever it runs (the cuBLAS paths would be faster than a
  // small-M kernel captured in their place).
  return num_rows <= kSmallMRowsPerExpert * num_experts ||
         GroupedFfnSm90Available(ctx, dtype, num_experts, hidden, inter);
}

absl::Status GroupedExpertFfn(const Context& ctx, DType dtype, const void* x,
                              const int64_t* offsets, int64_t num_experts, int64_t num_rows,
                              const void* const* gate_up, const void* const* down, int64_t hidden,
                              int64_t inter, void* out, GroupedFfnPath path) {
  SY_RETURN_IF_ERROR(CheckContext(ctx, "GroupedExpertFfn"));
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::UnimplementedError("GroupedExpertFfn: CUDA supports f32 and bf16");
  }
  if (num_rows == 0 || num_experts == 0 || hidden == 0) return absl::OkStatus();
  const int64_t elem = dtype == DType::kF32 ? 4 : 2;
  if (inter == 0) return cuda::Memset(ctx, out, 0, num_rows * hidden * elem);
  const bool sm90_ok = GroupedFfnSm90Available(ctx, dtype, num_experts, hidden, inter);
  if (path == GroupedFfnPath::kAuto && sm90_ok) {
    // H200, bf16 (switchyard-grouped-gemm-bench): the small-M kernel up to
    // half a row per expert on average (Qwen3-30B-A3B 4 tokens: 88 vs 100
    // us; DeepSeek-V3 16 tokens: a tie), the sm90 kernel from there on,
    // ahead of every cuBLAS path (DeepSeek-V3 8192 tokens: a tie with one
    // cuBLAS GEMM per expert, without its host synchronisation).
    path = 2 * num_rows <= num_experts ? GroupedFfnPath::kSmallM : GroupedFfnPath::kSm90;
  }

  if (path == GroupedFfnPath::kAuto) {
    path = num_rows <= kSmallMRowsPerExpert * num_experts || IsCapturing(ctx)
               ? GroupedFfnPath::kSmallM
               : GroupedFfnPath::kCublasGrouped;
    // Large experts with many rows each: one cuBLAS GEMM per expert picks
    // better tiles than the grouped call (H200, DeepSeek-V3 shapes at 4096
    // and 8192 tokens: 39% and 55% of peak against 25% and 28%); for
    // Qwen3-30B-A3B's smaller experts the grouped call stays ahead.
    if (path == GroupedFfnPath::kCublasGrouped && num_rows >= kLoopRowsPerExpert * num_experts &&
        hidden * inter >= kLoopMinExpertElems) {
      path = GroupedFfnPath::kCublasLoop;
    }
  }
  if (path == GroupedFfnPath::kSm90) {
    if (!sm90_ok) {
      return absl::UnimplementedError(absl::StrCat(
          "GroupedExpertFfn: the sm90 path needs an sm_90 GPU (this one: ", ComputeCapability(ctx),
          "), bf16, hidden and inter multiples of 8 (", hidden, ", ", inter,
          ") and at most 1024 experts (", num_experts, ")"));
    }
    // [rows, inter] intermediate, then (256-byte aligned) the kernel's
    // tensor-map scratch.
    const size_t inter_bytes = static_cast<size_t>(num_rows * inter * elem + 255) / 256 * 256;
    SY_ASSIGN_OR_RETURN(
        void* scratch,
        Workspace2(ctx, inter_bytes + GroupedGemmSm90ScratchBytes(NumMultiprocessors(ctx))));
    return Check(
        GroupedExpertFfnSm90(Stream(ctx), x, offsets, num_experts, num_rows, gate_up, down, hidden,
                             inter, scratch, static_cast<char*>(scratch) + inter_bytes, out,
                             NumMultiprocessors(ctx)),
        "GroupedExpertFfn(sm90)");
  }
  if (path == GroupedFfnPath::kSmallM) {
    SY_ASSIGN_OR_RETURN(void* inter_buf,
                        Workspace2(ctx, static_cast<size_t>(num_rows * inter * elem)));
    return Check(GroupedExpertFfnSmallM(Stream(ctx), dtype, x, offsets, num_experts, num_rows,
                                        gate_up, down, hidden, inter, inter_buf, out),
                 "GroupedExpertFfn(small M)");
  }
  SY_ASSIGN_OR_RETURN(HostExperts h, CopyExpertsToHost(ctx, offsets, num_experts, gate_up, down));
  return CublasFfn(ctx, dtype, x, num_experts, num_rows, h, hidden, inter, out,
                   path == GroupedFfnPath::kCublasGrouped);
}

}  // namespace sy::kernels::cuda
