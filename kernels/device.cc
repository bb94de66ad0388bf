// Device-neutral memory and contexts; CUDA calls go to kernels/cuda/backend.cc
// when the build has CUDA (SY_WITH_CUDA), the CPU cases are plain host memory.
#include "kernels/device.h"

#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#if SY_WITH_CUDA
#include "kernels/cuda/backend.h"
#include "kernels/cuda/launch.h"
#endif

namespace sy::kernels {
namespace {

[[maybe_unused]] absl::Status NoCuda(const char* fn) {
  return absl::UnimplementedError(
      absl::StrCat(fn,
                   ": this build of Switchyard has no CUDA support (configure with "
                   "SWITCHYARD_WITH_CUDA=ON on a machine with the CUDA toolkit)"));
}

}  // namespace

absl::Status CudaAvailable() {
#if SY_WITH_CUDA
  return cuda::Available();
#else
  return NoCuda("CudaAvailable");
#endif
}

int64_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
  }
  return 4;
}

const char* DTypeName(DType dtype) {
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

uint16_t F32ToBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float Bf16ToF32(uint16_t x) {
  const uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t F32ToF16(float x) {
  const auto h = static_cast<_Float16>(x);  // GCC rounds to nearest even
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}

float F16ToF32(uint16_t x) {
  _Float16 h;
  std::memcpy(&h, &x, 2);
  return static_cast<float>(h);
}

absl::StatusOr<std::unique_ptr<DeviceContext>> DeviceContext::Create(Device device, int ordinal) {
  std::unique_ptr<DeviceContext> dc(new DeviceContext);
  dc->ordinal_ = ordinal;
  if (device == Device::kCpu) return dc;
#if SY_WITH_CUDA
  SY_RETURN_IF_ERROR(cuda::CreateContext(ordinal, &dc->ctx_));
  return dc;
#else
  return NoCuda("DeviceContext::Create");
#endif
}

DeviceContext::~DeviceContext() {
#if SY_WITH_CUDA
  if (ctx_.device == Device::kCuda) cuda::DestroyContext(&ctx_);
#endif
}

absl::Status DeviceContext::Synchronize() const {
  if (ctx_.device == Device::kCpu) return absl::OkStatus();
#if SY_WITH_CUDA
  return cuda::Synchronize(ctx_);
#else
  return NoCuda("Synchronize");
#endif
}

absl::StatusOr<DeviceInfo> DeviceContext::Info() const { return GetDeviceInfo(ctx_); }

absl::StatusOr<DeviceInfo> GetDeviceInfo(const Context& ctx) {
  if (ctx.device == Device::kCpu) {
    DeviceInfo info;
    info.name = "cpu";
    return info;
  }
#if SY_WITH_CUDA
  return cuda::Info(ctx);
#else
  return NoCuda("GetDeviceInfo");
#endif
}

int64_t WorkspaceGeneration(const Context& ctx) {
#if SY_WITH_CUDA
  if (ctx.device == Device::kCuda && ctx.backend != nullptr) return cuda::WorkspaceGeneration(ctx);
#endif
  return 0;
}

absl::Status ReserveWorkspace(const Context& ctx, int64_t bytes) {
  if (ctx.device == Device::kCpu) return absl::OkStatus();
#if SY_WITH_CUDA
  SY_RETURN_IF_ERROR(cuda::Workspace(ctx, static_cast<size_t>(bytes)).status());
  return cuda::Workspace2(ctx, static_cast<size_t>(bytes)).status();
#else
  return NoCuda("ReserveWorkspace");
#endif
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(const Context& ctx, int64_t bytes) {
  if (bytes < 0) return absl::InvalidArgumentError("DeviceBuffer: negative size");
  DeviceBuffer b;
  b.device_ = ctx.device;
  b.bytes_ = bytes;
  if (bytes == 0) return b;
  if (ctx.device == Device::kCpu) {
    const size_t rounded = (static_cast<size_t>(bytes) + 63) / 64 * 64;
    b.data_ = std::aligned_alloc(64, rounded);
    if (b.data_ == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes"));
    }
    return b;
  }
#if SY_WITH_CUDA
  SY_ASSIGN_OR_RETURN(b.data_, cuda::Malloc(bytes));
  return b;
#else
  return NoCuda("DeviceBuffer::Allocate");
#endif
}

void DeviceBuffer::Release() {
  if (data_ == nullptr) return;
  if (device_ == Device::kCpu) {
    std::free(data_);
  } else {
#if SY_WITH_CUDA
    cuda::Free(data_);
#endif
  }
  data_ = nullptr;
  bytes_ = 0;
}

DeviceBuffer::~DeviceBuffer() { Release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : device_(other.device_), data_(other.data_), bytes_(other.bytes_) {
  other.data_ = nullptr;
  other.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    device_ = other.device_;
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

absl::Status DeviceBuffer::Reserve(const Context& ctx, int64_t bytes) {
  if (bytes <= bytes_ && device_ == ctx.device) return absl::OkStatus();
  if (ctx.device == Device::kCuda && data_ != nullptr) {
#if SY_WITH_CUDA
    SY_RETURN_IF_ERROR(cuda::Synchronize(ctx));
#endif
  }
  Release();
  SY_ASSIGN_OR_RETURN(*this, Allocate(ctx, bytes));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceGraph>> DeviceGraph::Capture(
    const Context& ctx, const std::function<absl::Status()>& body) {
  if (ctx.device != Device::kCuda) {
    return absl::InvalidArgumentError("DeviceGraph: graphs need a CUDA context");
  }
#if SY_WITH_CUDA
  std::unique_ptr<DeviceGraph> g(new DeviceGraph);
  SY_ASSIGN_OR_RETURN(g->exec_, cuda::CaptureGraph(ctx, body));
  return g;
#else
  return NoCuda("DeviceGraph::Capture");
#endif
}

DeviceGraph::~DeviceGraph() {
#if SY_WITH_CUDA
  cuda::DestroyGraph(exec_);
#endif
}

absl::Status DeviceGraph::Launch(const Context& ctx) const {
#if SY_WITH_CUDA
  return cuda::LaunchGraph(ctx, exec_);
#else
  return NoCuda("DeviceGraph::Launch");
#endif
}

absl::StatusOr<bool> DeviceBuffer::Grow(const Context& ctx, int64_t bytes) {
  if (bytes <= bytes_ && device_ == ctx.device) return false;
  SY_RETURN_IF_ERROR(Reserve(ctx, bytes + bytes / 4));
  return true;
}

absl::Status CopyToDevice(const Context& ctx, void* dst, const void* src, int64_t bytes) {
  if (ctx.device == Device::kCpu) {
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }
#if SY_WITH_CUDA
  return cuda::Copy(ctx, dst, src, bytes, cudaMemcpyHostToDevice, false);
#else
  return NoCuda("CopyToDevice");
#endif
}

absl::Status CopyToHost(const Context& ctx, void* dst, const void* src, int64_t bytes) {
  if (ctx.device == Device::kCpu) {
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }
#if SY_WITH_CUDA
  return cuda::Copy(ctx, dst, src, bytes, cudaMemcpyDeviceToHost, true);
#else
  return NoCuda("CopyToHost");
#endif
}

absl::Status CopyOnDevice(const Context& ctx, void* dst, const void* src, int64_t bytes) {
  if (ctx.device == Device::kCpu) {
    if (bytes > 0) std::memmove(dst, src, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }
#if SY_WITH_CUDA
  return cuda::Copy(ctx, dst, src, bytes, cudaMemcpyDeviceToDevice, false);
#else
  return NoCuda("CopyOnDevice");
#endif
}

absl::Status Memset(const Context& ctx, void* dst, int value, int64_t bytes) {
  if (ctx.device == Device::kCpu) {
    if (bytes > 0) std::memset(dst, value, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }
#if SY_WITH_CUDA
  return cuda::Memset(ctx, dst, value, bytes);
#else
  return NoCuda("Memset");
#endif
}

absl::Status UploadAs(const Context& ctx, DType dtype, const float* src, void* dst, int64_t n) {
  if (n == 0) return absl::OkStatus();
  if (dtype == DType::kF32) return CopyToDevice(ctx, dst, src, n * 4);
  std::vector<uint16_t> half(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    half[static_cast<size_t>(i)] = dtype == DType::kBF16 ? F32ToBf16(src[i]) : F32ToF16(src[i]);
  }
  return CopyToDevice(ctx, dst, half.data(), n * 2);
}

absl::Status DownloadAsF32(const Context& ctx, DType dtype, const void* src, float* dst,
                           int64_t n) {
  if (n == 0) return absl::OkStatus();
  if (dtype == DType::kF32) return CopyToHost(ctx, dst, src, n * 4);
  std::vector<uint16_t> half(static_cast<size_t>(n));
  SY_RETURN_IF_ERROR(CopyToHost(ctx, half.data(), src, n * 2));
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = dtype == DType::kBF16 ? Bf16ToF32(half[static_cast<size_t>(i)])
                                   : F16ToF32(half[static_cast<size_t>(i)]);
  }
  return absl::OkStatus();
}

}  // namespace sy::kernels
