// Host side of the CUDA backend: contexts, memory, cuBLAS GEMMs.
#include "kernels/cuda/backend.h"

#include "kernels/cuda/launch.h"

#include <cublas_v2.h>

#include <algorithm>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace sy::kernels::cuda {
namespace {

// What a kCuda Context's `backend` points at.
struct Backend {
  int ordinal = 0;
  int multiprocessors = 0;
  int compute_capability = 0;  // major * 10 + minor
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  void* blas_workspace = nullptr;
  void* workspace[2] = {nullptr, nullptr};
  size_t workspace_bytes[2] = {0, 0};
  int64_t workspace_generation = 0;
};

Backend* Of(const Context& ctx) { return static_cast<Backend*>(ctx.backend); }

constexpr size_t kBlasWorkspaceBytes = size_t{32} << 20;

const char* BlasStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS_UNKNOWN";
  }
}

absl::Status BlasCheck(cublasStatus_t s, absl::string_view fn) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(fn, ": cuBLAS failed with ", BlasStatusName(s)));
}

cudaDataType_t CudaType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

}  // namespace

absl::Status Check(cudaError_t err, absl::string_view fn) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(fn, ": CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

absl::Status Available() {
  static const absl::Status status = [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return absl::UnavailableError(absl::StrCat("no usable CUDA device: ", cudaGetErrorName(err),
                                                 " (", cudaGetErrorString(err), ")"));
    }
    if (count == 0) return absl::UnavailableError("no CUDA device is present");
    return absl::OkStatus();
  }();
  return status;
}

absl::Status CreateContext(int ordinal, Context* ctx) {
  SY_RETURN_IF_ERROR(Available());
  int count = 0;
  SY_RETURN_IF_ERROR(Check(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  if (ordinal < 0 || ordinal >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", ordinal, " does not exist (", count, " present)"));
  }
  SY_RETURN_IF_ERROR(Check(cudaSetDevice(ordinal), "cudaSetDevice"));
  auto* b = new Backend;
  b->ordinal = ordinal;
  absl::Status st =
      Check(cudaDeviceGetAttribute(&b->multiprocessors, cudaDevAttrMultiProcessorCount, ordinal),
            "cudaDeviceGetAttribute");
  int cc_major = 0, cc_minor = 0;
  if (st.ok()) {
    st = Check(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, ordinal),
               "cudaDeviceGetAttribute");
  }
  if (st.ok()) {
    st = Check(cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, ordinal),
               "cudaDeviceGetAttribute");
  }
  b->compute_capability = cc_major * 10 + cc_minor;
  if (st.ok())
    st = Check(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (st.ok()) st = BlasCheck(cublasCreate(&b->blas), "cublasCreate");
  if (st.ok()) st = BlasCheck(cublasSetStream(b->blas, b->stream), "cublasSetStream");
  // A workspace of our own keeps cuBLAS from allocating during graph capture.
  if (st.ok()) st = Check(cudaMalloc(&b->blas_workspace, kBlasWorkspaceBytes), "cudaMalloc");
  if (st.ok()) {
    st = BlasCheck(cublasSetWorkspace(b->blas, b->blas_workspace, kBlasWorkspaceBytes),
                   "cublasSetWorkspace");
  }
  ctx->device = Device::kCuda;
  ctx->stream = b->stream;
  ctx->backend = b;
  if (!st.ok()) {
    DestroyContext(ctx);
    return st;
  }
  return absl::OkStatus();
}

void DestroyContext(Context* ctx) {
  Backend* b = Of(*ctx);
  if (b == nullptr) return;
  if (b->stream != nullptr) (void)cudaStreamSynchronize(b->stream);
  if (b->blas != nullptr) cublasDestroy(b->blas);
  (void)cudaFree(b->blas_workspace);
  for (void* w : b->workspace) (void)cudaFree(w);
  if (b->stream != nullptr) (void)cudaStreamDestroy(b->stream);
  delete b;
  ctx->backend = nullptr;
  ctx->stream = nullptr;
}

absl::Status CheckContext(const Context& ctx, absl::string_view fn) {
  if (ctx.backend == nullptr || ctx.stream == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(fn, ": a CUDA Context must come from kernels::DeviceContext::Create"));
  }
  return absl::OkStatus();
}

absl::Status Synchronize(const Context& ctx) {
  SY_RETURN_IF_ERROR(CheckContext(ctx, "Synchronize"));
  return Check(cudaStreamSynchronize(Stream(ctx)), "cudaStreamSynchronize");
}

absl::StatusOr<DeviceInfo> Info(const Context& ctx) {
  SY_RETURN_IF_ERROR(CheckContext(ctx, "Info"));
  cudaDeviceProp prop{};
  SY_RETURN_IF_ERROR(
      Check(cudaGetDeviceProperties(&prop, Of(ctx)->ordinal), "cudaGetDeviceProperties"));
  size_t free_b = 0, total_b = 0;
  SY_RETURN_IF_ERROR(Check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo"));
  DeviceInfo info;
  info.name = prop.name;
  info.total_memory = static_cast<int64_t>(total_b);
  info.free_memory = static_cast<int64_t>(free_b);
  info.multiprocessors = prop.multiProcessorCount;
  info.compute_capability = prop.major * 10 + prop.minor;
  return info;
}

int NumMultiprocessors(const Context& ctx) { return Of(ctx)->multiprocessors; }
int ComputeCapability(const Context& ctx) { return Of(ctx)->compute_capability; }

cublasHandle_t BlasHandle(const Context& ctx) { return Of(ctx)->blas; }

bool IsCapturing(const Context& ctx) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(Stream(ctx), &status) != cudaSuccess) return false;
  return status != cudaStreamCaptureStatusNone;
}

namespace {

absl::StatusOr<void*> WorkspaceSlot(const Context& ctx, size_t bytes, int slot) {
  SY_RETURN_IF_ERROR(CheckContext(ctx, "Workspace"));
  Backend* b = Of(ctx);
  if (bytes <= b->workspace_bytes[slot]) return b->workspace[slot];
  if (IsCapturing(ctx)) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA workspace must grow to ", bytes,
                     " bytes during graph capture; run the step once before capturing it"));
  }
  // Queued kernels may still use the old region.
  SY_RETURN_IF_ERROR(Check(cudaStreamSynchronize(b->stream), "cudaStreamSynchronize"));
  (void)cudaFree(b->workspace[slot]);
  b->workspace[slot] = nullptr;
  b->workspace_bytes[slot] = 0;
  const size_t grown = std::max(bytes, size_t{1} << 20);
  SY_RETURN_IF_ERROR(Check(cudaMalloc(&b->workspace[slot], grown), "cudaMalloc(workspace)"));
  b->workspace_bytes[slot] = grown;
  ++b->workspace_generation;
  return b->workspace[slot];
}

}  // namespace

int64_t WorkspaceGeneration(const Context& ctx) { return Of(ctx)->workspace_generation; }

absl::StatusOr<void*> Workspace(const Context& ctx, size_t bytes) {
  return WorkspaceSlot(ctx, bytes, 0);
}
absl::StatusOr<void*> Workspace2(const Context& ctx, size_t bytes) {
  return WorkspaceSlot(ctx, bytes, 1);
}

absl::StatusOr<void*> CaptureGraph(const Context& ctx, const std::function<absl::Status()>& body) {
  SY_RETURN_IF_ERROR(CheckContext(ctx, "CaptureGraph"));
  SY_RETURN_IF_ERROR(Check(cudaStreamBeginCapture(Stream(ctx), cudaStreamCaptureModeThreadLocal),
                           "cudaStreamBeginCapture"));
  const absl::Status body_status = body();
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(Stream(ctx), &graph);
  if (!body_status.ok()) {
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return body_status;
  }
  SY_RETURN_IF_ERROR(Check(end, "cudaStreamEndCapture"));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  SY_RETURN_IF_ERROR(Check(inst, "cudaGraphInstantiate"));
  return static_cast<void*>(exec);
}

absl::Status LaunchGraph(const Context& ctx, void* exec) {
  SY_RETURN_IF_ERROR(CheckContext(ctx, "LaunchGraph"));
  return Check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), Stream(ctx)), "cudaGraphLaunch");
}

void DestroyGraph(void* exec) {
  if (exec != nullptr) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}

absl::StatusOr<void*> Malloc(int64_t bytes) {
  void* p = nullptr;
  if (bytes == 0) return p;
  const cudaError_t err = cudaMalloc(&p, static_cast<size_t>(bytes));
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return absl::ResourceExhaustedError(
        absl::StrCat("cudaMalloc of ", bytes, " bytes: out of device memory"));
  }
  SY_RETURN_IF_ERROR(Check(err, "cudaMalloc"));
  return p;
}

void Free(void* ptr) {
  if (ptr != nullptr) (void)cudaFree(ptr);
}

absl::Status Copy(const Context& ctx, void* dst, const void* src, int64_t bytes,
                  cudaMemcpyKind kind, bool wait) {
  SY_RETURN_IF_ERROR(CheckContext(ctx, "Copy"));
  if (bytes == 0) return absl::OkStatus();
  SY_RETURN_IF_ERROR(Check(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), kind, Stream(ctx)),
                           "cudaMemcpy"));
  if (wait) return Check(cudaStreamSynchronize(Stream(ctx)), "cudaStreamSynchronize");
  return absl::OkStatus();
}

absl::Status Memset(const Context& ctx, void* dst, int value, int64_t bytes) {
  SY_RETURN_IF_ERROR(CheckContext(ctx, "Memset"));
  if (bytes == 0) return absl::OkStatus();
  return Check(cudaMemsetAsync(dst, value, static_cast<size_t>(bytes), Stream(ctx)), "cudaMemset");
}

// Row-major y[m, n] = x[m, k] . w[n, k]^T is column-major y^T = w^T-view: C
// (n x m, ldc n) = op(A) op(B) with A = w (k x n col-major, transposed) and B
// = x (k x m col-major).
namespace {

absl::Status Gemm(const Context& ctx, DType in, DType out, const void* x, int64_t ldx,
                  const void* w, void* y, int64_t ldy, int64_t m, int64_t n, int64_t k,
                  absl::string_view fn) {
  if (m == 0 || n == 0) return absl::OkStatus();
  const float alpha = 1.0f, beta = 0.0f;
  if (k == 0) return cuda::Memset(ctx, y, 0, m * ldy * (out == DType::kF32 ? 4 : 2));
  return BlasCheck(
      cublasGemmEx(Of(ctx)->blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n),
                   static_cast<int>(m), static_cast<int>(k), &alpha, w, CudaType(in),
                   static_cast<int>(k), x, CudaType(in), static_cast<int>(ldx), &beta, y,
                   CudaType(out), static_cast<int>(ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      fn);
}

}  // namespace

absl::Status Linear(const Context& ctx, DType dtype, const void* x, const void* w, const void* bias,
                    void* y, int64_t m, int64_t n, int64_t k) {
  SY_RETURN_IF_ERROR(Gemm(ctx, dtype, dtype, x, k, w, y, n, m, n, k, "Linear"));
  if (bias == nullptr || m == 0 || n == 0) return absl::OkStatus();
  return Check(AddBias(Stream(ctx), dtype, y, bias, m, n), "Linear(bias)");
}

absl::Status LinearF32Out(const Context& ctx, DType dtype, const void* x, const void* w, float* y,
                          int64_t m, int64_t n, int64_t k) {
  return Gemm(ctx, dtype, DType::kF32, x, k, w, y, n, m, n, k, "LinearF32Out");
}

absl::Status BatchedLinear(const Context& ctx, DType dtype, const void* x, int64_t x_row_stride,
                           int64_t x_batch_stride, const void* w, int64_t w_batch_stride, void* y,
                           int64_t y_row_stride, int64_t y_batch_stride, int64_t batch, int64_t m,
                           int64_t n, int64_t k) {
  if (batch == 0 || m == 0 || n == 0) return absl::OkStatus();
  if (k == 0) {
    return absl::InvalidArgumentError("BatchedLinear: k == 0 is not supported on CUDA");
  }
  const float alpha = 1.0f, beta = 0.0f;
  return BlasCheck(
      cublasGemmStridedBatchedEx(
          Of(ctx)->blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
          static_cast<int>(k), &alpha, w, CudaType(dtype), static_cast<int>(k), w_batch_stride, x,
          CudaType(dtype), static_cast<int>(x_row_stride), x_batch_stride, &beta, y,
          CudaType(dtype), static_cast<int>(y_row_stride), y_batch_stride, static_cast<int>(batch),
          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "BatchedLinear");
}

}  // namespace sy::kernels::cuda
