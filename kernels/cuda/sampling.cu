// Token sampling on the GPU (kernels::SampleTokens): one 1024-thread block
// per row, no sort, no host synchronisation (all parameters are read on the
// device, so a CUDA graph can capture it). Same decisions as the CPU
// reference (cpu/sampling.cc) from the same numbers (kernels/sampling_math.h).
//
// A row with temperature > 0:
//   pass 1   max and argmax of the sanitised logits;
//   pass 2   e_i = exp((l_i - m) / T) into the workspace (fp32, [rows, vocab]),
//            the total fixed-point weight, the weight of {e >= min_p} and
//            the raw log-softmax normaliser;
//   then every filter and the draw are cuts of the (e desc, id asc) order.
// A cut (t, r, s) is the set {e > t} plus the first r tokens (in id order)
// with e == t, where e is compared through its float bits (e >= 0, so the
// bits order like the values) and s is the weight of {e > t}; its weight is
// s + r * w(t) because tied tokens weigh the same. Cuts are prefixes of the
// order, so the intersection of two is the shorter one.
//   top-k    radix select (4 passes of 8-bit digits) for the largest t with
//            count(e >= t) >= k: cut (t, k - count(e > t));
//   top-p    the same search by weight for the largest t with
//            weight(e >= t) >= ceil(top_p * weight(top-k cut)), restricted to
//            the top-k cut, and r = ceil((target - s) / w(t)) ties;
//   min-p    the cut {e >= min_p} = (bits(min_p) - 1, 0, weight from pass 2);
//   draw     target = floor(u * weight(cut)): the search by weight for the
//            largest t with weight(e >= t) > target finds the level of the
//            token, j = (target - s) / w(t) its rank among that level's ties,
//            and a scan in id order finds the j-th such token.
// All sums are integers (fixed-point weights) and shared-memory histograms
// use integer atomics, so the result does not depend on the order in which
// threads run: the kernel is deterministic and matches the CPU exactly when
// both compute the same e_i.
//
// Out-of-range parameters (which the CPU reports as InvalidArgument) cannot
// be reported without a synchronisation: such a row gets token -1 and logprob
// NaN. Callers validate on the host (engine::ValidateSamplingParams).
#include <cfloat>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/sampling_math.h"

namespace sy::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;      // 8-bit radix digits
constexpr int kHistCopies = 4;  // warps spread their atomics over copies

using u64 = unsigned long long;

// A prefix of the (e desc, id asc) order, see the file comment.
struct Cut {
  uint32_t t;  // float bits of the threshold level
  u64 r;       // tied tokens at t that are kept (first in id order)
  u64 s;       // weight of {e > t}
};

struct Shared {
  unsigned int count[kHistCopies][kBins];
  u64 mass[kHistCopies][kBins];
  u64 bin_count[kBins];
  u64 bin_mass[kBins];
  u64 red_u64[kWarps];
  double red_f64[kWarps];
  float red_f32[kWarps];
  int red_i32[kWarps];
  unsigned int warp_hits[kWarps];
  // Broadcast of one radix digit's choice.
  uint32_t prefix;
  u64 count_above;
  u64 mass_above;
  int pick;
};

__device__ __forceinline__ u64 BlockSumU64(u64 v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // red_u64 may still be read by a previous call
  if (lane == 0) sh.red_u64[warp] = v;
  __syncthreads();
  v = lane < kWarps ? sh.red_u64[lane] : 0ull;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double BlockSumF64(double v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh.red_f64[warp] = v;
  __syncthreads();
  v = lane < kWarps ? sh.red_f64[lane] : 0.0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// (value, index) maximum; equal values keep the lower index.
__device__ __forceinline__ void ArgMaxStep(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

__device__ __forceinline__ void BlockArgMax(float& v, int& i, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgMaxStep(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  }
  __syncthreads();
  if (lane == 0) {
    sh.red_f32[warp] = v;
    sh.red_i32[warp] = i;
  }
  __syncthreads();
  v = lane < kWarps ? sh.red_f32[lane] : -INFINITY;
  i = lane < kWarps ? sh.red_i32[lane] : INT32_MAX;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgMaxStep(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  }
}

struct Level {
  uint32_t t;       // the level found
  u64 count_above;  // tokens with e > t
  u64 mass_above;   // their weight
};

// The largest level t (float bits) with metric(e >= t) >= need, where the
// metric is the token count (by_count) or the weight, by four passes of 8-bit
// radix digits over the row's e values. The caller guarantees
// metric(e >= 0) >= need; where that fails (it cannot) the search ends at the
// lowest level of the digit rather than reading past its histograms.
__device__ Level RadixSearch(const float* e, int64_t vocab, double scale, bool by_count, u64 need,
                             Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t prefix = 0;
  u64 count_above = 0, mass_above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const uint32_t hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
    for (int b = threadIdx.x; b < kHistCopies * kBins; b += blockDim.x) {
      (&sh.count[0][0])[b] = 0;
      (&sh.mass[0][0])[b] = 0;
    }
    __syncthreads();
    const int copy = warp % kHistCopies;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = e[i];
      const uint32_t key = __float_as_uint(v);
      if ((key & hi_mask) != prefix) continue;
      const int d = static_cast<int>((key >> shift) & 0xffu);
      // Integer atomics: the totals do not depend on the order of the adds.
      atomicAdd(&sh.count[copy][d], 1u);
      const u64 w = sampling::Quantize(v, scale);
      if (w != 0) atomicAdd(&sh.mass[copy][d], w);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
      u64 c = 0, m = 0;
#pragma unroll
      for (int k = 0; k < kHistCopies; ++k) {
        c += sh.count[k][b];
        m += sh.mass[k][b];
      }
      sh.bin_count[b] = c;
      sh.bin_mass[b] = m;
    }
    __syncthreads();
    if (warp == 0) {
      // Lane L owns digits [8L, 8L + 8); suffix sums over lanes above it.
      constexpr int kPer = kBins / 32;
      u64 own_c = 0, own_m = 0;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        own_c += sh.bin_count[lane * kPer + k];
        own_m += sh.bin_mass[lane * kPer + k];
      }
      u64 incl_c = own_c, incl_m = own_m;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const u64 c = __shfl_down_sync(0xffffffffu, incl_c, o);
        const u64 m = __shfl_down_sync(0xffffffffu, incl_m, o);
        if (lane + o < 32) {
          incl_c += c;
          incl_m += m;
        }
      }
      // Walk own digits from the top: acc = metric of digits > d (within the prefix).
      u64 acc_c = incl_c - own_c, acc_m = incl_m - own_m;
      int found = -1;
      u64 gt_c = 0, gt_m = 0;
#pragma unroll
      for (int k = kPer - 1; k >= 0; --k) {
        const int d = lane * kPer + k;
        const u64 c = acc_c + sh.bin_count[d];
        const u64 m = acc_m + sh.bin_mass[d];
        const bool ok = by_count ? count_above + c >= need : mass_above + m >= need;
        if (found < 0 && ok) {
          found = d;
          gt_c = acc_c;
          gt_m = acc_m;
        }
        acc_c = c;
        acc_m = m;
      }
      const unsigned hits = __ballot_sync(0xffffffffu, found >= 0);
      if (hits != 0) {
        const int src = 31 - __clz(hits);  // the highest digit that satisfies need
        const int d = __shfl_sync(0xffffffffu, found, src);
        const u64 c = __shfl_sync(0xffffffffu, gt_c, src);
        const u64 m = __shfl_sync(0xffffffffu, gt_m, src);
        if (lane == 0) {
          sh.prefix = prefix | (static_cast<uint32_t>(d) << shift);
          sh.count_above = count_above + c;
          sh.mass_above = mass_above + m;
        }
      } else if (lane == 0) {
        // Unreachable when the caller's guarantee holds: digit 0, all above it.
        sh.prefix = prefix;
        sh.count_above = count_above + (incl_c - sh.bin_count[0]);
        sh.mass_above = mass_above + (incl_m - sh.bin_mass[0]);
      }
    }
    __syncthreads();
    prefix = sh.prefix;
    count_above = sh.count_above;
    mass_above = sh.mass_above;
    __syncthreads();  // sh.prefix is rewritten by the next digit
  }
  return Level{prefix, count_above, mass_above};
}

// The j-th (0-based) token in id order whose e has bits `t`; -1 if none.
__device__ int SelectTie(const float* e, int64_t vocab, uint32_t t, u64 j, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) sh.pick = -1;
  u64 seen = 0;
  for (int64_t base = 0; base < vocab; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool hit = i < vocab && __float_as_uint(e[i]) == t;
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) sh.warp_hits[warp] = static_cast<unsigned>(__popc(ballot));
    __syncthreads();
    u64 before = 0, total = 0;
    for (int k = 0; k < kWarps; ++k) {
      const u64 h = sh.warp_hits[k];
      if (k < warp) before += h;
      total += h;
    }
    const u64 rank = seen + before + static_cast<u64>(__popc(ballot & ((1u << lane) - 1u)));
    if (hit && rank == j) sh.pick = static_cast<int>(i);
    seen += total;
    __syncthreads();      // warp_hits is rewritten by the next tile; pick is visible
    if (seen > j) break;  // the same decision in every thread
  }
  return sh.pick;
}

__device__ __forceinline__ bool Shorter(const Cut& a, const Cut& b) {
  return a.t > b.t || (a.t == b.t && a.r < b.r);
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* logits, int64_t vocab, const SampleParams* params, int32_t* tokens,
                 float* logprobs, float* workspace) {
  __shared__ Shared sh;
  const int64_t row = blockIdx.x;
  const float* x = logits + row * vocab;
  const SampleParams p = params[row];
  if (sampling::CheckParams(p) != sampling::BadField::kNone) {
    if (threadIdx.x == 0) {
      tokens[row] = -1;
      if (logprobs != nullptr) logprobs[row] = __int_as_float(0x7fc00000);  // NaN
    }
    return;
  }

  // Pass 1: max and argmax (ties to the lower id).
  float m = -INFINITY;
  int argmax = INT32_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float l = sampling::Sanitize(x[i]);
    // Each thread's indices increase, so `>` keeps the first of equal values;
    // INT32_MAX marks "none yet" so an all -inf row still yields index 0.
    if (l > m || argmax == INT32_MAX) {
      m = l;
      argmax = static_cast<int>(i);
    }
  }
  BlockArgMax(m, argmax, sh);
  if (m == -INFINITY) {  // no finite logit: token 0, as on the CPU
    if (threadIdx.x == 0) {
      tokens[row] = 0;
      if (logprobs != nullptr) logprobs[row] = -INFINITY;
    }
    return;
  }
  const bool want_logprob = logprobs != nullptr;

  if (p.temperature == 0.0f) {
    if (want_logprob) {
      double raw = 0.0;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        raw += static_cast<double>(expf(sampling::Sanitize(x[i]) - m));
      }
      raw = BlockSumF64(raw, sh);
      if (threadIdx.x == 0) {
        logprobs[row] =
            static_cast<float>(static_cast<double>(sampling::Sanitize(x[argmax]) - m) - log(raw));
      }
    }
    if (threadIdx.x == 0) tokens[row] = argmax;
    return;
  }

  // Pass 2: the weights.
  float* e = workspace + row * vocab;
  const double scale = sampling::MassScale(vocab);
  u64 total = 0, above_min_p = 0;
  double raw = 0.0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float l = sampling::Sanitize(x[i]);
    const float v = sampling::Weight(l, m, p.temperature);
    e[i] = v;
    const u64 w = sampling::Quantize(v, scale);
    total += w;
    if (v >= p.min_p) above_min_p += w;
    if (want_logprob) raw += static_cast<double>(expf(l - m));
  }
  total = BlockSumU64(total, sh);
  above_min_p = BlockSumU64(above_min_p, sh);
  if (want_logprob) raw = BlockSumF64(raw, sh);
  __syncthreads();  // e[] written by other threads is read below

  auto weight_of = [&](uint32_t t) { return sampling::Quantize(__uint_as_float(t), scale); };
  auto mass_of = [&](const Cut& c) { return c.s + c.r * weight_of(c.t); };

  // Everything: level 0 with all its ties (they weigh 0).
  Cut cut{0u, static_cast<u64>(vocab), total};
  if (p.top_k > 0 && p.top_k < vocab) {
    const u64 k = static_cast<u64>(p.top_k);
    const Level lv = RadixSearch(e, vocab, scale, /*by_count=*/true, k, sh);
    cut = Cut{lv.t, k - lv.count_above, lv.mass_above};
  }
  if (p.top_p < 1.0f) {
    const u64 mass = mass_of(cut);
    const u64 need = sampling::TopPTarget(p.top_p, mass);
    if (need <= cut.s) {
      // The prefix ends above the cut's level, where the cut keeps everything.
      const Level lv = RadixSearch(e, vocab, scale, /*by_count=*/false, need, sh);
      const u64 w = weight_of(lv.t);
      cut = Cut{lv.t, w > 0 ? (need - lv.mass_above + w - 1) / w : 1, lv.mass_above};
    } else if (need <= mass) {
      // It ends among the cut's ties (whose weight is then positive).
      const u64 w = weight_of(cut.t);
      const u64 r = w > 0 ? (need - cut.s + w - 1) / w : cut.r;
      cut.r = r < cut.r ? r : cut.r;
    }  // else: the whole top-k set (top_p rounds up to all of it)
  }
  if (p.min_p > 0.0f) {
    const Cut mc{__float_as_uint(p.min_p) - 1u, 0, above_min_p};
    if (Shorter(mc, cut)) cut = mc;
  }

  // The draw.
  const u64 mass = mass_of(cut);
  const u64 target = sampling::DrawTarget(CounterUniform(p.seed, p.step), mass);
  uint32_t level;
  u64 rank;
  if (target < cut.s) {
    const Level lv = RadixSearch(e, vocab, scale, /*by_count=*/false, target + 1, sh);
    const u64 w = weight_of(lv.t);
    level = lv.t;
    rank = w > 0 ? (target - lv.mass_above) / w : 0;
  } else {
    const u64 w = weight_of(cut.t);
    level = cut.t;
    rank = w > 0 ? (target - cut.s) / w : 0;
  }
  int token = SelectTie(e, vocab, level, rank, sh);
  if (token < 0) token = argmax;  // unreachable: the level has more than `rank` ties
  if (threadIdx.x == 0) {
    tokens[row] = token;
    if (want_logprob) {
      logprobs[row] =
          static_cast<float>(static_cast<double>(sampling::Sanitize(x[token]) - m) - log(raw));
    }
  }
}

}  // namespace

size_t SampleTokensWorkspaceBytes(int64_t rows, int64_t vocab) {
  if (rows <= 0 || vocab <= 0) return 0;
  return static_cast<size_t>(rows) * static_cast<size_t>(vocab) * sizeof(float);
}

cudaError_t SampleTokens(cudaStream_t stream, const float* logits, int64_t rows, int64_t vocab,
                         const SampleParams* params, int32_t* tokens, float* logprobs,
                         void* workspace, size_t workspace_bytes) {
  if (rows == 0) return cudaSuccess;
  if (rows < 0 || vocab <= 0 || vocab > INT32_MAX || rows > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  if (workspace_bytes < SampleTokensWorkspaceBytes(rows, vocab) || workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  SampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logits, vocab, params, tokens, logprobs, static_cast<float*>(workspace));
  return cudaGetLastError();
}

}  // namespace sy::kernels::cuda
