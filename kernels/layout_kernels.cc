// Layout helpers of kernels.h: device dispatch and the CPU implementation.
#include <cblas.h>

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/dispatch.h"
#include "kernels/kernels.h"

namespace sy::kernels {
namespace {

absl::Status CheckCpuF32(const Context& ctx, DType dtype, const char* fn) {
  if (!internal::IsCpuF32(ctx, dtype)) return internal::Unsupported(fn, ctx, dtype);
  return absl::OkStatus();
}

}  // namespace

absl::Status BatchedLinear(const Context& ctx, DType dtype, const void* x, int64_t x_row_stride,
                           int64_t x_batch_stride, const void* w, int64_t w_batch_stride, void* y,
                           int64_t y_row_stride, int64_t y_batch_stride, int64_t batch, int64_t m,
                           int64_t n, int64_t k) {
  SY_ROUTE_CUDA("BatchedLinear", dtype,
                cuda::BatchedLinear(ctx, dtype, x, x_row_stride, x_batch_stride, w, w_batch_stride,
                                    y, y_row_stride, y_batch_stride, batch, m, n, k));
  if (auto st = CheckCpuF32(ctx, dtype, "BatchedLinear"); !st.ok()) return st;
  if (m == 0 || n == 0) return absl::OkStatus();
  const float* xf = static_cast<const float*>(x);
  const float* wf = static_cast<const float*>(w);
  float* yf = static_cast<float*>(y);
  for (int64_t b = 0; b < batch; ++b) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, xf + b * x_batch_stride, static_cast<int>(x_row_stride),
                wf + b * w_batch_stride, static_cast<int>(k), 0.0f, yf + b * y_batch_stride,
                static_cast<int>(y_row_stride));
  }
  return absl::OkStatus();
}

absl::Status Copy2D(const Context& ctx, DType dtype, const void* src, int64_t src_stride, void* dst,
                    int64_t dst_stride, int64_t rows, int64_t cols) {
  SY_LAUNCH_CUDA(
      "Copy2D", dtype,
      cuda::Copy2D(cuda::Stream(ctx), dtype, src, src_stride, dst, dst_stride, rows, cols));
  if (auto st = CheckCpuF32(ctx, dtype, "Copy2D"); !st.ok()) return st;
  const float* s = static_cast<const float*>(src);
  float* d = static_cast<float*>(dst);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(d + r * dst_stride, s + r * src_stride, sizeof(float) * cols);
  }
  return absl::OkStatus();
}

absl::Status SigmoidGateMul(const Context& ctx, DType dtype, void* y, const void* gate,
                            int64_t gate_stride, int64_t rows, int64_t dim) {
  SY_LAUNCH_CUDA("SigmoidGateMul", dtype,
                 cuda::SigmoidGateMul(cuda::Stream(ctx), dtype, y, gate, gate_stride, rows, dim));
  if (auto st = CheckCpuF32(ctx, dtype, "SigmoidGateMul"); !st.ok()) return st;
  float* yf = static_cast<float*>(y);
  const float* g = static_cast<const float*>(gate);
  for (int64_t r = 0; r < rows; ++r) {
    const float s = 1.0f / (1.0f + std::exp(-g[r * gate_stride]));
    for (int64_t c = 0; c < dim; ++c) yf[r * dim + c] *= s;
  }
  return absl::OkStatus();
}

}  // namespace sy::kernels
