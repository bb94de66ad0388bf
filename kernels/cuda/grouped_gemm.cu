// The grouped SwiGLU expert FFN for few rows per expert (decode), in two
// launches with no host synchronisation (CUDA-graph safe):
//   1. inter_buf[r, j] = silu(gate_j . x_r) * (up_j . x_r)   (rounded to T)
//   2. out[r, n]       = down_n . inter_buf[r]                (rounded to T)
// Both are one kernel template: a warp owns two weight rows (gate j and up j,
// or down rows n and n + 1) and computes their dot products with up to 8
// activation rows per pass over the weights (up to 2, at three blocks per
// SM, when there is at most one row per expert on average), with 16-byte
// streaming weight loads (L1::no_allocate, so the activation rows stay in L1
// for the block's other warps), every load of a pass in flight before any
// is used. Rows beyond a pass's take further passes
// (the weights then come from L2): correct for any rows per expert, and
// bound by the weight reads while rows per expert stay small.
//
// Grid: x = tiles of 8 warps' columns, y = active-expert slots. The number of
// experts with rows is at most min(num_experts, num_rows), a host value, so
// grid.y = that bound and block slot s finds the s-th expert with rows from
// the device offsets (staged in shared memory): blocks of idle experts are
// never launched, and a slot without an expert exits at once.
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace sy::kernels::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxRows = 8;
constexpr int kSmemExperts = 1024;

// 16-byte load that bypasses L1 (weights are read once).
__device__ __forceinline__ uint4 LoadStream(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 LoadCached(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
  static constexpr int kN = 4;
  __device__ static void Unpack(const uint4& v, float (&f)[4]) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
};
template <>
struct Vec16<bf16> {
  static constexpr int kN = 8;
  // Element 2i is the low half of word i (little endian).
  __device__ static void Unpack(const uint4& v, float (&f)[8]) {
    f[0] = __uint_as_float(v.x << 16);
    f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16);
    f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16);
    f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16);
    f[7] = __uint_as_float(v.w & 0xffff0000u);
  }
};

// The `slot`-th expert (in index order) with at least one row, or -1; every
// lane of the warp gets the answer.
__device__ int FindActiveExpert(const int64_t* off, int64_t num_experts, int64_t slot) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  for (int64_t base = 0; base < num_experts; base += 32) {
    const int64_t e = base + lane;
    const bool active = e < num_experts && off[e + 1] > off[e];
    unsigned m = __ballot_sync(0xffffffffu, active);
    const int count = __popc(m);
    if (slot < count) {
      for (int64_t s = 0; s < slot; ++s) m &= m - 1;
      return static_cast<int>(base) + __ffs(static_cast<int>(m)) - 1;
    }
    slot -= count;
  }
  return -1;
}

// acc0[r] += w0 . a_r, acc1[r] += w1 . a_r over k < K for R rows of `a`
// (row stride K), reduced over the warp (every lane gets the sums).
template <typename T, int R>
__device__ __forceinline__ void DotRows(const T* w0, const T* w1, const T* a, int64_t K, bool vec,
                                        float (&acc0)[R], float (&acc1)[R]) {
  const int lane = static_cast<int>(threadIdx.x & 31);
#pragma unroll
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = 0.0f;
  if (vec) {
    constexpr int V = Vec16<T>::kN;
    // Weight vectors in flight per lane: 2 * U.
    constexpr int U = R == 1 ? 4 : (R <= 4 ? 2 : 1);
    const int64_t nv = K / V;
    // Every load of a pass is issued before any is used, the last pass's
    // out-of-range vectors as zeros: a short row (the down projection's K is
    // the small intermediate size) costs one round trip to memory, not one
    // per 32 vectors.
    for (int64_t i = lane; i < nv; i += 32 * U) {
      uint4 wa[U], wb[U];
      uint4 xv[U][R];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const bool ok = i + 32 * u < nv;
        wa[u] = ok ? LoadStream(w0 + (i + 32 * u) * V) : uint4{};
        wb[u] = ok ? LoadStream(w1 + (i + 32 * u) * V) : uint4{};
#pragma unroll
        for (int r = 0; r < R; ++r)
          xv[u][r] = ok ? LoadCached(a + r * K + (i + 32 * u) * V) : uint4{};
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float fa[V], fb[V];
        Vec16<T>::Unpack(wa[u], fa);
        Vec16<T>::Unpack(wb[u], fb);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float fx[V];
          Vec16<T>::Unpack(xv[u][r], fx);
#pragma unroll
          for (int q = 0; q < V; ++q) {
            acc0[r] = fmaf(fa[q], fx[q], acc0[r]);
            acc1[r] = fmaf(fb[q], fx[q], acc1[r]);
          }
        }
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const float fa = ToF(w0[k]), fb = ToF(w1[k]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float fx = ToF(a[r * K + k]);
        acc0[r] = fmaf(fa, fx, acc0[r]);
        acc1[r] = fmaf(fb, fx, acc1[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    acc0[r] = WarpSum(acc0[r]);
    acc1[r] = WarpSum(acc1[r]);
  }
}

// One pass of R rows; lane r writes row r's outputs.
template <typename T, bool kGated, int R>
__device__ __forceinline__ void RowPass(const T* w0, const T* w1, const T* a, int64_t K, bool vec,
                                        T* o, int64_t N, int64_t col, bool has1) {
  float acc0[R], acc1[R];
  DotRows<T, R>(w0, w1, a, K, vec, acc0, acc1);
  const int lane = static_cast<int>(threadIdx.x & 31);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (lane != r) continue;
    if constexpr (kGated) {
      const float g = acc0[r];
      o[r * N + col] = FromF<T>(g / (1.0f + expf(-g)) * acc1[r]);
    } else {
      o[r * N + col] = FromF<T>(acc0[r]);
      if (has1) o[r * N + col + 1] = FromF<T>(acc1[r]);
    }
  }
}

// RowPass for nr rows, 1 <= nr <= kMaxR (a compile-time R for each count).
template <typename T, bool kGated, int R, int kMaxR>
__device__ __forceinline__ void RowPassUpTo(int nr, const T* w0, const T* w1, const T* a, int64_t K,
                                            bool vec, T* o, int64_t N, int64_t col, bool has1) {
  if constexpr (R < kMaxR) {
    if (nr > R) {
      RowPassUpTo<T, kGated, R + 1, kMaxR>(nr, w0, w1, a, K, vec, o, N, col, has1);
      return;
    }
  }
  RowPass<T, kGated, R>(w0, w1, a, K, vec, o, N, col, has1);
}

// kGated: weights[e] is [2N, K] (gate rows, then up rows), out = silu(g) * u.
// Otherwise weights[e] is [N, K] and out = w . a. act/out rows are the global
// (sorted) rows: act [num_rows, K], out [num_rows, N]; rows are taken kMaxR
// at a time. Two blocks per SM cap registers at 128 (uncapped, ptxas picks
// 80 and spills the fp32 kernel); with kMaxR = 2, three (85).
template <typename T, bool kGated, int kMaxR>
__global__ void __launch_bounds__(kWarps * 32, kMaxR == 2 ? 3 : 2)
    ExpertGemvKernel(const T* __restrict__ act, int64_t K, const int64_t* __restrict__ offsets,
                     int64_t num_experts, const void* const* __restrict__ weights, int64_t N,
                     T* __restrict__ out) {
  // Programmatic dependent launch (no-ops without the launch attribute).
  // gate_up waits for the previous kernel (which wrote the activations and
  // the offsets) before reading anything, then lets the down kernel's blocks
  // start as its own finish. The down kernel reads the offsets at once (their
  // writer finished before any gate_up block got past its wait), pulls its
  // weight rows into L2, and only then waits for gate_up's outputs.
#if __CUDA_ARCH__ >= 900
  if constexpr (kGated) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  }
#endif
  __shared__ int64_t s_off[kSmemExperts + 1];
  const bool staged = num_experts <= kSmemExperts;
  if (staged) {
    for (int64_t i = threadIdx.x; i <= num_experts; i += blockDim.x) s_off[i] = offsets[i];
    __syncthreads();
  }
  const int64_t* off = staged ? s_off : offsets;
  const int e = FindActiveExpert(off, num_experts, blockIdx.y);
  if (e < 0) return;
  const int64_t begin = off[e], end = off[e + 1];

  const int warp = static_cast<int>(threadIdx.x >> 5);
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const T* w = static_cast<const T*>(weights[e]);
  int64_t col;
  bool has1 = false;
  const T* w0;
  const T* w1;
  if constexpr (kGated) {
    col = unit;
    if (col >= N) return;
    w0 = w + col * K;
    w1 = w + (N + col) * K;
  } else {
    col = 2 * unit;
    if (col >= N) return;
    has1 = col + 1 < N;
    w0 = w + col * K;
    w1 = has1 ? w0 + K : w0;
  }
  if constexpr (!kGated) {
    const int64_t row_bytes = K * static_cast<int64_t>(sizeof(T));
    const char* p0 = reinterpret_cast<const char*>(w0);
    const char* p1 = reinterpret_cast<const char*>(w1);
    for (int64_t b = static_cast<int64_t>(threadIdx.x & 31) * 128; b < row_bytes; b += 32 * 128) {
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p0 + b));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p1 + b));
    }
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  }
  const bool vec = K % Vec16<T>::kN == 0 &&
                   ((reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(act)) & 15u) == 0;
  for (int64_t r0 = begin; r0 < end; r0 += kMaxR) {
    const int64_t left = end - r0;
    const int nr = static_cast<int>(left < kMaxR ? left : kMaxR);
    const T* a = act + r0 * K;
    T* o = out + r0 * N;
    RowPassUpTo<T, kGated, 1, kMaxR>(nr, w0, w1, a, K, vec, o, N, col, has1);
  }
}

template <typename T>
cudaError_t LaunchSmallM(cudaStream_t stream, const T* x, const int64_t* offsets,
                         int64_t num_experts, int64_t num_rows, const void* const* gate_up,
                         const void* const* down, int64_t hidden, int64_t inter, T* inter_buf,
                         T* out) {
  const int64_t slots = num_experts < num_rows ? num_experts : num_rows;
  if (slots > 65535) return cudaErrorInvalidValue;
  cudaLaunchAttribute pdl[1];
  pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.blockDim = dim3(kWarps * 32);
  cfg.stream = stream;
  cfg.attrs = pdl;
  cfg.numAttrs = 1;
  cfg.gridDim = dim3(static_cast<unsigned>(CeilDiv(inter, kWarps)), static_cast<unsigned>(slots));
  // At most one row per expert on average (decode of a small batch): passes
  // of at most 2 rows, which fit three blocks per SM, so more warps have
  // weight loads in flight; an expert with more rows takes more passes.
  const bool few = num_rows <= num_experts;
  cudaError_t err = cudaLaunchKernelEx(
      &cfg, few ? ExpertGemvKernel<T, true, 2> : ExpertGemvKernel<T, true, kMaxRows>, x, hidden,
      offsets, num_experts, gate_up, inter, inter_buf);
  if (err != cudaSuccess) return err;
  cfg.gridDim = dim3(static_cast<unsigned>(CeilDiv(CeilDiv(hidden, 2), kWarps)),
                     static_cast<unsigned>(slots));
  return cudaLaunchKernelEx(
      &cfg, few ? ExpertGemvKernel<T, false, 2> : ExpertGemvKernel<T, false, kMaxRows>,
      static_cast<const T*>(inter_buf), inter, offsets, num_experts, down, hidden, out);
}

}  // namespace

cudaError_t GroupedExpertFfnSmallM(cudaStream_t stream, DType dtype, const void* x,
                                   const int64_t* offsets, int64_t num_experts, int64_t num_rows,
                                   const void* const* gate_up, const void* const* down,
                                   int64_t hidden, int64_t inter, void* inter_buf, void* out) {
  if (num_rows == 0 || num_experts == 0 || hidden == 0) return cudaSuccess;
  if (inter == 0) {
    const int64_t elem = dtype == DType::kF32 ? 4 : 2;
    return cudaMemsetAsync(out, 0, static_cast<size_t>(num_rows * hidden * elem), stream);
  }
  SY_CUDA_DISPATCH(dtype, T,
                   return LaunchSmallM<T>(stream, static_cast<const T*>(x), offsets, num_experts,
                                          num_rows, gate_up, down, hidden, inter,
                                          static_cast<T*>(inter_buf), static_cast<T*>(out)));
  return cudaErrorInvalidValue;
}

}  // namespace sy::kernels::cuda
