// The grouped expert FFN for prefill-sized inputs on Hopper (sm_90a): a
// persistent, warp-specialised grouped GEMM on the tensor cores (wgmma), one
// launch per projection over every expert, offsets and weight pointers read
// on the device (no host synchronisation; CUDA-graph safe).
//
//   launch 1 (gate_up, SiLU fused):  inter[r, j] = silu(gate_j . x_r) * (up_j . x_r)
//   launch 2 (down):                 out[r, n]   = down_n . inter[r]
//
// Block: 384 threads = a producer warpgroup and two consumer warpgroups.
// Output tile 128 rows x 256 accumulator columns, K in steps of 64, 4 stages
// of shared memory (48 KiB each) in the 128-byte-swizzled K-major layout that
// wgmma reads. Two ways to fill them:
//  - from 64 rows per expert on average (compute bound), one producer warp
//    loads each stage with TMA: the activations from a tensor map over the
//    whole [num_rows, k] input, the weights from a tensor map per expert,
//    which the warp writes for each tile on the device (a template whose
//    global address it replaces with the expert's pointer,
//    tensormap.replace, into a ring of kMapRing maps per block in global
//    memory), since the pointers live in device memory (EPLB moves experts);
//  - below that (bound by reading the weights), the 128 producer threads
//    copy 16-byte chunks with cp.async (zero-filled outside the matrices) and
//    the hardware arrives on the stage's "full" mbarrier when they land
//    (cp.async.mbarrier.arrive.noinc); consumers then fence the generic
//    proxy's writes before wgmma reads them.
// Each consumer warpgroup owns 64 of the 128 rows and issues
// wgmma.m64n256k16 from shared memory, keeps one stage of wgmma in flight,
// and releases a stage (its "empty" mbarrier) once the wgmma reading it has
// retired. The fused gate_up tile loads 128 gate rows and the matching 128
// up rows as its 256 columns, so a thread holds gate and up of the same
// output column and applies SiLU-and-multiply in registers: the
// [rows, 2 * inter] intermediate never exists. With TMA the epilogue goes
// through 2 KiB of shared memory per warp (64 columns at a time) so that the
// stores to global memory are 16-byte and coalesced; with few rows each
// thread stores its own valid rows.
//
// Tiles: expert e has ceil(rows_e / 128) row tiles times the column tiles,
// numbered row tile fastest; every block builds the prefix over experts in
// shared memory and walks tile t = blockIdx.x, blockIdx.x + gridDim.x, ...
// (grid = the SM count, or fewer).
// Rows of a tile past its expert's rows (zeros, or with TMA the next
// expert's rows) are computed and never stored.
#include <cuda.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace sy::kernels::cuda {
namespace {

constexpr int kBM = 128;  // rows per tile
constexpr int kBN = 256;  // accumulator columns per tile
constexpr int kBK = 64;   // K per stage: 64 bf16 = one 128-byte swizzle row
constexpr int kStages = 4;
constexpr int kThreads = 384;      // producer warpgroup + two consumer warpgroups
constexpr int kMaxExperts = 1024;  // tile prefix in shared memory
constexpr int kABytes = kBM * kBK * 2;
constexpr int kBBytes = kBN * kBK * 2;
constexpr int kStageBytes = kABytes + kBBytes;
constexpr int64_t kTmaRowsPerExpert = 64;
constexpr int kEpilogueBytes = 8 * 16 * 128;  // 16 rows x 64 bf16 per consumer warp
// Weight tensor maps per block in flight: one per tile, and at most kStages
// stages (so tiles) can still be loading when the next tile's map is made.
constexpr int kMapRing = kStages + 1;

template <bool kTma>
constexpr size_t kSmemBytes = 1024 /* alignment slack */ +
                              static_cast<size_t>(kStages) * kStageBytes +
                              (kTma ? kEpilogueBytes : 0) + 128 /* tensor map staging */ +
                              2 * kStages * sizeof(uint64_t) + (kMaxExperts + 1) * sizeof(int32_t);

struct Params {
  const bf16* a;               // [num_rows, k], grouped by expert
  const int64_t* offsets;      // [num_experts + 1]
  const void* const* weights;  // [num_experts] -> [n_w, k]
  bf16* out;                   // [num_rows, n_out]
  int64_t num_rows;
  int num_experts;
  int k;
  int n_out;  // output columns: inter (fused) or hidden (down)
  // kTma: per block kMapRing tensor maps of the current experts' weights
  // (device memory, 128-byte aligned), rewritten from the template b_map.
  CUtensorMap* maps;
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SY_SM90A 1
#endif

#ifdef SY_SM90A

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void BarInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void BarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void BarWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Arrives on `bar` once every earlier cp.async of this thread has landed.
__device__ __forceinline__ void CpAsyncArrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
// 16 bytes, or zeros when `bytes` is 0.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, uint32_t bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes)
               : "memory");
}

// wgmma shared-memory descriptor: K-major, 128-byte swizzle, 8-row groups
// 1024 bytes apart.
__device__ __forceinline__ uint64_t Desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void FenceOperands(float (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (+)= A[64 x 16] . B[256 x 16]^T; scale_d == 0 overwrites d.
__device__ __forceinline__ void Wgmma(float (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                      uint32_t scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, "
      "%127"
      "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
        "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
        "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
        "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
        "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
        "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),
        "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),
        "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

__device__ __forceinline__ void BarExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
               : "memory");
}
// TMA: the box of `map` at (k, row) into `dst`, completing its bytes on
// `bar`. Rows and columns past the tensor read as zeros.
__device__ __forceinline__ void TmaLoad(uint32_t dst, const CUtensorMap* map, int k, int row,
                                        uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(k), "r"(row), "r"(bar)
      : "memory");
}

struct Tile {
  int expert, m0, n0;  // m0: first row within the expert; n0: first output column
};

// Tile t of the prefix `tiles` (inclusive prefix over experts, tiles[0] = 0).
__device__ __forceinline__ Tile FindTile(const int32_t* tiles, int num_experts, int n_tiles,
                                         int n_per_tile, int t) {
  int lo = 0, hi = num_experts;  // tiles[lo] <= t < tiles[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (tiles[mid] <= t) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  // Row tiles of one column tile are consecutive, so neighbouring blocks
  // (which run at the same time) stream the same weight rows and share them
  // in L2: an expert's weights (59 MB of gate_up for DeepSeek-V3) need not
  // fit in L2 to be read from memory once.
  const int local = t - tiles[lo];
  const int m_tiles = (tiles[lo + 1] - tiles[lo]) / n_tiles;
  return {lo, (local % m_tiles) * kBM, (local / m_tiles) * n_per_tile};
}

template <bool kFused, bool kTma>
__global__ void __launch_bounds__(kThreads, 1)
    GroupedGemmSm90(const Params p, const __grid_constant__ CUtensorMap a_map,
                    const __grid_constant__ CUtensorMap b_map) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* stage_a = smem;
  uint8_t* stage_b = smem + kStages * kABytes;
  uint8_t* epilogue = smem + kStages * kStageBytes;  // [8 consumer warps][16 rows][128 B]
  uint8_t* map_stage = epilogue + (kTma ? kEpilogueBytes : 0);  // 128 B, 128-aligned
  auto* bars = reinterpret_cast<uint64_t*>(map_stage + 128);
  auto* tiles = reinterpret_cast<int32_t*>(bars + 2 * kStages);  // [num_experts + 1]
  const uint32_t full0 = SmemAddr(bars), empty0 = SmemAddr(bars + kStages);

  // Columns per tile: 128 outputs from 128 gate + 128 up rows, or 256.
  constexpr int kNPerTile = kFused ? kBN / 2 : kBN;
  const int n_tiles = (p.n_out + kNPerTile - 1) / kNPerTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  if (warp == 0) {
    // Inclusive prefix of tiles per expert: lane l sums a contiguous chunk,
    // then a warp scan.
    const int per = (p.num_experts + 31) / 32;
    const int begin = lane * per, end = min(begin + per, p.num_experts);
    int sum = 0;
    for (int e = begin; e < end; ++e) {
      const auto rows = static_cast<int>(p.offsets[e + 1] - p.offsets[e]);
      sum += (rows + kBM - 1) / kBM * n_tiles;
    }
    int incl = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    int run = incl - sum;
    if (lane == 0) tiles[0] = 0;
    for (int e = begin; e < end; ++e) {
      const auto rows = static_cast<int>(p.offsets[e + 1] - p.offsets[e]);
      run += (rows + kBM - 1) / kBM * n_tiles;
      tiles[e + 1] = run;
    }
  } else if (warp == 1 && lane == 0) {
    for (int s = 0; s < kStages; ++s) {
      // TMA: the expect_tx arrive; cp.async: every producer thread's arrive.
      BarInit(full0 + 8 * s, kTma ? 1 : 128);
      BarInit(empty0 + 8 * s, 8);  // one lane per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  const int total_tiles = tiles[p.num_experts];
  const int k_steps = (p.k + kBK - 1) / kBK;

  if (kTma && warp < 4) {
    // ---- producer, TMA: one warp. Per tile it writes the expert's weight
    // tensor map (the template with its global address replaced) into the
    // next slot of this block's ring, then lane 0 loads each stage with one
    // activation box and one (down) or two (gate and up) weight boxes ----
    if (warp != 0) return;
    const uint32_t a_smem = SmemAddr(stage_a), b_smem = SmemAddr(stage_b);
    int stage = 0, made = 0;
    uint32_t phase = 0;
    for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x, ++made) {
      const Tile tl = FindTile(tiles, p.num_experts, n_tiles, kNPerTile, tile);
      const int row0 = static_cast<int>(p.offsets[tl.expert]) + tl.m0;
      CUtensorMap* map = p.maps + static_cast<int64_t>(blockIdx.x) * kMapRing + made % kMapRing;
      __syncwarp();
      if (lane < 8) {
        reinterpret_cast<uint4*>(map_stage)[lane] = reinterpret_cast<const uint4*>(&b_map)[lane];
      }
      __syncwarp();
      if (lane == 0) {
        asm volatile("tensormap.replace.tile.global_address.shared::cta.b1024.b64 [%0], %1;" ::"r"(
                         SmemAddr(map_stage)),
                     "l"(reinterpret_cast<uint64_t>(p.weights[tl.expert]))
                     : "memory");
      }
      __syncwarp();
      asm volatile(
          "tensormap.cp_fenceproxy.global.shared::cta.tensormap::generic.release.gpu.sync.aligned "
          "[%0], [%1], 128;" ::"l"(reinterpret_cast<uint64_t>(map)),
          "r"(SmemAddr(map_stage))
          : "memory");
      if (lane == 0) {
        asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;" ::"l"(
                         reinterpret_cast<uint64_t>(map))
                     : "memory");
        for (int ks = 0; ks < k_steps; ++ks) {
          BarWait(empty0 + 8 * stage, phase ^ 1);
          const int kk = ks * kBK;
          const uint32_t full = full0 + 8 * stage;
          // Rows past this expert's (the next expert's, or zeros past the
          // last row) are computed and never stored; weight rows past the
          // matrix read as zeros, gate rows past `inter` as up rows, all in
          // columns that are never stored.
          BarExpectTx(full, kStageBytes);
          TmaLoad(a_smem + stage * kABytes, &a_map, kk, row0, full);
          if (kFused) {
            TmaLoad(b_smem + stage * kBBytes, map, kk, tl.n0, full);
            TmaLoad(b_smem + stage * kBBytes + kBBytes / 2, map, kk, p.n_out + tl.n0, full);
          } else {
            TmaLoad(b_smem + stage * kBBytes, map, kk, tl.n0, full);
          }
          if (++stage == kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
    }
    return;
  }
  if (warp < 4) {
    // ---- producer warpgroup, cp.async: the 128 threads copy the weight
    // and activation rows ----
    const int t = threadIdx.x;
    const int chunk = t & 7, r0 = t >> 3;  // 16-byte chunk of a row; rows r0 + 16 j
    const uint32_t swz = static_cast<uint32_t>(r0 * 128 + ((chunk ^ (r0 & 7)) << 4));
    const uint32_t a_smem = SmemAddr(stage_a) + swz;
    const uint32_t b_smem = SmemAddr(stage_b) + swz;
    int stage = 0;
    uint32_t phase = 0;
    for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
      const Tile tl = FindTile(tiles, p.num_experts, n_tiles, kNPerTile, tile);
      const int row0 = static_cast<int>(p.offsets[tl.expert]) + tl.m0;
      const int rows_left = static_cast<int>(p.offsets[tl.expert + 1]) - row0;
      const bf16* a = p.a + static_cast<int64_t>(row0) * p.k + chunk * 8;
      const bf16* w = static_cast<const bf16*>(p.weights[tl.expert]) + chunk * 8;
      for (int ks = 0; ks < k_steps; ++ks) {
        BarWait(empty0 + 8 * stage, phase ^ 1);
        const int kk = ks * kBK;
        const bool k_ok = kk + chunk * 8 < p.k;
        // Rows past this expert's are zero-filled without a read.
        const uint32_t sa = a_smem + stage * kABytes;
#pragma unroll
        for (int j = 0; j < kBM / 16; ++j) {
          const int r = r0 + 16 * j;
          const bool ok = k_ok && r < rows_left;
          CpAsync16(sa + j * 16 * 128, ok ? a + static_cast<int64_t>(r) * p.k + kk : p.a,
                    ok ? 16 : 0);
        }
        const uint32_t sb = b_smem + stage * kBBytes;
#pragma unroll
        for (int j = 0; j < kBN / 16; ++j) {
          const int r = r0 + 16 * j;
          int col, wrow;
          if (kFused) {
            // Rows 0..127 gate (weights rows n0 + r), 128..255 up (n_out + n0 + r - 128).
            col = tl.n0 + (r & 127);
            wrow = r < 128 ? col : p.n_out + col;
          } else {
            col = tl.n0 + r;
            wrow = col;
          }
          const bool ok = k_ok && col < p.n_out;
          CpAsync16(sb + j * 16 * 128, ok ? w + static_cast<int64_t>(wrow) * p.k + kk : p.a,
                    ok ? 16 : 0);
        }
        CpAsyncArrive(full0 + 8 * stage);
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    // Let the last copies land before the block may exit.
    asm volatile("cp.async.wait_all;" ::: "memory");
    return;
  }

  // ---- consumer warpgroups ----
  const int wg = (warp - 4) >> 2;    // 0 or 1: rows 64 wg .. 64 wg + 63 of the tile
  const int wwarp = (warp - 4) & 3;  // warp within the warpgroup: 16 rows each
  const uint32_t a_base = SmemAddr(stage_a) + wg * 64 * 128, b_base = SmemAddr(stage_b);
  float d[128] = {};
  int stage = 0;
  uint32_t phase = 0;
  for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
    const Tile tl = FindTile(tiles, p.num_experts, n_tiles, kNPerTile, tile);
    int prev = -1;
    // Not unrolled: unrolling spills (registers are 128 accumulators + state).
#pragma unroll 1
    for (int ks = 0; ks < k_steps; ++ks) {
      BarWait(full0 + 8 * stage, phase);
      // cp.async writes through the generic proxy, wgmma reads through the
      // async proxy (TMA writes through it too: no fence needed).
      if constexpr (!kTma) asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      FenceOperands(d);
      asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
      const uint32_t sa = a_base + stage * kABytes, sb = b_base + stage * kBBytes;
#pragma unroll
      for (int j = 0; j < kBK / 16; ++j) {
        Wgmma(d, Desc(sa + j * 32), Desc(sb + j * 32), (ks > 0 || j > 0) ? 1u : 0u);
      }
      asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
      FenceOperands(d);
      if (prev >= 0 && lane == 0) BarArrive(empty0 + 8 * prev);
      prev = stage;
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    FenceOperands(d);
    if (prev >= 0 && lane == 0) BarArrive(empty0 + 8 * prev);

    const int64_t row_begin = p.offsets[tl.expert];
    const int rows_in = static_cast<int>(p.offsets[tl.expert + 1] - row_begin);
    const int warp_row0 = tl.m0 + wg * 64 + wwarp * 16;
    const int rl = lane >> 2;
    // d[4 c + h] is row rl + 8 * (h / 2) of the warp's 16, column
    // 8 c + 2 (lane % 4) + h % 2 of the tile.
    if constexpr (kTma) {
      // Compute-bound sizes: 64 columns at a time through this warp's 2 KiB
      // of shared memory (16 rows x 128 bytes, 16-byte chunks XOR-swizzled
      // by row so neither side conflicts on banks), then 16-byte coalesced
      // stores.
      uint8_t* stage_out = epilogue + (warp - 4) * 2048;
#pragma unroll
      for (int ch = 0; ch < kNPerTile / 64; ++ch) {
#pragma unroll
        for (int g = 0; g < 8; ++g) {
          const int c = ch * 8 + g;
          float v[4] = {d[4 * c], d[4 * c + 1], d[4 * c + 2], d[4 * c + 3]};
          if (kFused) {
#pragma unroll
            for (int h = 0; h < 4; ++h) v[h] = v[h] / (1.0f + __expf(-v[h])) * d[4 * (c + 16) + h];
          }
          const uint32_t off = static_cast<uint32_t>(((g ^ (rl & 7)) << 4) + (lane & 3) * 4);
          *reinterpret_cast<__nv_bfloat162*>(stage_out + rl * 128 + off) =
              __floats2bfloat162_rn(v[0], v[1]);
          *reinterpret_cast<__nv_bfloat162*>(stage_out + (rl + 8) * 128 + off) =
              __floats2bfloat162_rn(v[2], v[3]);
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = i * 4 + (lane >> 3), seg = lane & 7;
          const uint4 val =
              *reinterpret_cast<const uint4*>(stage_out + row * 128 + ((seg ^ (row & 7)) << 4));
          const int r = warp_row0 + row, col = tl.n0 + ch * 64 + seg * 8;
          if (r < rows_in && col < p.n_out) {
            *reinterpret_cast<uint4*>(p.out + (row_begin + r) * p.n_out + col) = val;
          }
        }
        __syncwarp();
      }
    } else {
      // Few rows per expert (the weight reads bound the kernel): each thread
      // stores its own valid rows directly.
      const int c_lane = 2 * (lane & 3);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = warp_row0 + rl + 8 * half;
        if (r >= rows_in) continue;
        bf16* out_row = p.out + (row_begin + r) * p.n_out;
#pragma unroll
        for (int c = 0; c < kNPerTile / 8; ++c) {
          const int col = tl.n0 + 8 * c + c_lane;
          if (col >= p.n_out) continue;
          float v0 = d[4 * c + 2 * half], v1 = d[4 * c + 2 * half + 1];
          if (kFused) {
            const float u0 = d[4 * (c + 16) + 2 * half], u1 = d[4 * (c + 16) + 2 * half + 1];
            v0 = v0 / (1.0f + __expf(-v0)) * u0;
            v1 = v1 / (1.0f + __expf(-v1)) * u1;
          }
          *reinterpret_cast<__nv_bfloat162*>(out_row + col) = __floats2bfloat162_rn(v0, v1);
        }
      }
    }
  }
}

#else  // not sm_90a: never launched (GroupedGemmSm90Supported is false)

template <bool kFused, bool kTma>
__global__ void GroupedGemmSm90(const Params, const __grid_constant__ CUtensorMap,
                                const __grid_constant__ CUtensorMap) {
  __trap();
}

#endif

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime (no link against libcuda).
EncodeTiledFn EncodeTiled() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// A bf16 [rows, k] row-major tensor map with boxes of `box_rows` x 64 (one
// stage's K), 128-byte swizzle (the layout wgmma reads), zeros past the
// tensor's edges.
bool EncodeBf16(EncodeTiledFn encode, CUtensorMap* map, const void* base, int64_t rows, int64_t k,
                uint32_t box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t box[2] = {kBK, box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides,
                box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <bool kFused, bool kTma>
cudaError_t Launch(cudaStream_t stream, const Params& p, int num_sms) {
  // kTma: the activations [num_rows, k], one box of 128 rows per stage; and
  // the template of every expert's weights [n_w, k], whose global address
  // the kernel replaces (here the activations', for the alignment check
  // only), in boxes of 128 (gate and up halves) or 256 rows.
  if (p.num_rows > (int64_t{1} << 31) - 1) return cudaErrorInvalidValue;  // rows are int
  CUtensorMap a_map{}, b_map{};
  if (kTma) {
    const EncodeTiledFn encode = EncodeTiled();
    if (encode == nullptr) return cudaErrorNotSupported;
    const int64_t n_w = kFused ? 2 * int64_t{p.n_out} : p.n_out;
    if (!EncodeBf16(encode, &a_map, p.a, p.num_rows, p.k, kBM) ||
        !EncodeBf16(encode, &b_map, p.a, n_w, p.k, kFused ? kBN / 2 : kBN)) {
      return cudaErrorInvalidValue;
    }
  }
  const cudaError_t attr = cudaFuncSetAttribute(GroupedGemmSm90<kFused, kTma>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(kSmemBytes<kTma>));
  if (attr != cudaSuccess) return attr;
  // Upper bound on the tiles (host values only): every expert's partial tile
  // plus the full ones.
  constexpr int kNPerTile = kFused ? kBN / 2 : kBN;
  const int64_t n_tiles = (p.n_out + kNPerTile - 1) / kNPerTile;
  const int64_t max_tiles =
      (p.num_rows / kBM + std::min<int64_t>(p.num_experts, p.num_rows)) * n_tiles;
  const auto grid =
      static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(num_sms, max_tiles)));
  GroupedGemmSm90<kFused, kTma><<<grid, kThreads, kSmemBytes<kTma>, stream>>>(p, a_map, b_map);
  return cudaGetLastError();
}

}  // namespace

size_t GroupedGemmSm90ScratchBytes(int num_multiprocessors) {
  return static_cast<size_t>(num_multiprocessors) * kMapRing * sizeof(CUtensorMap);
}

bool GroupedGemmSm90Supported(DType dtype, int64_t num_experts, int64_t hidden, int64_t inter) {
  return dtype == DType::kBF16 && num_experts <= kMaxExperts && hidden % 8 == 0 && inter % 8 == 0 &&
         hidden > 0 && inter > 0 && hidden <= (int64_t{1} << 30) && inter <= (int64_t{1} << 30);
}

cudaError_t GroupedExpertFfnSm90(cudaStream_t stream, const void* x, const int64_t* offsets,
                                 int64_t num_experts, int64_t num_rows, const void* const* gate_up,
                                 const void* const* down, int64_t hidden, int64_t inter,
                                 void* inter_buf, void* scratch, void* out,
                                 int num_multiprocessors) {
  if (num_rows == 0 || num_experts == 0) return cudaSuccess;
  // TMA pays off once the GEMM is compute bound; where the weight reads
  // bound it (few rows per expert) cp.async keeps more of them in flight.
  const bool tma = num_rows >= kTmaRowsPerExpert * num_experts;
  Params p{};
  p.offsets = offsets;
  p.num_rows = num_rows;
  p.num_experts = static_cast<int>(num_experts);
  p.maps = static_cast<CUtensorMap*>(scratch);
  p.a = static_cast<const bf16*>(x);
  p.weights = gate_up;
  p.out = static_cast<bf16*>(inter_buf);
  p.k = static_cast<int>(hidden);
  p.n_out = static_cast<int>(inter);
  cudaError_t err = tma ? Launch<true, true>(stream, p, num_multiprocessors)
                        : Launch<true, false>(stream, p, num_multiprocessors);
  if (err != cudaSuccess) return err;
  p.a = static_cast<const bf16*>(inter_buf);
  p.weights = down;
  p.out = static_cast<bf16*>(out);
  p.k = static_cast<int>(inter);
  p.n_out = static_cast<int>(hidden);
  return tma ? Launch<false, true>(stream, p, num_multiprocessors)
             : Launch<false, false>(stream, p, num_multiprocessors);
}

}  // namespace sy::kernels::cuda
