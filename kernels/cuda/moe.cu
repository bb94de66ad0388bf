// MoE routing, token permutation and the weighted combine on the GPU, with
// the semantics of the CPU reference (kernels/cpu/moe.cc, cpu_kernels.cc).
//
// MoeRoute: one warp per token, one launch. The scores and selection values
//   live in shared memory (for the group pass) and in registers (kPerLane
//   experts per lane, expert e on lane e % 32) for the top-k, which runs k
//   rounds of a warp argmax over (value desc, index asc): the order of the
//   CPU's partial_sort with DescendingByValue, ties to the lower index.
// MoePermute: a stable counting sort without host synchronisation, in four
//   launches: per-chunk expert histograms (one warp per chunk of pairs), one
//   block that scans them into each chunk's first row per expert and the
//   offsets, a scatter in which each chunk's warp walks its pairs in order 32
//   at a time (__match_any_sync gives a pair's rank among equal ids of its
//   step), and a gather of the rows (warp per row, 16-byte copies when rows
//   allow). Pairs of one expert therefore land in (token, k) order, exactly
//   as the CPU's counting sort places them.
// MoeCombine: one block per token, fp32 accumulation in k order (multiply,
//   then add, as the CPU reference rounds), 16-byte loads when rows allow.
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace sy::kernels::cuda {
namespace {

// ---- MoeRoute ----------------------------------------------------------------

constexpr int kRouteWarps = 4;
constexpr int kMaxGroups = 64;
constexpr int kMaxTopK = 32;

// The larger of two (value, index) candidates: larger value, then lower
// index; index INT_MAX means "no candidate".
__device__ __forceinline__ bool Better(float v, int i, float best_v, int best_i) {
  if (i == INT_MAX) return false;
  if (best_i == INT_MAX) return true;
  return v > best_v || (v == best_v && i < best_i);
}

template <int kPerLane>
__global__ void __launch_bounds__(kRouteWarps * 32)
    MoeRouteKernel(const float* __restrict__ logits, int64_t num_tokens, RouterParams p,
                   int32_t* __restrict__ topk_ids, float* __restrict__ topk_weights) {
  extern __shared__ float route_smem[];
  const int warp = static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp;
  if (t >= num_tokens) return;  // no block-wide barrier below
  const int n = static_cast<int>(p.num_experts);
  const int k = static_cast<int>(p.top_k);
  float* scores = route_smem + warp * (2 * n + kMaxGroups);
  float* choice = scores + n;
  float* group_score = choice + n;
  const float* row = logits + t * n;

  float v[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    v[j] = e < n ? row[e] : -INFINITY;
  }
  if (p.score == ScoreFunction::kSigmoid) {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) v[j] = 1.0f / (1.0f + expf(-v[j]));
  } else {
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) mx = fmaxf(mx, v[j]);
    mx = WarpMax(mx);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      v[j] = lane + 32 * j < n ? expf(v[j] - mx) : 0.0f;
      sum += v[j];
    }
    const float inv_sum = 1.0f / WarpSum(sum);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) v[j] *= inv_sum;
  }
  // Selection values: score (+ bias); v keeps the raw scores for the weights.
  float c[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    if (e < n) {
      scores[e] = v[j];
      c[j] = p.correction_bias != nullptr ? v[j] + p.correction_bias[e] : v[j];
      choice[e] = c[j];
    } else {
      c[j] = -INFINITY;
    }
  }
  __syncwarp();

  if (p.method != TopkMethod::kGreedy) {
    const int groups = static_cast<int>(p.num_groups);
    const int group_size = n / groups;
    for (int g = lane; g < groups; g += 32) {
      const float* cg = choice + g * group_size;
      float s;
      if (p.method == TopkMethod::kGroupLimitedGreedy) {
        s = cg[0];
        for (int i = 1; i < group_size; ++i) s = cg[i] > s ? cg[i] : s;
      } else {  // kNoAuxTc: the two largest values, as the CPU finds them
        float top1 = cg[0], top2 = cg[1];
        if (top2 > top1) {
          const float tmp = top1;
          top1 = top2;
          top2 = tmp;
        }
        for (int i = 2; i < group_size; ++i) {
          if (cg[i] > top1) {
            top2 = top1;
            top1 = cg[i];
          } else if (cg[i] > top2) {
            top2 = cg[i];
          }
        }
        s = top1 + top2;
      }
      group_score[g] = s;
    }
    __syncwarp();
    // A group is kept when fewer than topk_groups groups rank before it.
    bool kept_lo = false, kept_hi = false;
    for (int g = lane; g < groups; g += 32) {
      const float s = group_score[g];
      int rank = 0;
      for (int h = 0; h < groups; ++h) {
        const float o = group_score[h];
        rank += (o > s || (o == s && h < g)) ? 1 : 0;
      }
      (g < 32 ? kept_lo : kept_hi) = rank < p.topk_groups;
    }
    const unsigned mask_lo = __ballot_sync(0xffffffffu, kept_lo);
    const unsigned mask_hi = __ballot_sync(0xffffffffu, kept_hi);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < n) {
        const int g = e / group_size;
        const bool kept = ((g < 32 ? mask_lo >> g : mask_hi >> (g - 32)) & 1u) != 0;
        if (!kept) c[j] = p.dropped_group_value;
      }
    }
  }

  // k rounds of a warp argmax; expert lane + 32 j of this lane is taken when
  // bit j of `taken` is set.
  unsigned taken = 0;
  int my_id = 0;
  float my_weight = 0.0f;
  float sum = 0.0f;
  for (int i = 0; i < k; ++i) {
    float best_v = -INFINITY;
    int best_i = INT_MAX;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < n && ((taken >> j) & 1u) == 0 && Better(c[j], e, best_v, best_i)) {
        best_v = c[j];
        best_i = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best_v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
      if (Better(ov, oi, best_v, best_i)) {
        best_v = ov;
        best_i = oi;
      }
    }
    if ((best_i & 31) == lane) taken |= 1u << (best_i >> 5);
    const float w = scores[best_i];
    sum += w;  // every lane adds in rank order, as the CPU does
    if (lane == i) {
      my_id = best_i;
      my_weight = w;
    }
  }
  if (lane < k) {
    float w = my_weight;
    if (p.renormalize) w /= sum + 1e-20f;
    w *= p.scaling;
    topk_ids[t * k + lane] = my_id;
    topk_weights[t * k + lane] = w;
  }
}

// ---- MoePermute --------------------------------------------------------------

constexpr int kMaxPermuteExperts = 8192;
constexpr int kScanThreads = 1024;

// Pairs per chunk: at least 256, and few enough chunks (<= ~512) that the
// single-block scan stays short.
int64_t ChunkPairs(int64_t pairs) {
  int64_t c = CeilDiv(pairs, 512);
  if (c < 256) c = 256;
  return CeilDiv(c, 32) * 32;
}

int PermuteWarps(int64_t num_experts) {
  const int64_t w = 8192 / num_experts;
  return static_cast<int>(w < 1 ? 1 : (w > 8 ? 8 : w));
}

__global__ void PermuteHistogramKernel(const int32_t* __restrict__ ids, int64_t pairs,
                                       int64_t chunk, int64_t num_chunks, int num_experts,
                                       int32_t* __restrict__ counts) {
  extern __shared__ int32_t hist_smem[];
  const int warp = static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (c >= num_chunks) return;  // warps are independent
  int32_t* h = hist_smem + warp * num_experts;
  for (int e = lane; e < num_experts; e += 32) h[e] = 0;
  __syncwarp();
  const int64_t end = min(pairs, (c + 1) * chunk);
  for (int64_t i = c * chunk + lane; i < end; i += 32) {
    const int32_t id = ids[i];
    // Shared-memory atomics: only the count matters here, not the order.
    if (id >= 0 && id < num_experts) atomicAdd(&h[id], 1);
  }
  __syncwarp();
  for (int e = lane; e < num_experts; e += 32) counts[c * num_experts + e] = h[e];
}

// Exclusive scan of the block's `v` (every thread gets its prefix; *total
// the block's sum). `scratch` holds 32 ints.
__device__ int64_t BlockExclusiveScan(int64_t v, int64_t* scratch, int64_t* total) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int warp = static_cast<int>(threadIdx.x >> 5);
  int64_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t up = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += up;
  }
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  const int num_warps = static_cast<int>(blockDim.x >> 5);
  if (warp == 0) {
    int64_t s = lane < num_warps ? scratch[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t up = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += up;
    }
    if (lane < num_warps) scratch[lane] = s;  // inclusive warp prefixes
  }
  __syncthreads();
  *total = scratch[num_warps - 1];
  const int64_t warp_base = warp > 0 ? scratch[warp - 1] : 0;
  return warp_base + inc - v;
}

// One block: counts[c][e] becomes the first sorted row of chunk c's pairs of
// expert e; offsets[e] the first row of expert e.
__global__ void __launch_bounds__(kScanThreads)
    PermuteScanKernel(int32_t* __restrict__ counts, int64_t num_chunks, int num_experts,
                      int64_t* __restrict__ offsets) {
  __shared__ int32_t totals[kMaxPermuteExperts];
  __shared__ int64_t scratch[32];
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    int32_t run = 0;
    for (int64_t c = 0; c < num_chunks; ++c) {
      const int32_t v = counts[c * num_experts + e];
      counts[c * num_experts + e] = run;
      run += v;
    }
    totals[e] = run;
  }
  __syncthreads();
  const int per = (num_experts + static_cast<int>(blockDim.x) - 1) / static_cast<int>(blockDim.x);
  const int lo = min(num_experts, static_cast<int>(threadIdx.x) * per);
  const int hi = min(num_experts, lo + per);
  int64_t mine = 0;
  for (int e = lo; e < hi; ++e) mine += totals[e];
  int64_t total = 0;
  int64_t base = BlockExclusiveScan(mine, scratch, &total);
  for (int e = lo; e < hi; ++e) {
    const int32_t count = totals[e];
    offsets[e] = base;
    totals[e] = static_cast<int32_t>(base);  // only this thread touches [lo, hi)
    base += count;
  }
  if (threadIdx.x == 0) offsets[num_experts] = total;
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const int32_t first = totals[e];
    for (int64_t c = 0; c < num_chunks; ++c) counts[c * num_experts + e] += first;
  }
}

__global__ void PermuteScatterKernel(const int32_t* __restrict__ ids, int64_t pairs, int64_t chunk,
                                     int64_t num_chunks, int num_experts,
                                     const int32_t* __restrict__ first_row,
                                     int32_t* __restrict__ row_pos) {
  extern __shared__ int32_t cursor_smem[];
  const int warp = static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (c >= num_chunks) return;
  int32_t* cursor = cursor_smem + warp * num_experts;
  for (int e = lane; e < num_experts; e += 32) cursor[e] = first_row[c * num_experts + e];
  __syncwarp();
  const unsigned lanes_before = (1u << lane) - 1u;
  const int64_t end = min(pairs, (c + 1) * chunk);
  for (int64_t step = c * chunk; step < end; step += 32) {
    const int64_t i = step + lane;
    const bool active = i < end;
    const int32_t id = active ? ids[i] : -1;
    const bool valid = active && id >= 0 && id < num_experts;
    const unsigned peers = __match_any_sync(0xffffffffu, valid ? id : -1);
    int32_t rank = -1;
    if (valid) rank = cursor[id] + __popc(peers & lanes_before);
    __syncwarp();  // every peer has read the cursor before its leader moves it
    if (valid && (peers & lanes_before) == 0) cursor[id] += __popc(peers);
    __syncwarp();
    if (active) row_pos[i] = rank;
  }
}

// One warp per pair; V is the copied unit (uint4 when rows allow, else T).
template <typename V>
__global__ void PermuteGatherKernel(const V* __restrict__ x, int64_t row_units, int64_t top_k,
                                    int64_t pairs, const int32_t* __restrict__ row_pos,
                                    V* __restrict__ gathered) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (i >= pairs) return;
  const int32_t r = row_pos[i];
  if (r < 0) return;
  const V* src = x + (i / top_k) * row_units;
  V* dst = gathered + static_cast<int64_t>(r) * row_units;
  constexpr int kUnroll = 4;
  int64_t u = lane;
  for (; u + 32 * (kUnroll - 1) < row_units; u += 32 * kUnroll) {
    V tmp[kUnroll];
#pragma unroll
    for (int q = 0; q < kUnroll; ++q) tmp[q] = src[u + 32 * q];
#pragma unroll
    for (int q = 0; q < kUnroll; ++q) dst[u + 32 * q] = tmp[q];
  }
  for (; u < row_units; u += 32) dst[u] = src[u];
}

// ---- MoeCombine --------------------------------------------------------------

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename T, int kVec>
__global__ void MoeCombineKernel(const T* __restrict__ expert_out,
                                 const int32_t* __restrict__ row_pos,
                                 const float* __restrict__ topk_weights, int64_t top_k,
                                 int64_t hidden, T* __restrict__ out) {
  using P = Pack<T, kVec>;
  const int64_t t = blockIdx.x;
  const int64_t units = hidden / kVec;
  const int32_t* rp = row_pos + t * top_k;
  const float* wt = topk_weights + t * top_k;
  P* dst = reinterpret_cast<P*>(out + t * hidden);
  for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
    float acc[kVec];
#pragma unroll
    for (int q = 0; q < kVec; ++q) acc[q] = 0.0f;
    for (int64_t k = 0; k < top_k; ++k) {
      const int32_t r = rp[k];
      if (r < 0) continue;
      const float w = wt[k];
      const P src = reinterpret_cast<const P*>(expert_out + static_cast<int64_t>(r) * hidden)[u];
#pragma unroll
      for (int q = 0; q < kVec; ++q) acc[q] = __fadd_rn(acc[q], __fmul_rn(w, ToF(src.v[q])));
    }
    P res;
#pragma unroll
    for (int q = 0; q < kVec; ++q) res.v[q] = FromF<T>(acc[q]);
    dst[u] = res;
  }
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int ThreadsFor(int64_t units) {
  const int64_t t = CeilDiv(units, 32) * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 256 ? 256 : t));
}

template <typename T>
cudaError_t LaunchCombine(cudaStream_t stream, const T* expert_out, const int32_t* row_pos,
                          const float* topk_weights, int64_t num_tokens, int64_t top_k,
                          int64_t hidden, T* out) {
  constexpr int kVec = 16 / sizeof(T);
  const auto grid = static_cast<unsigned>(num_tokens);
  if (hidden % kVec == 0 && Aligned16(expert_out) && Aligned16(out)) {
    MoeCombineKernel<T, kVec><<<grid, ThreadsFor(hidden / kVec), 0, stream>>>(
        expert_out, row_pos, topk_weights, top_k, hidden, out);
  } else {
    MoeCombineKernel<T, 1><<<grid, ThreadsFor(hidden), 0, stream>>>(
        expert_out, row_pos, topk_weights, top_k, hidden, out);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t MoeRoute(cudaStream_t stream, const float* logits, int64_t num_tokens,
                     const RouterParams& params, int32_t* topk_ids, float* topk_weights) {
  if (num_tokens == 0) return cudaSuccess;
  const int64_t n = params.num_experts;
  if (n <= 0 || n > 512 || params.top_k <= 0 || params.top_k > kMaxTopK || params.top_k > n) {
    return cudaErrorInvalidValue;
  }
  if (params.method != TopkMethod::kGreedy &&
      (params.num_groups <= 0 || params.num_groups > kMaxGroups || n % params.num_groups != 0)) {
    return cudaErrorInvalidValue;
  }
  const size_t smem = sizeof(float) * kRouteWarps * (2 * n + kMaxGroups);
  const auto grid = static_cast<unsigned>(CeilDiv(num_tokens, kRouteWarps));
  constexpr int kThreads = kRouteWarps * 32;
  if (n <= 64) {
    MoeRouteKernel<2>
        <<<grid, kThreads, smem, stream>>>(logits, num_tokens, params, topk_ids, topk_weights);
  } else if (n <= 128) {
    MoeRouteKernel<4>
        <<<grid, kThreads, smem, stream>>>(logits, num_tokens, params, topk_ids, topk_weights);
  } else if (n <= 256) {
    MoeRouteKernel<8>
        <<<grid, kThreads, smem, stream>>>(logits, num_tokens, params, topk_ids, topk_weights);
  } else {
    MoeRouteKernel<16>
        <<<grid, kThreads, smem, stream>>>(logits, num_tokens, params, topk_ids, topk_weights);
  }
  return cudaGetLastError();
}

size_t MoePermuteWorkspaceBytes(int64_t num_tokens, int64_t top_k, int64_t num_experts) {
  const int64_t pairs = num_tokens * top_k;
  if (pairs <= 0 || num_experts <= 0) return 0;
  const int64_t chunks = CeilDiv(pairs, ChunkPairs(pairs));
  return static_cast<size_t>(chunks * num_experts) * sizeof(int32_t);
}

cudaError_t MoePermute(cudaStream_t stream, DType dtype, const void* x, int64_t num_tokens,
                       int64_t hidden, const int32_t* topk_ids, int64_t top_k, int64_t num_experts,
                       int64_t* offsets, int32_t* row_pos, void* gathered, void* workspace,
                       size_t workspace_bytes) {
  if (num_experts <= 0 || num_experts > kMaxPermuteExperts || top_k <= 0) {
    return cudaErrorInvalidValue;
  }
  if (dtype != DType::kF32 && dtype != DType::kBF16) return cudaErrorInvalidValue;
  const int64_t pairs = num_tokens * top_k;
  if (workspace_bytes < MoePermuteWorkspaceBytes(num_tokens, top_k, num_experts) ||
      (pairs > 0 && workspace == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const int e = static_cast<int>(num_experts);
  const int64_t chunk = ChunkPairs(pairs);
  const int64_t chunks = pairs > 0 ? CeilDiv(pairs, chunk) : 0;
  auto* counts = static_cast<int32_t*>(workspace);
  const int warps = PermuteWarps(num_experts);
  const size_t smem = sizeof(int32_t) * warps * e;
  const auto blocks = static_cast<unsigned>(CeilDiv(chunks, warps));
  if (chunks > 0) {
    PermuteHistogramKernel<<<blocks, warps * 32, smem, stream>>>(topk_ids, pairs, chunk, chunks, e,
                                                                 counts);
  }
  PermuteScanKernel<<<1, kScanThreads, 0, stream>>>(counts, chunks, e, offsets);
  if (chunks == 0) return cudaGetLastError();
  PermuteScatterKernel<<<blocks, warps * 32, smem, stream>>>(topk_ids, pairs, chunk, chunks, e,
                                                             counts, row_pos);
  if (hidden == 0) return cudaGetLastError();
  const int64_t elem = dtype == DType::kF32 ? 4 : 2;
  const int64_t row_bytes = hidden * elem;
  constexpr int kGatherWarps = 8;
  const auto gather_blocks = static_cast<unsigned>(CeilDiv(pairs, kGatherWarps));
  if (row_bytes % 16 == 0 && Aligned16(x) && Aligned16(gathered)) {
    PermuteGatherKernel<uint4><<<gather_blocks, kGatherWarps * 32, 0, stream>>>(
        static_cast<const uint4*>(x), row_bytes / 16, top_k, pairs, row_pos,
        static_cast<uint4*>(gathered));
  } else if (elem == 4) {
    PermuteGatherKernel<float><<<gather_blocks, kGatherWarps * 32, 0, stream>>>(
        static_cast<const float*>(x), hidden, top_k, pairs, row_pos, static_cast<float*>(gathered));
  } else {
    PermuteGatherKernel<uint16_t><<<gather_blocks, kGatherWarps * 32, 0, stream>>>(
        static_cast<const uint16_t*>(x), hidden, top_k, pairs, row_pos,
        static_cast<uint16_t*>(gathered));
  }
  return cudaGetLastError();
}

cudaError_t MoeCombine(cudaStream_t stream, DType dtype, const void* expert_out,
                       const int32_t* row_pos, const float* topk_weights, int64_t num_tokens,
                       int64_t top_k, int64_t hidden, void* out) {
  if (num_tokens == 0 || hidden == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(
      dtype, T,
      return LaunchCombine<T>(stream, static_cast<const T*>(expert_out), row_pos, topk_weights,
                              num_tokens, top_k, hidden, static_cast<T*>(out)));
  return cudaErrorInvalidValue;
}

}  // namespace sy::kernels::cuda
