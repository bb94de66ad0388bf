// The grouped expert FFN for prefill-sized inputs on Hopper (sm_90a): a
// persistent, warp-specialised grouped GEMM on the tensor cores (wgmma), one
// launch per projection over every expert, offsets and weight pointers read
// on the device (no host synchronisation; CUDA-graph safe).
//
//   launch 1 (gate_up, SiLU fused):  inter[r, j] = silu(gate_j . x_r) * (up_j . x_r)
//   launch 2 (down):                 out[r, n]   = down_n . inter[r]
//
// Block: 384 threads = one producer warpgroup and two consumer warpgroups.
// Output tile 128 rows x 256 accumulator columns, K in steps of 64, 4 stages
// of shared memory (48 KiB each). The producer copies each stage with
// cp.async (16-byte chunks, zero-filled outside the matrix, so the weights can
// sit anywhere: one device pointer per expert) into the 128-byte-swizzled
// K-major layout that wgmma reads, and the hardware arrives on the stage's
// "full" mbarrier when the copies land (cp.async.mbarrier.arrive.noinc).
// Each consumer warpgroup owns 64 of the 128 rows and issues
// wgmma.m64n256k16 from shared memory, keeps one stage of wgmma in flight,
// and releases a stage (its "empty" mbarrier) once the wgmma reading it has
// retired. The fused gate_up tile loads 128 gate rows and the matching 128 up
// rows as its 256 columns, so a thread holds gate and up of the same output
// column and applies SiLU-and-multiply in registers: the [rows, 2 * inter]
// intermediate never exists.
//
// Tiles: expert e has ceil(rows_e / 128) row tiles times the column tiles;
// every block builds the prefix over experts in shared memory and walks tile
// t = blockIdx.x, blockIdx.x + gridDim.x, ... (grid = the SM count, or fewer).
// Rows of a tile past its expert's rows are zero-filled and never stored.
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
constexpr size_t kSmemBytes = 1024 /* alignment slack */ +
                              static_cast<size_t>(kStages) * kStageBytes +
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
  const int local = t - tiles[lo];
  return {lo, (local / n_tiles) * kBM, (local % n_tiles) * n_per_tile};
}

template <bool kFused>
__global__ void __launch_bounds__(kThreads, 1) GroupedGemmSm90(const Params p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem =
      reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* stage_a = smem;
  uint8_t* stage_b = smem + kStages * kABytes;
  auto* bars = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
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
      BarInit(full0 + 8 * s, 128);  // every producer thread's cp.async arrive
      BarInit(empty0 + 8 * s, 8);   // one lane per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  const int total_tiles = tiles[p.num_experts];
  const int k_steps = (p.k + kBK - 1) / kBK;

  if (warp < 4) {
    // ---- producer warpgroup ----
    const int t = threadIdx.x;
    const int chunk = t & 7, r0 = t >> 3;  // 16-byte chunk of a row; rows r0 + 16 j
    const uint32_t swz = static_cast<uint32_t>(r0 * 128 + ((chunk ^ (r0 & 7)) << 4));
    const uint32_t a_smem = SmemAddr(stage_a) + swz, b_smem = SmemAddr(stage_b) + swz;
    int stage = 0;
    uint32_t phase = 0;
    for (int tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
      const Tile tl = FindTile(tiles, p.num_experts, n_tiles, kNPerTile, tile);
      const int64_t row0 = p.offsets[tl.expert] + tl.m0;
      const int rows_left = static_cast<int>(p.offsets[tl.expert + 1] - row0);
      const bf16* a = p.a + row0 * p.k + chunk * 8;
      const bf16* w = static_cast<const bf16*>(p.weights[tl.expert]) + chunk * 8;
      for (int ks = 0; ks < k_steps; ++ks) {
        BarWait(empty0 + 8 * stage, phase ^ 1);
        const int kk = ks * kBK;
        const bool k_ok = kk + chunk * 8 < p.k;
        const uint32_t sa = a_smem + stage * kABytes, sb = b_smem + stage * kBBytes;
#pragma unroll
        for (int j = 0; j < kBM / 16; ++j) {
          const int r = r0 + 16 * j;
          const bool ok = k_ok && r < rows_left;
          CpAsync16(sa + j * 16 * 128, ok ? a + static_cast<int64_t>(r) * p.k + kk : p.a,
                    ok ? 16 : 0);
        }
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
    for (int ks = 0; ks < k_steps; ++ks) {
      BarWait(full0 + 8 * stage, phase);
      // cp.async wrote the stage through the generic proxy; wgmma reads it
      // through the async proxy.
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
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

    // Epilogue: d[4 c + h] is row (lane / 4) + 8 * (h / 2) of this warp's 16,
    // column 8 c + 2 (lane % 4) + h % 2.
    const int64_t row_begin = p.offsets[tl.expert];
    const int rows_in = static_cast<int>(p.offsets[tl.expert + 1] - row_begin);
    const int r_lo = tl.m0 + wg * 64 + wwarp * 16 + (lane >> 2);
    const int c_lane = 2 * (lane & 3);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = r_lo + 8 * half;
      if (r >= rows_in) continue;
      bf16* out_row = p.out + (row_begin + r) * p.n_out;
#pragma unroll
      for (int c = 0; c < (kFused ? 16 : 32); ++c) {
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

#else  // not sm_90a: never launched (GroupedGemmSm90Supported is false)

template <bool kFused>
__global__ void GroupedGemmSm90(const Params) {
  __trap();
}

#endif

template <bool kFused>
cudaError_t Launch(cudaStream_t stream, const Params& p, int num_sms) {
  const cudaError_t attr =
      cudaFuncSetAttribute(GroupedGemmSm90<kFused>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kSmemBytes));
  if (attr != cudaSuccess) return attr;
  // Upper bound on the tiles (host values only): every expert's partial tile
  // plus the full ones.
  constexpr int kNPerTile = kFused ? kBN / 2 : kBN;
  const int64_t n_tiles = (p.n_out + kNPerTile - 1) / kNPerTile;
  const int64_t max_tiles =
      (p.num_rows / kBM + std::min<int64_t>(p.num_experts, p.num_rows)) * n_tiles;
  const auto grid =
      static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(num_sms, max_tiles)));
  GroupedGemmSm90<kFused><<<grid, kThreads, kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

bool GroupedGemmSm90Supported(DType dtype, int64_t num_experts, int64_t hidden, int64_t inter) {
  return dtype == DType::kBF16 && num_experts <= kMaxExperts && hidden % 8 == 0 && inter % 8 == 0 &&
         hidden > 0 && inter > 0 && hidden <= (int64_t{1} << 30) && inter <= (int64_t{1} << 30);
}

cudaError_t GroupedExpertFfnSm90(cudaStream_t stream, const void* x, const int64_t* offsets,
                                 int64_t num_experts, int64_t num_rows, const void* const* gate_up,
                                 const void* const* down, int64_t hidden, int64_t inter,
                                 void* inter_buf, void* out, int num_multiprocessors) {
  if (num_rows == 0 || num_experts == 0) return cudaSuccess;
  Params p{};
  p.offsets = offsets;
  p.num_rows = num_rows;
  p.num_experts = static_cast<int>(num_experts);
  p.a = static_cast<const bf16*>(x);
  p.weights = gate_up;
  p.out = static_cast<bf16*>(inter_buf);
  p.k = static_cast<int>(hidden);
  p.n_out = static_cast<int>(inter);
  cudaError_t err = Launch<true>(stream, p, num_multiprocessors);
  if (err != cudaSuccess) return err;
  p.a = static_cast<const bf16*>(inter_buf);
  p.weights = down;
  p.out = static_cast<bf16*>(out);
  p.k = static_cast<int>(inter);
  p.n_out = static_cast<int>(hidden);
  return Launch<false>(stream, p, num_multiprocessors);
}

}  // namespace sy::kernels::cuda
