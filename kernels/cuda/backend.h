// Host side of the CUDA backend (compiled by the host compiler): contexts,
// memory, cuBLAS GEMMs and the glue that turns launcher errors into
// absl::Status. kernels.cc and device.cc call into it only when the build
// has CUDA (SY_WITH_CUDA); nothing outside kernels/ includes it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/device.h"
#include "kernels/types.h"

namespace sy::kernels::cuda {

// OK, or why CUDA cannot be used (no device, driver too old, ...).
absl::Status Available();

// Creates the stream, cuBLAS handle and workspace behind a kCuda Context;
// DestroyContext frees them (after waiting for the stream).
absl::Status CreateContext(int ordinal, Context* ctx);
void DestroyContext(Context* ctx);
absl::Status Synchronize(const Context& ctx);
absl::StatusOr<DeviceInfo> Info(const Context& ctx);

// InvalidArgument unless `ctx` came from DeviceContext::Create(kCuda).
absl::Status CheckContext(const Context& ctx, absl::string_view fn);
inline cudaStream_t Stream(const Context& ctx) { return static_cast<cudaStream_t>(ctx.stream); }
int NumMultiprocessors(const Context& ctx);
// major * 10 + minor (90 on H100/H200).
int ComputeCapability(const Context& ctx);
// The context's cuBLAS handle (bound to its stream and workspace).
cublasHandle_t BlasHandle(const Context& ctx);
// True while the context's stream is capturing a CUDA graph.
bool IsCapturing(const Context& ctx);

// Scratch memory owned by the context, valid until the next Workspace call
// on it (calls on one context are stream-ordered, so consecutive kernels can
// share it). Growing it waits for the stream; it cannot grow while a graph is
// being captured (FailedPrecondition: run the step once before capturing).
absl::StatusOr<void*> Workspace(const Context& ctx, size_t bytes);
// A second, independent scratch region (for calls that need two at once).
absl::StatusOr<void*> Workspace2(const Context& ctx, size_t bytes);

// Bumped whenever a workspace region is reallocated.
int64_t WorkspaceGeneration(const Context& ctx);

// CUDA graphs behind kernels::DeviceGraph: capture `body` on the context's
// stream and instantiate it (a cudaGraphExec_t as void*).
absl::StatusOr<void*> CaptureGraph(const Context& ctx, const std::function<absl::Status()>& body);
absl::Status LaunchGraph(const Context& ctx, void* exec);
void DestroyGraph(void* exec);

// Internal error naming `fn` and the CUDA error, or OK.
absl::Status Check(cudaError_t err, absl::string_view fn);

absl::StatusOr<void*> Malloc(int64_t bytes);
void Free(void* ptr);
absl::Status Copy(const Context& ctx, void* dst, const void* src, int64_t bytes,
                  cudaMemcpyKind kind, bool wait);
absl::Status Memset(const Context& ctx, void* dst, int value, int64_t bytes);

// cuBLAS GEMMs (row-major semantics of kernels.h). fp32 runs in plain fp32
// (no TF32); bf16 accumulates in fp32.
absl::Status Linear(const Context& ctx, DType dtype, const void* x, const void* w, const void* bias,
                    void* y, int64_t m, int64_t n, int64_t k);
absl::Status LinearF32Out(const Context& ctx, DType dtype, const void* x, const void* w, float* y,
                          int64_t m, int64_t n, int64_t k);
absl::Status BatchedLinear(const Context& ctx, DType dtype, const void* x, int64_t x_row_stride,
                           int64_t x_batch_stride, const void* w, int64_t w_batch_stride, void* y,
                           int64_t y_row_stride, int64_t y_batch_stride, int64_t batch, int64_t m,
                           int64_t n, int64_t k);

// Grouped expert FFN (grouped_ffn.cc): the small-M kernel for decode-sized
// inputs; for prefill-sized ones the wgmma grouped GEMM on Hopper
// (grouped_gemm_sm90.cu, bf16), cuBLAS's grouped GEMM or a cuBLAS GEMM per
// expert. An explicit path that cannot run the input (kSm90 on fp32 or
// another GPU) is Unimplemented.
enum class GroupedFfnPath { kAuto, kSmallM, kCublasGrouped, kCublasLoop, kSm90 };
// Whether kSm90 can run these shapes on this GPU (Hopper, bf16, see
// GroupedGemmSm90Supported).
bool GroupedFfnSm90Available(const Context& ctx, DType dtype, int64_t num_experts, int64_t hidden,
                             int64_t inter);
// kernels::GroupedExpertFfnGraphSafe on CUDA.
bool GroupedExpertFfnGraphSafe(const Context& ctx, DType dtype, int64_t num_experts,
                               int64_t num_rows, int64_t hidden, int64_t inter);
absl::Status GroupedExpertFfn(const Context& ctx, DType dtype, const void* x,
                              const int64_t* offsets, int64_t num_experts, int64_t num_rows,
                              const void* const* gate_up, const void* const* down, int64_t hidden,
                              int64_t inter, void* out,
                              GroupedFfnPath path = GroupedFfnPath::kAuto);

}  // namespace sy::kernels::cuda
