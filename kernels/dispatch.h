// Internal to kernels/: the device routing shared by kernels.cc and
// layout_kernels.cc. The only place (with device.cc) that knows whether the
// build has CUDA.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "kernels/device.h"
#include "kernels/types.h"
#if SY_WITH_CUDA
#include "kernels/cuda/backend.h"
#include "kernels/cuda/launch.h"
#endif

namespace sy::kernels::internal {

inline absl::string_view DeviceName(Device device) {
  return device == Device::kCpu ? "cpu" : "cuda";
}

inline absl::Status Unsupported(absl::string_view fn, const Context& ctx, DType dtype) {
  return absl::UnimplementedError(absl::StrCat(
      fn, ": not implemented for device ", DeviceName(ctx.device), " and dtype ", DTypeName(dtype),
#if SY_WITH_CUDA
      ""
#else
      ctx.device == Device::kCuda ? " (this build has no CUDA support)" : ""
#endif
      ));
}

inline bool IsCpuF32(const Context& ctx, DType dtype) {
  return ctx.device == Device::kCpu && dtype == DType::kF32;
}

// CUDA kernels exist for fp32 and bf16 storage; the context must come from
// DeviceContext.
inline absl::Status CudaReady(const Context& ctx, DType dtype, absl::string_view fn) {
#if SY_WITH_CUDA
  if (dtype != DType::kF32 && dtype != DType::kBF16) return Unsupported(fn, ctx, dtype);
  return cuda::CheckContext(ctx, fn);
#else
  return Unsupported(fn, ctx, dtype);
#endif
}

}  // namespace sy::kernels::internal

// In a kernel API function with a `ctx`: when it is a CUDA context, checks it
// and returns `expr` (an absl::Status). `expr` is compiled only with CUDA.
#if SY_WITH_CUDA
#define SY_ROUTE_CUDA(fn, dtype, expr)                                      \
  if (ctx.device == ::sy::kernels::Device::kCuda) {                         \
    SY_RETURN_IF_ERROR(::sy::kernels::internal::CudaReady(ctx, dtype, fn)); \
    return (expr);                                                          \
  }
// The same for a launcher returning cudaError_t.
#define SY_LAUNCH_CUDA(fn, dtype, launch) \
  SY_ROUTE_CUDA(fn, dtype, ::sy::kernels::cuda::Check((launch), fn))
#else
#define SY_ROUTE_CUDA(fn, dtype, expr)                           \
  if (ctx.device == ::sy::kernels::Device::kCuda) {              \
    return ::sy::kernels::internal::Unsupported(fn, ctx, dtype); \
  }
#define SY_LAUNCH_CUDA(fn, dtype, launch) SY_ROUTE_CUDA(fn, dtype, launch)
#endif
