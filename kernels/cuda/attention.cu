// Paged attention (kernels::PagedAttention) on the GPU: one code path for
// prefill, chunked prefill and decode, GQA and MLA's absorbed form.
//
// Work decomposition. For a sequence s and kv head g, the "query rows" are the
// (token, head of g's group) pairs, token-major: row R = i * group + h_in_group.
// Packing the group's heads as rows lets one block read each K/V row once for
// the whole group (GQA) or for all heads (MLA, one latent head). A block takes
// a tile of rows and streams the keys its rows may see (causal bound of the
// tile's last token). Grid: x = (sequence, kv head), y = row tile (a
// grid-stride loop covers more), z = split of the context ("flash decoding").
// Split k of S handles the key chunks k, k + S, k + 2S, ... of `chunk` keys;
// with S = 1 the block writes the normalised output directly, otherwise it
// writes the partial (max, sum, unnormalised output) of every row to the
// workspace and CombineKernel merges the splits. S and chunk come from host
// values only (AttentionBatch::max_context_len / num_tokens / max_q_len), so
// one launch is valid for any per-step data, as CUDA graphs need; a split
// beyond a sequence's context exits at once, and the combine step recomputes
// which splits saw keys of a row instead of trusting the workspace.
//
// Kernels. AttnTcKernel (bf16, head_dim and v_dim multiples of 16, 16-byte
// aligned cache rows): mma.sync m16n8k16 bf16 tensor cores with fp32
// accumulators, flash-attention-2 style online softmax per warp of 16 rows,
// K/V tiles brought in with cp.async, double buffered. AttnSimtKernel (fp32,
// and bf16 shapes the tensor-core kernel does not take): the same
// decomposition in fp32 on the CUDA cores. Softmax runs in fp32 in the log2
// domain (scores scaled by scale * log2(e), exp2f).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace sy::kernels::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kChunkAlign = 64;  // chunks are whole key tiles of every kernel
constexpr int64_t kMaxSplits = 256;
constexpr int kTcRows = 64;    // rows per block of the tensor-core kernel
constexpr int kSimtRows = 16;  // rows per block of the SIMT kernel
constexpr int kSimtKeys = 32;  // keys per tile of the SIMT kernel (one per lane)

template <typename T>
struct Params {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  const int32_t* q_start;
  const int32_t* context_lens;
  const int32_t* block_tables;
  int64_t max_blocks_per_seq;
  int64_t block_size;
  int64_t q_stride, out_stride, k_stride, v_stride;
  int num_seqs, num_kv_heads, group, num_heads, head_dim, v_dim;
  float scale_log2;  // scale * log2(e)
  int num_splits;
  int64_t chunk;      // keys per chunk, a multiple of kChunkAlign
  int64_t ws_tokens;  // tokens the workspace holds rows for (num_splits > 1)
  float* ws_o;        // [num_splits, ws_tokens * num_heads, v_dim]
  float* ws_ml;       // [num_splits, ws_tokens * num_heads, 2]: max (log2 domain), sum
  bool same_kv;       // V rows are the first v_dim elements of the K rows
  bool q_vec;         // q rows allow 16-byte loads
};

// First key of the n-th key tile (of kTile keys) that split `split` handles.
__device__ __forceinline__ int64_t TileKey0(int64_t n, int64_t tiles_per_chunk, int split,
                                            int num_splits, int64_t chunk, int tile_keys) {
  const int64_t c = split + (n / tiles_per_chunk) * num_splits;
  return c * chunk + (n % tiles_per_chunk) * tile_keys;
}

// Contexts stay below 2^31 keys, so the block lookup uses 32-bit division.
__device__ __forceinline__ int64_t SlotOf(const int32_t* table, int64_t pos, int64_t block_size) {
  const auto p32 = static_cast<uint32_t>(pos), bs32 = static_cast<uint32_t>(block_size);
  const uint32_t blk = p32 / bs32;
  return static_cast<int64_t>(table[blk]) * block_size + (p32 - blk * bs32);
}

// ---- tensor-core helpers (sm_80+ PTX, fine on sm_90) -------------------------

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; src_bytes 0 fills zeros (src must still be valid).
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ uint32_t Ld32(const bf16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

// c[16x8] += a[16x16] * b[16x8], bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void Mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t* r, const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}

// ---- tensor-core kernel ------------------------------------------------------
//
// 4 x kWN warps; warp (wm, wn) owns rows wm*16..+16 of the 64-row tile and the
// output columns [wn * kVN * 8, (wn + 1) * kVN * 8) (kWN = 2 only for v_dim >
// 256, where one warp cannot hold all columns; both warps of a row group then
// compute the same scores). Shared memory: Q [64][D+8], K [2][kBN][D+8],
// V [2][kBN][Dv+8] (none when same_kv: V is read from the K tile). The +8
// element padding keeps the fragment loads free of bank conflicts.
template <int kWN, int kVN, int kBN>
__global__ void __launch_bounds__(128 * kWN) AttnTcKernel(Params<bf16> p) {
  constexpr int kThreads = 128 * kWN;
  constexpr int kSN = kBN / 8;  // score n-tiles per warp
  static_assert(kVN % 2 == 0 && kBN % 16 == 0 && kChunkAlign % kBN == 0, "tile shape");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int D = p.head_dim, Dv = p.v_dim;
  const int qs = D + 8;
  const int vs = p.same_kv ? qs : Dv + 8;
  bf16* q_sm = reinterpret_cast<bf16*>(smem_raw);  // [64][qs]
  bf16* k_sm = q_sm + kTcRows * qs;                // [2][kBN][qs]
  bf16* v_sm = p.same_kv ? k_sm : k_sm + 2 * kBN * qs;
  const int k_buf = kBN * qs, v_buf = kBN * vs;

  const int seq = static_cast<int>(blockIdx.x) / p.num_kv_heads;
  const int g = static_cast<int>(blockIdx.x) % p.num_kv_heads;
  const int split = static_cast<int>(blockIdx.z);
  const int64_t q0 = p.q_start[seq];
  const int64_t q_len = p.q_start[seq + 1] - q0;
  if (q_len <= 0) return;
  const int64_t context = p.context_lens[seq];
  const int64_t num_rows = q_len * p.group;
  const int64_t num_tiles = (num_rows + kTcRows - 1) / kTcRows;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int wm = warp & 3, wn = warp >> 2;
  const int32_t* table = p.block_tables + seq * p.max_blocks_per_seq;
  const int64_t tiles_per_chunk = p.chunk / kBN;
  const int k_chunks = D / 8, v_chunks = Dv / 8;
  const bf16* k_head = p.k + static_cast<int64_t>(g) * D;
  const bf16* v_head = p.v + static_cast<int64_t>(g) * Dv;

  for (int64_t tile = blockIdx.y; tile < num_tiles; tile += gridDim.y) {
    const int64_t row0 = tile * kTcRows;
    const int64_t i_last = min(q_len - 1, (row0 + kTcRows - 1) / p.group);
    const int64_t kv_end = min(context, context - q_len + i_last + 1);  // keys of the tile
    auto key0_of = [&](int64_t n) {
      return TileKey0(n, tiles_per_chunk, split, p.num_splits, p.chunk, kBN);
    };
    const bool any = key0_of(0) < kv_end;
    if (!any && p.num_splits > 1) continue;  // uniform over the block; combine skips us

    __syncthreads();  // the previous tile is done with shared memory
    // Q tile (rows past the sequence are zero).
    if (p.q_vec) {
      for (int idx = threadIdx.x; idx < kTcRows * k_chunks; idx += kThreads) {
        const int r = idx / k_chunks, c = idx - r * k_chunks;
        const int64_t row = row0 + r, i = row / p.group;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (i < q_len) {
          const int64_t head = static_cast<int64_t>(g) * p.group + row % p.group;
          val = *reinterpret_cast<const uint4*>(p.q + (q0 + i) * p.q_stride + head * D + c * 8);
        }
        *reinterpret_cast<uint4*>(q_sm + r * qs + c * 8) = val;
      }
    } else {
      for (int idx = threadIdx.x; idx < kTcRows * D; idx += kThreads) {
        const int r = idx / D, d = idx - r * D;
        const int64_t row = row0 + r, i = row / p.group;
        bf16 val = __float2bfloat16_rn(0.0f);
        if (i < q_len) {
          const int64_t head = static_cast<int64_t>(g) * p.group + row % p.group;
          val = p.q[(q0 + i) * p.q_stride + head * D + d];
        }
        q_sm[r * qs + d] = val;
      }
    }

    auto load_kv = [&](int64_t n, int buf) {
      const int64_t key0 = key0_of(n);
      bf16* kb = k_sm + buf * k_buf;
      for (int idx = threadIdx.x; idx < kBN * k_chunks; idx += kThreads) {
        const int j = idx / k_chunks, c = idx - j * k_chunks;
        const int64_t pos = key0 + j;
        const bf16* src = p.k;
        int bytes = 0;
        if (pos < kv_end) {
          src = k_head + SlotOf(table, pos, p.block_size) * p.k_stride + c * 8;
          bytes = 16;
        }
        CpAsync16(kb + j * qs + c * 8, src, bytes);
      }
      if (!p.same_kv) {
        bf16* vb = v_sm + buf * v_buf;
        for (int idx = threadIdx.x; idx < kBN * v_chunks; idx += kThreads) {
          const int j = idx / v_chunks, c = idx - j * v_chunks;
          const int64_t pos = key0 + j;
          const bf16* src = p.v;
          int bytes = 0;
          if (pos < kv_end) {
            src = v_head + SlotOf(table, pos, p.block_size) * p.v_stride + c * 8;
            bytes = 16;
          }
          CpAsync16(vb + j * vs + c * 8, src, bytes);
        }
      }
    };

    // The thread's two rows of the warp's 16: lane / 4 and lane / 4 + 8.
    int64_t vis[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + wm * 16 + (lane >> 2) + h * 8, i = row / p.group;
      vis[h] = i < q_len ? context - q_len + i + 1 : 0;
    }
    const bool warp_active = row0 + wm * 16 < num_rows;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.0f, 0.0f};
    float o[kVN][4];
#pragma unroll
    for (int vn = 0; vn < kVN; ++vn) o[vn][0] = o[vn][1] = o[vn][2] = o[vn][3] = 0.0f;

    if (any) load_kv(0, 0);
    CpAsyncCommit();
    for (int64_t n = 0; any && key0_of(n) < kv_end; ++n) {
      const int buf = static_cast<int>(n & 1);
      if (key0_of(n + 1) < kv_end) load_kv(n + 1, buf ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
      __syncthreads();
      if (!warp_active) {  // all 16 rows of this warp are padding (e.g. GQA decode)
        __syncthreads();
        continue;
      }

      // S = Q K^T for the warp's 16 rows and the kBN keys.
      float s[kSN][4];
#pragma unroll
      for (int nt = 0; nt < kSN; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      const bf16* kb = k_sm + buf * k_buf + (lane >> 2) * qs + (lane & 3) * 2;
      const bf16* qa = q_sm + (wm * 16 + (lane >> 2)) * qs + (lane & 3) * 2;
      for (int kk = 0; kk < D; kk += 16) {
        uint32_t a[4];
        a[0] = Ld32(qa + kk);
        a[1] = Ld32(qa + 8 * qs + kk);
        a[2] = Ld32(qa + kk + 8);
        a[3] = Ld32(qa + 8 * qs + kk + 8);
#pragma unroll
        for (int nt = 0; nt < kSN; ++nt) {
          const bf16* kr = kb + nt * 8 * qs + kk;
          Mma16816(s[nt], a, Ld32(kr), Ld32(kr + 8));
        }
      }

      // Causal / context mask and the online softmax update.
      const int64_t key0 = key0_of(n);
      float mx[2] = {m_r[0], m_r[1]};
#pragma unroll
      for (int nt = 0; nt < kSN; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t key = key0 + nt * 8 + (lane & 3) * 2 + (e & 1);
          const float x = key < vis[e >> 1] ? s[nt][e] * p.scale_log2 : -INFINITY;
          s[nt][e] = x;
          mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
      }
      float ref[2], corr[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        ref[h] = mx[h] == -INFINITY ? 0.0f : mx[h];  // all masked so far: exp2(-inf) = 0
        corr[h] = exp2f(m_r[h] - ref[h]);
        m_r[h] = mx[h];
      }
#pragma unroll
      for (int nt = 0; nt < kSN; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] = exp2f(s[nt][e] - ref[e >> 1]);
          rs[e >> 1] += s[nt][e];
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 1);
        rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 2);
        l_r[h] = l_r[h] * corr[h] + rs[h];
      }
#pragma unroll
      for (int vn = 0; vn < kVN; ++vn) {
        o[vn][0] *= corr[0];
        o[vn][1] *= corr[0];
        o[vn][2] *= corr[1];
        o[vn][3] *= corr[1];
      }

      // O += P V: the score accumulators of two n-tiles are the A fragment.
      const bf16* vb = v_sm + buf * v_buf;
#pragma unroll
      for (int kt = 0; kt < kBN / 16; ++kt) {
        uint32_t a[4];
        a[0] = PackBf16(s[2 * kt][0], s[2 * kt][1]);
        a[1] = PackBf16(s[2 * kt][2], s[2 * kt][3]);
        a[2] = PackBf16(s[2 * kt + 1][0], s[2 * kt + 1][1]);
        a[3] = PackBf16(s[2 * kt + 1][2], s[2 * kt + 1][3]);
        const bf16* vr = vb + (kt * 16 + (lane & 15)) * vs + (lane >> 4) * 8;
#pragma unroll
        for (int vn = 0; vn < kVN; vn += 2) {
          const int col0 = (wn * kVN + vn) * 8;
          if (col0 < Dv) {  // Dv % 16 == 0: both n-tiles are in range
            uint32_t b[4];
            LdMatrixX4Trans(b, vr + col0);
            Mma16816(o[vn], a, b[0], b[1]);
            Mma16816(o[vn + 1], a, b[2], b[3]);
          }
        }
      }
      __syncthreads();  // the next iteration's load overwrites this buffer
    }
    CpAsyncWait<0>();

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + wm * 16 + (lane >> 2) + h * 8, i = row / p.group;
      if (i >= q_len) continue;
      const int64_t token = q0 + i;
      const int64_t head = static_cast<int64_t>(g) * p.group + row % p.group;
      if (p.num_splits == 1) {
        const float inv = l_r[h] > 0.0f ? 1.0f / l_r[h] : 0.0f;
        bf16* dst = p.out + token * p.out_stride + head * Dv;
#pragma unroll
        for (int vn = 0; vn < kVN; ++vn) {
          const int col = (wn * kVN + vn) * 8 + (lane & 3) * 2;
          if (col < Dv) {
            dst[col] = __float2bfloat16_rn(o[vn][2 * h] * inv);
            dst[col + 1] = __float2bfloat16_rn(o[vn][2 * h + 1] * inv);
          }
        }
      } else {
        if (token >= p.ws_tokens) continue;
        const int64_t wrow = split * p.ws_tokens * p.num_heads + token * p.num_heads + head;
        float* dst = p.ws_o + wrow * Dv;
#pragma unroll
        for (int vn = 0; vn < kVN; ++vn) {
          const int col = (wn * kVN + vn) * 8 + (lane & 3) * 2;
          if (col < Dv)
            *reinterpret_cast<float2*>(dst + col) = make_float2(o[vn][2 * h], o[vn][2 * h + 1]);
        }
        if (wn == 0 && (lane & 3) == 0) {
          p.ws_ml[2 * wrow] = m_r[h];
          p.ws_ml[2 * wrow + 1] = l_r[h];
        }
      }
    }
  }
}

// ---- SIMT kernel -------------------------------------------------------------
//
// 4 warps x 4 rows = 16 rows; 32 keys per tile, lane j scoring key j. Shared
// memory in fp32: Q [16][D], K [32][D|1] (odd stride: conflict-free column
// reads), V [32][Dv] (none when same_kv). Each lane accumulates output
// columns lane + 32 * c for c < kVPL.
template <typename T, int kVPL>
__global__ void __launch_bounds__(128) AttnSimtKernel(Params<T> p) {
  constexpr int kRW = kSimtRows / 4;
  extern __shared__ float smf[];
  const int D = p.head_dim, Dv = p.v_dim;
  const int ks = D | 1;
  const int vs = p.same_kv ? ks : Dv;
  float* q_sm = smf;                   // [16][D]
  float* k_sm = q_sm + kSimtRows * D;  // [32][ks]
  float* v_sm = p.same_kv ? k_sm : k_sm + kSimtKeys * ks;

  const int seq = static_cast<int>(blockIdx.x) / p.num_kv_heads;
  const int g = static_cast<int>(blockIdx.x) % p.num_kv_heads;
  const int split = static_cast<int>(blockIdx.z);
  const int64_t q0 = p.q_start[seq];
  const int64_t q_len = p.q_start[seq + 1] - q0;
  if (q_len <= 0) return;
  const int64_t context = p.context_lens[seq];
  const int64_t num_rows = q_len * p.group;
  const int64_t num_tiles = (num_rows + kSimtRows - 1) / kSimtRows;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int32_t* table = p.block_tables + seq * p.max_blocks_per_seq;
  const int64_t tiles_per_chunk = p.chunk / kSimtKeys;
  const T* k_head = p.k + static_cast<int64_t>(g) * D;
  const T* v_head = p.v + static_cast<int64_t>(g) * Dv;

  for (int64_t tile = blockIdx.y; tile < num_tiles; tile += gridDim.y) {
    const int64_t row0 = tile * kSimtRows;
    const int64_t i_last = min(q_len - 1, (row0 + kSimtRows - 1) / p.group);
    const int64_t kv_end = min(context, context - q_len + i_last + 1);
    auto key0_of = [&](int64_t n) {
      return TileKey0(n, tiles_per_chunk, split, p.num_splits, p.chunk, kSimtKeys);
    };
    const bool any = key0_of(0) < kv_end;
    if (!any && p.num_splits > 1) continue;

    __syncthreads();
    for (int r = warp; r < kSimtRows; r += 4) {
      const int64_t row = row0 + r, i = row / p.group;
      const bool valid = i < q_len;
      const int64_t head = static_cast<int64_t>(g) * p.group + row % p.group;
      const T* src = p.q + (valid ? (q0 + i) * p.q_stride + head * D : 0);
      for (int d = lane; d < D; d += 32) q_sm[r * D + d] = valid ? ToF(src[d]) : 0.0f;
    }
    int64_t vis[kRW];
    float m_r[kRW], l_r[kRW], acc[kRW][kVPL];
#pragma unroll
    for (int rr = 0; rr < kRW; ++rr) {
      const int64_t row = row0 + warp * kRW + rr, i = row / p.group;
      vis[rr] = i < q_len ? context - q_len + i + 1 : 0;
      m_r[rr] = -INFINITY;
      l_r[rr] = 0.0f;
#pragma unroll
      for (int c = 0; c < kVPL; ++c) acc[rr][c] = 0.0f;
    }

    for (int64_t n = 0; any && key0_of(n) < kv_end; ++n) {
      const int64_t key0 = key0_of(n);
      __syncthreads();  // previous tile (and the Q stores) are done
      for (int j = warp; j < kSimtKeys; j += 4) {
        const int64_t pos = key0 + j;
        const bool valid = pos < kv_end;
        const int64_t slot = valid ? SlotOf(table, pos, p.block_size) : 0;
        const T* ksrc = k_head + slot * p.k_stride;
        for (int d = lane; d < D; d += 32) k_sm[j * ks + d] = valid ? ToF(ksrc[d]) : 0.0f;
        if (!p.same_kv) {
          const T* vsrc = v_head + slot * p.v_stride;
          for (int d = lane; d < Dv; d += 32) v_sm[j * vs + d] = valid ? ToF(vsrc[d]) : 0.0f;
        }
      }
      __syncthreads();

      float sc[kRW];
#pragma unroll
      for (int rr = 0; rr < kRW; ++rr) sc[rr] = 0.0f;
      const float* kr = k_sm + lane * ks;
      const float* qr = q_sm + warp * kRW * D;
      for (int d = 0; d < D; ++d) {
        const float kd = kr[d];
#pragma unroll
        for (int rr = 0; rr < kRW; ++rr) sc[rr] = fmaf(qr[rr * D + d], kd, sc[rr]);
      }
      const int64_t key = key0 + lane;
#pragma unroll
      for (int rr = 0; rr < kRW; ++rr) {
        const float x = key < vis[rr] ? sc[rr] * p.scale_log2 : -INFINITY;
        const float mx = fmaxf(m_r[rr], WarpMax(x));
        const float ref = mx == -INFINITY ? 0.0f : mx;
        const float corr = exp2f(m_r[rr] - ref);
        const float pr = exp2f(x - ref);
        l_r[rr] = l_r[rr] * corr + WarpSum(pr);
        m_r[rr] = mx;
        sc[rr] = pr;
#pragma unroll
        for (int c = 0; c < kVPL; ++c) acc[rr][c] *= corr;
      }
      for (int j = 0; j < kSimtKeys; ++j) {
        float pj[kRW];
#pragma unroll
        for (int rr = 0; rr < kRW; ++rr) pj[rr] = __shfl_sync(0xffffffffu, sc[rr], j);
        const float* vr = v_sm + j * vs;
#pragma unroll
        for (int c = 0; c < kVPL; ++c) {
          const int col = lane + 32 * c;
          if (col < Dv) {
            const float vv = vr[col];
#pragma unroll
            for (int rr = 0; rr < kRW; ++rr) acc[rr][c] = fmaf(pj[rr], vv, acc[rr][c]);
          }
        }
      }
    }

#pragma unroll
    for (int rr = 0; rr < kRW; ++rr) {
      const int64_t row = row0 + warp * kRW + rr, i = row / p.group;
      if (i >= q_len) continue;
      const int64_t token = q0 + i;
      const int64_t head = static_cast<int64_t>(g) * p.group + row % p.group;
      if (p.num_splits == 1) {
        const float inv = l_r[rr] > 0.0f ? 1.0f / l_r[rr] : 0.0f;
        T* dst = p.out + token * p.out_stride + head * Dv;
#pragma unroll
        for (int c = 0; c < kVPL; ++c) {
          const int col = lane + 32 * c;
          if (col < Dv) dst[col] = FromF<T>(acc[rr][c] * inv);
        }
      } else {
        if (token >= p.ws_tokens) continue;
        const int64_t wrow = split * p.ws_tokens * p.num_heads + token * p.num_heads + head;
        float* dst = p.ws_o + wrow * Dv;
#pragma unroll
        for (int c = 0; c < kVPL; ++c) {
          const int col = lane + 32 * c;
          if (col < Dv) dst[col] = acc[rr][c];
        }
        if (lane == 0) {
          p.ws_ml[2 * wrow] = m_r[rr];
          p.ws_ml[2 * wrow + 1] = l_r[rr];
        }
      }
    }
  }
}

// ---- split combine -------------------------------------------------------------
//
// One block per (token, head). Split k holds keys of the row iff k * chunk <
// visible (the row's causal bound); only those partials are read, whatever
// the workspace holds elsewhere.
template <typename T>
__global__ void CombineKernel(Params<T> p) {
  const int64_t token = blockIdx.x;
  const int64_t head = blockIdx.y;
  if (token < p.q_start[0] || token >= p.q_start[p.num_seqs] || token >= p.ws_tokens) return;
  int lo = 0, hi = p.num_seqs;  // last s with q_start[s] <= token
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (p.q_start[mid] <= token) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int s = lo;
  const int64_t q_len = p.q_start[s + 1] - p.q_start[s];
  const int64_t vis = static_cast<int64_t>(p.context_lens[s]) - q_len + (token - p.q_start[s]) + 1;
  const int64_t valid =
      vis <= 0 ? 0 : min(static_cast<int64_t>(p.num_splits), (vis + p.chunk - 1) / p.chunk);
  const int64_t rows = p.ws_tokens * p.num_heads;
  const int64_t row = token * p.num_heads + head;
  float m = -INFINITY;
  for (int64_t k = 0; k < valid; ++k) m = fmaxf(m, p.ws_ml[2 * (k * rows + row)]);
  const float ref = m == -INFINITY ? 0.0f : m;
  float l = 0.0f;
  for (int64_t k = 0; k < valid; ++k) {
    l += p.ws_ml[2 * (k * rows + row) + 1] * exp2f(p.ws_ml[2 * (k * rows + row)] - ref);
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  T* dst = p.out + token * p.out_stride + head * p.v_dim;
  for (int c = threadIdx.x; c < p.v_dim; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t k = 0; k < valid; ++k) {
      const float w = exp2f(p.ws_ml[2 * (k * rows + row)] - ref);
      acc = fmaf(w, p.ws_o[(k * rows + row) * p.v_dim + c], acc);
    }
    dst[c] = FromF<T>(acc * inv);
  }
}

// ---- planning (host values only) -----------------------------------------------

struct Split {
  int64_t num_splits = 1;
  int64_t chunk = kChunkAlign;
  int64_t ws_tokens = 0;
  size_t workspace_bytes = 0;
};

int64_t MaxContext(const AttentionBatch& b) {
  if (b.max_context_len > 0) return b.max_context_len;
  return b.max_blocks_per_seq * b.block_size;
}

int64_t MaxQ(const AttentionBatch& b) {
  if (b.max_q_len > 0) return b.max_q_len;
  if (b.num_tokens > 0) return b.num_tokens;
  return std::max<int64_t>(1, MaxContext(b));
}

int64_t RoundUp(int64_t a, int64_t b) { return CeilDiv(a, b) * b; }

// The split of the context: enough blocks for ~4 waves when the batch alone
// does not fill the GPU, but chunks long enough that the partials written
// (group * v_dim fp32 per chunk) stay below the KV bytes the chunk reads.
Split PlanSplit(const AttentionBatch& b, const AttentionShape& s, int sms) {
  Split plan;
  const int64_t max_ctx = std::max<int64_t>(MaxContext(b), 0);
  plan.chunk = std::max<int64_t>(kChunkAlign, RoundUp(std::max<int64_t>(max_ctx, 1), kChunkAlign));
  if (b.num_seqs <= 0 || s.num_heads <= 0 || b.num_tokens <= 0 || max_ctx <= 0) return plan;
  const int64_t group = s.num_heads / s.num_kv_heads;
  const int64_t tiles = CeilDiv(std::max<int64_t>(MaxQ(b), 1) * group, kTcRows);
  const int64_t base = b.num_seqs * s.num_kv_heads * tiles;
  const int64_t target = 4 * static_cast<int64_t>(sms > 0 ? sms : 132);
  if (base >= target) return plan;
  const bool same_row = s.v_dim <= s.head_dim;  // MLA-like: one row serves as K and V
  const int64_t row_bytes = 2 * (s.head_dim + (same_row && s.num_kv_heads == 1 ? 0 : s.v_dim));
  const int64_t min_chunk = std::max<int64_t>(
      256, RoundUp(CeilDiv(group * s.v_dim * 8, std::max<int64_t>(row_bytes, 1)), kChunkAlign));
  int64_t splits = std::min<int64_t>(CeilDiv(target, base), CeilDiv(max_ctx, min_chunk));
  splits = std::min(splits, kMaxSplits);
  if (splits <= 1) return plan;
  int64_t chunk = RoundUp(CeilDiv(max_ctx, splits), kChunkAlign);
  splits = CeilDiv(max_ctx, chunk);
  auto bytes = [&](int64_t n) {
    return static_cast<size_t>(n) * static_cast<size_t>(b.num_tokens) *
           static_cast<size_t>(s.num_heads) * static_cast<size_t>(s.v_dim + 2) * sizeof(float);
  };
  while (splits > 1 && bytes(splits) > (size_t{1} << 30)) {
    chunk = RoundUp(CeilDiv(max_ctx, splits / 2), kChunkAlign);
    splits = CeilDiv(max_ctx, chunk);
  }
  if (splits <= 1) return plan;
  plan.num_splits = splits;
  plan.chunk = chunk;
  plan.ws_tokens = b.num_tokens;
  plan.workspace_bytes = bytes(splits);
  return plan;
}

// grid.y: row tiles of the longest sequence; when max_q_len is unknown the
// bound may be loose, so it is capped (the kernels loop over further tiles).
unsigned RowTileGrid(const AttentionBatch& b, int64_t group, int rows_per_block, int64_t grid_x,
                     int sms) {
  int64_t y = CeilDiv(MaxQ(b) * group, rows_per_block);
  if (b.max_q_len <= 0) {
    y = std::min<int64_t>(y, std::max<int64_t>(1, 64 * static_cast<int64_t>(sms > 0 ? sms : 132) /
                                                      std::max<int64_t>(grid_x, 1)));
  }
  return static_cast<unsigned>(std::clamp<int64_t>(y, 1, 65535));
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

int MaxSmem() {
  int dev = 0, bytes = 48 << 10;
  if (cudaGetDevice(&dev) == cudaSuccess) {
    (void)cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  }
  return bytes;
}

template <typename Kernel, typename P>
cudaError_t LaunchAttn(Kernel kernel, dim3 grid, int threads, size_t smem, cudaStream_t stream,
                       const P& params) {
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, threads, smem, stream>>>(params);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchSimt(cudaStream_t stream, const Params<T>& p, dim3 grid, size_t smem) {
  const int vpl = static_cast<int>(CeilDiv(p.v_dim, 32));
  if (vpl <= 1) return LaunchAttn(AttnSimtKernel<T, 1>, grid, 128, smem, stream, p);
  if (vpl <= 2) return LaunchAttn(AttnSimtKernel<T, 2>, grid, 128, smem, stream, p);
  if (vpl <= 4) return LaunchAttn(AttnSimtKernel<T, 4>, grid, 128, smem, stream, p);
  if (vpl <= 8) return LaunchAttn(AttnSimtKernel<T, 8>, grid, 128, smem, stream, p);
  if (vpl <= 16) return LaunchAttn(AttnSimtKernel<T, 16>, grid, 128, smem, stream, p);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t Run(cudaStream_t stream, const void* q, const void* k_cache, const void* v_cache,
                void* out, const AttentionBatch& batch, const AttentionShape& shape, int sms,
                void* workspace, size_t workspace_bytes) {
  const Split plan = PlanSplit(batch, shape, sms);
  if (plan.workspace_bytes > workspace_bytes) return cudaErrorInvalidValue;
  if (shape.v_dim > 512 || shape.head_dim > 1024) return cudaErrorInvalidValue;
  Params<T> p{};
  p.q = static_cast<const T*>(q);
  p.k = static_cast<const T*>(k_cache);
  p.v = static_cast<const T*>(v_cache);
  p.out = static_cast<T*>(out);
  p.q_start = batch.q_start;
  p.context_lens = batch.context_lens;
  p.block_tables = batch.block_tables;
  p.max_blocks_per_seq = batch.max_blocks_per_seq;
  p.block_size = batch.block_size;
  p.q_stride = shape.q_stride;
  p.out_stride = shape.out_stride;
  p.k_stride = shape.k_slot_stride;
  p.v_stride = shape.v_slot_stride;
  p.num_seqs = static_cast<int>(batch.num_seqs);
  p.num_kv_heads = static_cast<int>(shape.num_kv_heads);
  p.group = static_cast<int>(shape.num_heads / shape.num_kv_heads);
  p.num_heads = static_cast<int>(shape.num_heads);
  p.head_dim = static_cast<int>(shape.head_dim);
  p.v_dim = static_cast<int>(shape.v_dim);
  p.scale_log2 = shape.scale * kLog2e;
  p.num_splits = static_cast<int>(plan.num_splits);
  p.chunk = plan.chunk;
  p.ws_tokens = plan.ws_tokens;
  if (plan.num_splits > 1) {
    p.ws_o = static_cast<float*>(workspace);
    p.ws_ml = p.ws_o + plan.num_splits * plan.ws_tokens * shape.num_heads * shape.v_dim;
  }
  p.same_kv = k_cache == v_cache && shape.k_slot_stride == shape.v_slot_stride &&
              shape.v_dim <= shape.head_dim &&
              (shape.num_kv_heads == 1 || shape.head_dim == shape.v_dim);
  const int64_t D = shape.head_dim, Dv = shape.v_dim;
  const int64_t grid_x = batch.num_seqs * shape.num_kv_heads;
  if (grid_x > 0x7fffffff) return cudaErrorInvalidValue;
  const int max_smem = MaxSmem();

  cudaError_t err = cudaSuccess;
  bool launched = false;
  if constexpr (std::is_same_v<T, bf16>) {
    p.q_vec = Aligned16(q) && shape.q_stride % 8 == 0;
    const bool tc_ok = D > 0 && D % 16 == 0 && Dv % 16 == 0 && Aligned16(k_cache) &&
                       Aligned16(v_cache) && shape.k_slot_stride % 8 == 0 &&
                       shape.v_slot_stride % 8 == 0;
    if (tc_ok) {
      const int bn = Dv <= 128 ? 64 : 32;
      const size_t smem = sizeof(bf16) * static_cast<size_t>(kTcRows * (D + 8) + 2 * bn * (D + 8) +
                                                             (p.same_kv ? 0 : 2 * bn * (Dv + 8)));
      if (smem <= static_cast<size_t>(max_smem)) {
        const dim3 grid(static_cast<unsigned>(grid_x),
                        RowTileGrid(batch, p.group, kTcRows, grid_x, sms),
                        static_cast<unsigned>(plan.num_splits));
        if (Dv <= 64) {
          err = LaunchAttn(AttnTcKernel<1, 8, 64>, grid, 128, smem, stream, p);
        } else if (Dv <= 128) {
          err = LaunchAttn(AttnTcKernel<1, 16, 64>, grid, 128, smem, stream, p);
        } else if (Dv <= 256) {
          err = LaunchAttn(AttnTcKernel<1, 32, 32>, grid, 128, smem, stream, p);
        } else {
          err = LaunchAttn(AttnTcKernel<2, 32, 32>, grid, 256, smem, stream, p);
        }
        launched = true;
      }
    }
  }
  if (!launched) {
    const int64_t ks = D | 1;
    const size_t smem = sizeof(float) * static_cast<size_t>(kSimtRows * D + kSimtKeys * ks +
                                                            (p.same_kv ? 0 : kSimtKeys * Dv));
    if (smem > static_cast<size_t>(max_smem)) return cudaErrorInvalidValue;
    const dim3 grid(static_cast<unsigned>(grid_x),
                    RowTileGrid(batch, p.group, kSimtRows, grid_x, sms),
                    static_cast<unsigned>(plan.num_splits));
    err = LaunchSimt(stream, p, grid, smem);
  }
  if (err != cudaSuccess || plan.num_splits <= 1) return err;
  const dim3 cgrid(static_cast<unsigned>(plan.ws_tokens), static_cast<unsigned>(shape.num_heads));
  CombineKernel<T><<<cgrid, 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

size_t PagedAttentionWorkspaceBytes(const AttentionBatch& batch, const AttentionShape& shape,
                                    int num_multiprocessors) {
  if (shape.num_kv_heads <= 0) return 0;
  return PlanSplit(batch, shape, num_multiprocessors).workspace_bytes;
}

cudaError_t PagedAttention(cudaStream_t stream, DType dtype, const void* q, const void* k_cache,
                           const void* v_cache, void* out, const AttentionBatch& batch,
                           const AttentionShape& shape, int num_multiprocessors, void* workspace,
                           size_t workspace_bytes) {
  if (batch.num_seqs <= 0 || shape.num_heads <= 0 || shape.v_dim <= 0) return cudaSuccess;
  if (shape.num_kv_heads <= 0 || shape.num_heads % shape.num_kv_heads != 0 ||
      batch.block_size <= 0) {
    return cudaErrorInvalidValue;
  }
  SY_CUDA_DISPATCH(dtype, T,
                   return Run<T>(stream, q, k_cache, v_cache, out, batch, shape,
                                 num_multiprocessors, workspace, workspace_bytes));
  return cudaSuccess;
}

}  // namespace sy::kernels::cuda
