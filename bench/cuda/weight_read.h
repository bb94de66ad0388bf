// The bandwidth bound of a weight-bound kernel, measured: one launch that
// streams a list of device regions (the active experts' weights) with 16-byte
// loads and does nothing else. The grouped expert FFN bench times it on the
// same bytes as each decode case, so the FFN's time stands beside the time
// the GPU needs to read its weights at all, not only beside a 2 GiB copy.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sy::bench {

struct ReadConfig {
  int unroll;         // 16-byte loads in flight per thread: 4 or 8
  int blocks_per_sm;  // resident blocks per SM (grid-stride); 0: one block per chunk
};

// Reads `count` regions: region i is `bytes[i]` bytes (a multiple of 16) at
// `ptrs[i]`; `ptrs`, `bytes` and `chunk_prefix` are device arrays, where
// chunk_prefix[i] is the number of 256-thread chunks before region i and
// chunk_prefix[count] the total (computed by ReadChunkPrefix). `sink` is one
// device word the kernel may write (so the loads cannot be dropped).
cudaError_t LaunchWeightRead(cudaStream_t stream, const ReadConfig& cfg, int sms,
                             const void* const* ptrs, const int64_t* bytes,
                             const int64_t* chunk_prefix, int count, int64_t total_chunks,
                             uint32_t* sink);

// The same reads in two dependent launches, as the small-M FFN's two
// projections run: the first reads its regions (`first`: the gate_up
// weights), the second (`second`: the down weights) may start early
// (programmatic dependent launch) and prefetch its first chunk per block into
// L2, but reads only once the first has finished. The bound of any FFN whose
// second projection needs the first's output.
struct ReadRegions {
  const void* const* ptrs;
  const int64_t* bytes;
  const int64_t* chunk_prefix;
  int count;
  int64_t total_chunks;
};
cudaError_t LaunchWeightReadTwoPhase(cudaStream_t stream, const ReadConfig& cfg, int sms,
                                     const ReadRegions& first, const ReadRegions& second,
                                     uint32_t* sink);

// Bytes one chunk covers for `unroll`: 256 threads x unroll x 16 bytes.
inline int64_t ReadChunkBytes(int unroll) { return int64_t{256} * unroll * 16; }

}  // namespace sy::bench
