// Device memory and execution contexts behind the kernel API.
//
// Services and the engine never call CUDA directly: they get a
// DeviceContext (a stream plus the backend's handles) and DeviceBuffers
// from here and pass `ctx()` to the kernels. For Device::kCpu the same calls
// work on host memory, so code written against this header runs on both.
//
// Thread safety: a DeviceContext is used by one thread at a time (its stream
// orders the work); DeviceBuffers may be created and freed from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/types.h"

namespace sy::kernels {

// OK when this build has CUDA and a GPU can be used; otherwise the reason
// (Unimplemented: built without CUDA; Unavailable: no usable GPU or driver).
// Tests skip their GPU cases with this message.
absl::Status CudaAvailable();

// Element size of a dtype in bytes.
int64_t DTypeSize(DType dtype);
// "f32", "bf16", "f16".
const char* DTypeName(DType dtype);

struct DeviceInfo {
  std::string name;          // e.g. "NVIDIA H200"; "cpu" on the CPU
  int64_t total_memory = 0;  // bytes of device memory (0 on the CPU)
  int64_t free_memory = 0;   // bytes free when asked
  int32_t multiprocessors = 0;
  int32_t compute_capability = 0;  // major * 10 + minor
};

// Owns what a Context points at: for kCuda a non-blocking stream, a cuBLAS
// handle bound to it and a growable workspace; nothing for kCpu.
class DeviceContext {
 public:
  // ordinal: which GPU (cudaSetDevice) for kCuda; ignored for kCpu.
  static absl::StatusOr<std::unique_ptr<DeviceContext>> Create(Device device, int ordinal = 0);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  const Context& ctx() const { return ctx_; }
  Device device() const { return ctx_.device; }
  // Waits for every call queued on the stream; reports an asynchronous
  // kernel failure as Internal.
  absl::Status Synchronize() const;
  absl::StatusOr<DeviceInfo> Info() const;

 private:
  DeviceContext() = default;
  Context ctx_;
  int ordinal_ = 0;
};

// The device behind a context (free memory as of the call); "cpu" for kCpu.
absl::StatusOr<DeviceInfo> GetDeviceInfo(const Context& ctx);

// Counts the reallocations of a CUDA context's scratch workspace (0 on the
// CPU). A captured CUDA graph holds workspace addresses, so its owner
// re-captures when this changed since the capture.
int64_t WorkspaceGeneration(const Context& ctx);
// Grows a CUDA context's workspaces to at least `bytes` each now (before
// capturing graphs); nothing on the CPU.
absl::Status ReserveWorkspace(const Context& ctx, int64_t bytes);

// A move-only allocation in a context's memory (cudaMalloc for kCuda,
// 64-byte aligned host memory for kCpu). Contents start undefined.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(const Context& ctx, int64_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  int64_t bytes() const { return bytes_; }
  bool empty() const { return data_ == nullptr; }
  // Frees and allocates anew when fewer than `bytes` are held (contents are
  // lost); for CUDA it first waits for the context's stream, so that queued
  // kernels never read freed memory.
  absl::Status Reserve(const Context& ctx, int64_t bytes);
  // Scratch that grows with the work: when fewer than `bytes` are held,
  // Reserve()s a quarter more (so slowly growing batches reallocate rarely)
  // and returns true; false when it already fits.
  absl::StatusOr<bool> Grow(const Context& ctx, int64_t bytes);

 private:
  void Release();
  Device device_ = Device::kCpu;
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// Host -> context memory. Asynchronous on the stream for CUDA; `src` may be
// reused as soon as the call returns (pageable memory is staged).
absl::Status CopyToDevice(const Context& ctx, void* dst, const void* src, int64_t bytes);
// Context memory -> host; waits until the data is on the host.
absl::Status CopyToHost(const Context& ctx, void* dst, const void* src, int64_t bytes);
// Within the context's memory, ordered on the stream.
absl::Status CopyOnDevice(const Context& ctx, void* dst, const void* src, int64_t bytes);
absl::Status Memset(const Context& ctx, void* dst, int value, int64_t bytes);

// A captured sequence of kernel calls on a CUDA context's stream, replayed
// with one launch (CUDA graphs: decode steps at fixed batch sizes). The body
// must only queue work (no host synchronisation, no allocation, no growing
// workspaces): run it once uncaptured first.
class DeviceGraph {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceGraph>> Capture(
      const Context& ctx, const std::function<absl::Status()>& body);
  ~DeviceGraph();
  DeviceGraph(const DeviceGraph&) = delete;
  DeviceGraph& operator=(const DeviceGraph&) = delete;
  // Queues the whole graph on the context's stream.
  absl::Status Launch(const Context& ctx) const;

 private:
  DeviceGraph() = default;
  void* exec_ = nullptr;  // cudaGraphExec_t
};

// Host fp32 -> context memory as `dtype` (bf16/f16 round to nearest even).
absl::Status UploadAs(const Context& ctx, DType dtype, const float* src, void* dst, int64_t n);
// Context memory of `dtype` -> host fp32; waits for the data.
absl::Status DownloadAsF32(const Context& ctx, DType dtype, const void* src, float* dst, int64_t n);

// Host-side conversions (round to nearest even; NaN stays NaN).
uint16_t F32ToBf16(float x);
float Bf16ToF32(uint16_t x);
uint16_t F32ToF16(float x);
float F16ToF32(uint16_t x);

}  // namespace sy::kernels
