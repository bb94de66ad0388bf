#include "bench/cuda/weight_read.h"

namespace sy::bench {
namespace {

__device__ __forceinline__ uint4 LoadStream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Chunk c of the concatenated regions: thread t loads vectors
// c_base + u * 256 + t for u < U, every load issued before any is used.
template <int U>
__global__ void __launch_bounds__(256)
    WeightReadKernel(const void* const* __restrict__ ptrs, const int64_t* __restrict__ bytes,
                     const int64_t* __restrict__ prefix, int count, int64_t total_chunks,
                     uint32_t* sink) {
  uint32_t acc = 0;
  for (int64_t c = blockIdx.x; c < total_chunks; c += gridDim.x) {
    int lo = 0, hi = count;  // the region holding chunk c: prefix[lo] <= c < prefix[lo + 1]
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (prefix[mid] <= c) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    const char* base = static_cast<const char*>(ptrs[lo]);
    const int64_t nvec = bytes[lo] / 16;
    const int64_t first = (c - prefix[lo]) * 256 * U + threadIdx.x;
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = first + u * 256;
      v[u] = i < nvec ? LoadStream(base + i * 16) : uint4{};
    }
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;  // data-dependent, so the loads stay
}

}  // namespace

cudaError_t LaunchWeightRead(cudaStream_t stream, const ReadConfig& cfg, int sms,
                             const void* const* ptrs, const int64_t* bytes,
                             const int64_t* chunk_prefix, int count, int64_t total_chunks,
                             uint32_t* sink) {
  if (total_chunks <= 0) return cudaSuccess;
  int64_t grid = cfg.blocks_per_sm > 0 ? int64_t{sms} * cfg.blocks_per_sm : total_chunks;
  if (grid > total_chunks) grid = total_chunks;
  if (grid > 0x7fffffff) grid = 0x7fffffff;
  const dim3 g(static_cast<unsigned>(grid));
  switch (cfg.unroll) {
    case 4:
      WeightReadKernel<4>
          <<<g, 256, 0, stream>>>(ptrs, bytes, chunk_prefix, count, total_chunks, sink);
      break;
    case 8:
      WeightReadKernel<8>
          <<<g, 256, 0, stream>>>(ptrs, bytes, chunk_prefix, count, total_chunks, sink);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace sy::bench
