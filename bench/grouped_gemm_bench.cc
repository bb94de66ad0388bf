// Grouped expert FFN benchmark (gate_up + SiLU + down, bf16) on the GPU:
// Qwen3-30B-A3B (hidden 2048, 128 experts, inter 768, top-8) and DeepSeek-V3
// (hidden 7168, 256 experts, inter 2048, top-8) at 1..8192 tokens, rows =
// tokens * 8 spread over the experts by uniform random routing (8 distinct
// experts per token, a fixed seed; bench/torch_grouped_gemm.py draws the
// same routing), for every path of cuda::GroupedExpertFfn.
//
// Per case: the time of one call (CUDA events around `iters` calls after a
// warm-up; the cuBLAS paths include their host synchronisation), TFLOP/s
// (6 * rows * hidden * inter: gate_up 2*rows*hidden*2*inter plus down
// 2*rows*inter*hidden), and GB/s of weights read (3 * hidden * inter * 2
// bytes per expert with >= 1 row), each as a fraction of the peaks measured
// in the same run: a bf16 cuBLAS GEMM of 8192^3 (mean of 10 after warm-up)
// and cudaMemcpyAsync device-to-device of 2 GiB (read + write bytes).
//
// Beside each case, the read bound: the fastest of a few configurations of
// a kernel that only streams the same active experts' weights (one launch,
// 16-byte loads; bench/cuda/weight_read.cu), through the same rotating
// tables. "rd%cp" is its weight GB/s against the 2 GiB copy's, "%rdsz" its
// time against the path's (100% would be a path as fast as reading its
// weights and nothing else), "rdcfg" the configuration that won (uU: loads in
// flight per thread, bB: blocks per SM, b0: one block per chunk). "rd2..."
// is the same for the two-phase read: the gate_up weights in one launch,
// then the down weights in a second that may launch early and prefetch into
// L2 but reads only after the first ends (programmatic dependent launch, as
// the small-M path runs its two projections): the bound of any FFN whose
// down projection needs gate_up's output.
//
// Every path's output is checked against the cuBLAS loop's (fp32
// accumulation, the same bf16 roundings): "err" is max |out - ref| over
// max |ref|, so a fast wrong kernel cannot hide in the table.
//
// --rotate=N (default 16): the timed calls cycle through N expert-pointer
// tables, call i mapping expert e to the weights of expert (e + i * E / N)
// mod E, so that consecutive calls read different weights, as consecutive
// layers do, and the same-size copy cycles through N source regions. With
// N = 1 every call reads the same weights, and the H200's 60 MB L2 still
// holds part of the previous call's: Qwen3-30B-A3B's single token (75 MB)
// then reads 22.7 us instead of 24.2.
//
// Usage: switchyard-grouped-gemm-bench [--model=qwen3|dsv3|all]
//          [--tokens=1,4,...] [--paths=small,grouped,loop,sm90,auto] [--iters=N (0: auto)]
//          [--rotate=N (default 16)]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/cuda/weight_read.h"
#include "bench/gpu_bench_util.h"
#include "kernels/cuda/backend.h"
#include "kernels/device.h"
#include "kernels/kernels.h"

namespace sy::kernels {
namespace {

using ::sy::bench::LaunchWeightRead;
using ::sy::bench::LaunchWeightReadTwoPhase;
using ::sy::bench::OkOrDie;
using ::sy::bench::OrDie;
using ::sy::bench::ReadChunkBytes;
using ::sy::bench::ReadConfig;
using ::sy::bench::ReadRegions;

struct Model {
  const char* name;
  int64_t hidden, experts, inter, top_k;
};
constexpr Model kModels[] = {{"qwen3-30b-a3b", 2048, 128, 768, 8},
                             {"deepseek-v3", 7168, 256, 2048, 8}};

// splitmix64 of a counter: the routing draws, reproduced exactly by
// bench/torch_grouped_gemm.py.
uint64_t SplitMix(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Rows per expert: each token picks top_k distinct experts by a partial
// Fisher-Yates shuffle driven by SplitMix(seed * 2^32 + draw index).
std::vector<int64_t> RouteCounts(int64_t tokens, int64_t experts, int64_t top_k, uint64_t seed) {
  std::vector<int64_t> counts(static_cast<size_t>(experts), 0);
  std::vector<int64_t> perm(static_cast<size_t>(experts));
  uint64_t draw = seed << 32;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t e = 0; e < experts; ++e) perm[e] = e;
    for (int64_t j = 0; j < top_k; ++j) {
      const auto r = static_cast<int64_t>(SplitMix(draw++) % static_cast<uint64_t>(experts - j));
      std::swap(perm[j], perm[j + r]);
      ++counts[perm[j]];
    }
  }
  return counts;
}

// Fills `bytes` of device memory with a repeated block of random bf16 in
// [-scale, scale] (the values do not change the timing).
void FillRandom(const Context& ctx, void* dst, int64_t bytes, float scale, uint32_t seed) {
  const int64_t block_elems = std::min<int64_t>(bytes / 2, int64_t{16} << 20);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> host(static_cast<size_t>(block_elems));
  for (float& v : host) v = dist(rng);
  OkOrDie(UploadAs(ctx, DType::kBF16, host.data(), dst, block_elems), "UploadAs");
  for (int64_t at = block_elems * 2; at < bytes; at += block_elems * 2) {
    const int64_t n = std::min(block_elems * 2, bytes - at);
    OkOrDie(CopyOnDevice(ctx, static_cast<char*>(dst) + at, dst, n), "CopyOnDevice");
  }
}

class Timer {
 public:
  explicit Timer(cudaStream_t s) : stream_(s) {
    BENCH_CUDA(cudaEventCreate(&a_));
    BENCH_CUDA(cudaEventCreate(&b_));
  }
  ~Timer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  // Mean milliseconds per call of fn over `iters` calls.
  template <typename Fn>
  double Mean(int iters, Fn&& fn) {
    BENCH_CUDA(cudaEventRecord(a_, stream_));
    for (int i = 0; i < iters; ++i) fn();
    BENCH_CUDA(cudaEventRecord(b_, stream_));
    BENCH_CUDA(cudaEventSynchronize(b_));
    float ms = 0.0f;
    BENCH_CUDA(cudaEventElapsedTime(&ms, a_, b_));
    return ms / iters;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int Run(int argc, char** argv) {
  std::string model_arg = "all";
  std::string tokens_arg = "1,4,16,64,256,1024,4096,8192";
  std::string paths_arg = "small,grouped,loop,sm90,auto";
  int iters_arg = 0;
  int rotate = 16;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* key) -> const char* {
      const size_t n = std::strlen(key);
      return a.compare(0, n, key) == 0 ? argv[i] + n : nullptr;
    };
    if (const char* v = value("--model=")) {
      model_arg = v;
    } else if (const char* v2 = value("--tokens=")) {
      tokens_arg = v2;
    } else if (const char* v3 = value("--paths=")) {
      paths_arg = v3;
    } else if (const char* v4 = value("--iters=")) {
      iters_arg = std::atoi(v4);
    } else if (const char* v5 = value("--rotate=")) {
      rotate = std::atoi(v5);
      if (rotate < 1 || rotate > 256) {
        std::fprintf(stderr, "--rotate must be 1..256, got %s\n", v5);
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--model=qwen3|dsv3|all] [--tokens=1,4,...] "
                   "[--paths=small,grouped,loop,sm90,auto] [--iters=N] [--rotate=N]\n",
                   argv[0]);
      return 2;
    }
  }
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += std::string(i ? " " : "") + argv[i];
  std::printf("# command: %s\n", cmd.c_str());

  auto dc = OrDie(DeviceContext::Create(Device::kCuda), "DeviceContext::Create");
  const Context& ctx = dc->ctx();
  const DeviceInfo info = OrDie(dc->Info(), "Info");
  std::printf("# device: %s (%d SMs)\n", info.name.c_str(), info.multiprocessors);
  cudaStream_t stream = cuda::Stream(ctx);
  Timer timer(stream);

  // Peaks: bf16 GEMM 8192^3 and the D2D copy bandwidth.
  double peak_tflops = 0.0, peak_gbs = 0.0;
  {
    const int64_t n = 8192;
    DeviceBuffer a = OrDie(DeviceBuffer::Allocate(ctx, n * n * 2), "alloc");
    DeviceBuffer b = OrDie(DeviceBuffer::Allocate(ctx, n * n * 2), "alloc");
    DeviceBuffer c = OrDie(DeviceBuffer::Allocate(ctx, n * n * 2), "alloc");
    FillRandom(ctx, a.data(), n * n * 2, 1.0f, 1);
    FillRandom(ctx, b.data(), n * n * 2, 1.0f, 2);
    auto gemm = [&] {
      OkOrDie(Linear(ctx, DType::kBF16, a.data(), b.data(), nullptr, c.data(), n, n, n), "Linear");
    };
    for (int i = 0; i < 3; ++i) gemm();
    const double short_ms = timer.Mean(10, gemm);
    // The reference peak runs as long as every path below (about 200 ms of
    // repeats), so both meet the same clocks under sustained load.
    const int iters = static_cast<int>(std::clamp(200.0 / short_ms, 3.0, 200.0));
    const double ms = timer.Mean(iters, gemm);
    peak_tflops = 2.0 * n * n * n / (ms * 1e-3) / 1e12;
    std::printf("# cuBLAS bf16 GEMM 8192^3: %.1f TFLOP/s over 10 repeats, %.1f over %d (%.0f ms)\n",
                2.0 * n * n * n / (short_ms * 1e-3) / 1e12, peak_tflops, iters, ms * iters);
  }
  {
    const int64_t bytes = int64_t{2} << 30;
    DeviceBuffer src = OrDie(DeviceBuffer::Allocate(ctx, bytes), "alloc");
    DeviceBuffer dst = OrDie(DeviceBuffer::Allocate(ctx, bytes), "alloc");
    BENCH_CUDA(cudaMemsetAsync(src.data(), 1, static_cast<size_t>(bytes), stream));
    auto copy = [&] {
      BENCH_CUDA(cudaMemcpyAsync(dst.data(), src.data(), static_cast<size_t>(bytes),
                                 cudaMemcpyDeviceToDevice, stream));
    };
    for (int i = 0; i < 2; ++i) copy();
    const double ms = timer.Mean(10, copy);
    peak_gbs = 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
  }
  std::printf("# peaks: bf16 cuBLAS GEMM 8192^3 %.1f TFLOP/s; D2D copy %.0f GB/s (read+write)\n",
              peak_tflops, peak_gbs);
  std::printf(
      "# %%copy: weight bytes per second against the 2 GiB copy's; %%cpsz: the time of one\n"
      "# device-to-device copy that moves the same bytes (reads and writes half each)\n"
      "# against the path's time, the bandwidth bound at this size\n");
  std::printf("%-14s %6s %6s %6s %-8s %6s %11s %9s %7s %9s %7s %7s %8s %7s %7s %6s %7s %7s %6s\n",
              "model", "tokens", "rows", "active", "path", "iters", "time_us", "TFLOP/s", "%peak",
              "wGB/s", "%copy", "%cpsz", "err", "rd%cp", "%rdsz", "rdcfg", "rd2%cp", "%rd2sz",
              "rd2cfg");

  struct PathSpec {
    const char* key;
    cuda::GroupedFfnPath path;
  };
  const PathSpec all_paths[] = {{"small", cuda::GroupedFfnPath::kSmallM},
                                {"grouped", cuda::GroupedFfnPath::kCublasGrouped},
                                {"loop", cuda::GroupedFfnPath::kCublasLoop},
                                {"sm90", cuda::GroupedFfnPath::kSm90},
                                {"auto", cuda::GroupedFfnPath::kAuto}};
  const auto want_paths = Split(paths_arg);
  std::vector<int64_t> token_counts;
  for (const auto& t : Split(tokens_arg)) token_counts.push_back(std::atoll(t.c_str()));
  const int64_t max_tokens = *std::max_element(token_counts.begin(), token_counts.end());

  for (const Model& m : kModels) {
    const bool is_qwen = std::strncmp(m.name, "qwen3", 5) == 0;
    if (model_arg != "all" && !(model_arg == "qwen3" && is_qwen) &&
        !(model_arg == "dsv3" && !is_qwen)) {
      continue;
    }
    const int64_t gu_elems = 2 * m.inter * m.hidden, dn_elems = m.hidden * m.inter;
    DeviceBuffer w =
        OrDie(DeviceBuffer::Allocate(ctx, m.experts * (gu_elems + dn_elems) * 2), "alloc weights");
    FillRandom(ctx, w.data(), w.bytes(), 0.02f, 3);
    // rotate tables of m.experts pointers each, table t shifted by t * E / N.
    std::vector<const void*> gu_ptrs, dn_ptrs;
    for (int t = 0; t < rotate; ++t) {
      const int64_t shift = t * m.experts / rotate;
      for (int64_t i = 0; i < m.experts; ++i) {
        const int64_t e = (i + shift) % m.experts;
        gu_ptrs.push_back(w.as<char>() + e * gu_elems * 2);
        dn_ptrs.push_back(w.as<char>() + (m.experts * gu_elems + e * dn_elems) * 2);
      }
    }
    const int64_t table_bytes = rotate * m.experts * 8;
    DeviceBuffer d_gu = OrDie(DeviceBuffer::Allocate(ctx, table_bytes), "alloc");
    DeviceBuffer d_dn = OrDie(DeviceBuffer::Allocate(ctx, table_bytes), "alloc");
    OkOrDie(CopyToDevice(ctx, d_gu.data(), gu_ptrs.data(), table_bytes), "copy");
    OkOrDie(CopyToDevice(ctx, d_dn.data(), dn_ptrs.data(), table_bytes), "copy");
    int call_index = 0;  // the table the next timed call uses
    const int64_t max_rows = max_tokens * m.top_k;
    DeviceBuffer x = OrDie(DeviceBuffer::Allocate(ctx, max_rows * m.hidden * 2), "alloc x");
    DeviceBuffer out = OrDie(DeviceBuffer::Allocate(ctx, max_rows * m.hidden * 2), "alloc out");
    DeviceBuffer ref = OrDie(DeviceBuffer::Allocate(ctx, max_rows * m.hidden * 2), "alloc ref");
    FillRandom(ctx, x.data(), x.bytes(), 1.0f, 4);
    DeviceBuffer d_off = OrDie(DeviceBuffer::Allocate(ctx, (m.experts + 1) * 8), "alloc");
    DeviceBuffer copy_dst = OrDie(DeviceBuffer::Allocate(ctx, w.bytes() / 2 + 16), "alloc copy");
    // The read bound's region lists: per table, every expert's gate_up then
    // down (the first 2 * active entries of a table are used).
    const int64_t table_regions = 2 * m.experts;
    DeviceBuffer d_rptr = OrDie(DeviceBuffer::Allocate(ctx, rotate * table_regions * 8), "alloc");
    DeviceBuffer d_rbytes = OrDie(DeviceBuffer::Allocate(ctx, table_regions * 8), "alloc");
    DeviceBuffer d_rprefix = OrDie(DeviceBuffer::Allocate(ctx, (table_regions + 1) * 8), "alloc");
    DeviceBuffer d_sink = OrDie(DeviceBuffer::Allocate(ctx, 16), "alloc");
    // The two-phase read bound's: per table, the active experts' gate_up,
    // then their down (bytes and prefixes per phase).
    DeviceBuffer d_r2ptr = OrDie(DeviceBuffer::Allocate(ctx, rotate * table_regions * 8), "alloc");
    DeviceBuffer d_r2bytes = OrDie(DeviceBuffer::Allocate(ctx, table_regions * 8), "alloc");
    DeviceBuffer d_r2prefix = OrDie(DeviceBuffer::Allocate(ctx, (table_regions + 2) * 8), "alloc");

    for (const int64_t tokens : token_counts) {
      const auto counts = RouteCounts(tokens, m.experts, m.top_k, 1234);
      std::vector<int64_t> offsets(static_cast<size_t>(m.experts + 1), 0);
      int64_t active = 0;
      for (int64_t e = 0; e < m.experts; ++e) {
        offsets[e + 1] = offsets[e] + counts[e];
        active += counts[e] > 0 ? 1 : 0;
      }
      const int64_t rows = offsets[m.experts];
      OkOrDie(CopyToDevice(ctx, d_off.data(), offsets.data(), (m.experts + 1) * 8), "copy");
      const double flops = 6.0 * rows * m.hidden * m.inter;
      const double wbytes = 3.0 * m.hidden * m.inter * 2 * active;
      // The copy that moves wbytes: wbytes / 2 read and wbytes / 2 written.
      const auto half = static_cast<size_t>(wbytes / 2);
      const int64_t region =
          ((static_cast<int64_t>(w.bytes()) - static_cast<int64_t>(half)) / rotate) & ~int64_t{255};
      auto same_copy = [&] {
        const char* src = w.as<char>() + (call_index++ % rotate) * region;
        BENCH_CUDA(cudaMemcpyAsync(copy_dst.data(), src, half, cudaMemcpyDeviceToDevice, stream));
      };
      same_copy();
      const double copy_once = timer.Mean(1, same_copy);
      const double copy_ms = timer.Mean(
          static_cast<int>(std::clamp(200.0 / std::max(copy_once, 1e-3), 3.0, 200.0)), same_copy);
      // The read bound on the same experts' weights, best of the configurations.
      std::vector<const void*> rptr;
      for (int t = 0; t < rotate; ++t) {
        for (int64_t e = 0; e < m.experts; ++e) {
          if (counts[e] == 0) continue;
          rptr.push_back(gu_ptrs[t * m.experts + e]);
          rptr.push_back(dn_ptrs[t * m.experts + e]);
        }
        rptr.resize(static_cast<size_t>((t + 1) * table_regions), nullptr);
      }
      const int regions = static_cast<int>(2 * active);
      OkOrDie(CopyToDevice(ctx, d_rptr.data(), rptr.data(), rotate * table_regions * 8), "copy");
      // The fastest of the read configurations: prepare(rc) uploads what
      // the configuration needs and returns the call to time.
      const auto fastest =
          [&](const std::function<std::function<void()>(const ReadConfig&)>& prepare) {
            std::pair<double, ReadConfig> best{0.0, ReadConfig{}};
            for (const ReadConfig rc :
                 {ReadConfig{4, 0}, ReadConfig{8, 0}, ReadConfig{4, 2}, ReadConfig{8, 2},
                  ReadConfig{4, 4}, ReadConfig{8, 4}, ReadConfig{4, 8}, ReadConfig{8, 8}}) {
              const std::function<void()> call = prepare(rc);
              call();
              const double once = timer.Mean(1, call);
              const double t = timer.Mean(
                  static_cast<int>(std::clamp(100.0 / std::max(once, 1e-3), 3.0, 200.0)), call);
              if (best.first == 0.0 || t < best.first) best = {t, rc};
            }
            return best;
          };
      const auto [read_ms, best_cfg] = fastest([&](const ReadConfig& rc) {
        const int64_t cb = ReadChunkBytes(rc.unroll);
        std::vector<int64_t> rbytes, prefix{0};
        for (int i = 0; i < regions; ++i) {
          rbytes.push_back((i % 2 == 0 ? gu_elems : dn_elems) * 2);
          prefix.push_back(prefix.back() + (rbytes.back() + cb - 1) / cb);
        }
        OkOrDie(CopyToDevice(ctx, d_rbytes.data(), rbytes.data(), regions * 8), "copy");
        OkOrDie(CopyToDevice(ctx, d_rprefix.data(), prefix.data(), (regions + 1) * 8), "copy");
        const int64_t chunks = prefix.back();
        return std::function<void()>([&, rc, chunks] {
          const int64_t at = (call_index++ % rotate) * table_regions;
          BENCH_CUDA(LaunchWeightRead(stream, rc, info.multiprocessors,
                                      d_rptr.as<const void* const>() + at, d_rbytes.as<int64_t>(),
                                      d_rprefix.as<int64_t>(), regions, chunks,
                                      d_sink.as<uint32_t>()));
        });
      });
      const double read_gbs = wbytes / (read_ms * 1e-3) / 1e9;
      char rdcfg[16];
      std::snprintf(rdcfg, sizeof(rdcfg), "u%db%d", best_cfg.unroll, best_cfg.blocks_per_sm);
      // The same bytes in two dependent launches (gate_up, then down).
      std::vector<const void*> r2ptr;
      for (int t = 0; t < rotate; ++t) {
        for (const auto* table : {&gu_ptrs, &dn_ptrs}) {
          for (int64_t e = 0; e < m.experts; ++e) {
            if (counts[e] > 0) r2ptr.push_back((*table)[t * m.experts + e]);
          }
        }
        r2ptr.resize(static_cast<size_t>((t + 1) * table_regions), nullptr);
      }
      OkOrDie(CopyToDevice(ctx, d_r2ptr.data(), r2ptr.data(), rotate * table_regions * 8), "copy");
      const auto [read2_ms, best2_cfg] = fastest([&](const ReadConfig& rc) {
        const int64_t cb = ReadChunkBytes(rc.unroll);
        // bytes: active gate_up then active down; prefixes: phase 1's
        // (active + 1 entries), then phase 2's (active + 1).
        std::vector<int64_t> rbytes, prefix{0};
        for (int64_t i = 0; i < active; ++i) {
          rbytes.push_back(gu_elems * 2);
          prefix.push_back(prefix.back() + (rbytes.back() + cb - 1) / cb);
        }
        prefix.push_back(0);
        for (int64_t i = 0; i < active; ++i) {
          rbytes.push_back(dn_elems * 2);
          prefix.push_back(prefix.back() + (rbytes.back() + cb - 1) / cb);
        }
        OkOrDie(CopyToDevice(ctx, d_r2bytes.data(), rbytes.data(), 2 * active * 8), "copy");
        OkOrDie(CopyToDevice(ctx, d_r2prefix.data(), prefix.data(), (2 * active + 2) * 8), "copy");
        const int64_t chunks1 = prefix[active], chunks2 = prefix.back();
        return std::function<void()>([&, rc, chunks1, chunks2] {
          const void* const* at =
              d_r2ptr.as<const void* const>() + (call_index++ % rotate) * table_regions;
          const ReadRegions first{at, d_r2bytes.as<int64_t>(), d_r2prefix.as<int64_t>(),
                                  static_cast<int>(active), chunks1};
          const ReadRegions second{at + active, d_r2bytes.as<int64_t>() + active,
                                   d_r2prefix.as<int64_t>() + active + 1, static_cast<int>(active),
                                   chunks2};
          BENCH_CUDA(LaunchWeightReadTwoPhase(stream, rc, info.multiprocessors, first, second,
                                              d_sink.as<uint32_t>()));
        });
      });
      const double read2_gbs = wbytes / (read2_ms * 1e-3) / 1e9;
      char rd2cfg[16];
      std::snprintf(rd2cfg, sizeof(rd2cfg), "u%db%d", best2_cfg.unroll, best2_cfg.blocks_per_sm);
      auto run = [&](cuda::GroupedFfnPath path, void* dst, const char* what, int table) {
        const int64_t at = table * m.experts;
        OkOrDie(
            cuda::GroupedExpertFfn(ctx, DType::kBF16, x.data(), d_off.as<int64_t>(), m.experts,
                                   rows, d_gu.as<const void* const>() + at,
                                   d_dn.as<const void* const>() + at, m.hidden, m.inter, dst, path),
            what);
      };
      run(cuda::GroupedFfnPath::kCublasLoop, ref.data(), "reference (loop)", 0);
      std::vector<float> ref_host(static_cast<size_t>(rows * m.hidden));
      std::vector<float> out_host(ref_host.size());
      OkOrDie(DownloadAsF32(ctx, DType::kBF16, ref.data(), ref_host.data(), rows * m.hidden),
              "download");
      float ref_max = 0.0f;
      for (const float v : ref_host) ref_max = std::max(ref_max, std::fabs(v));
      for (const PathSpec& p : all_paths) {
        if (std::find(want_paths.begin(), want_paths.end(), p.key) == want_paths.end()) continue;
        auto call = [&] { run(p.path, out.data(), p.key, call_index++ % rotate); };
        OkOrDie(cuda::Memset(ctx, out.data(), 0xFF, rows * m.hidden * 2), "memset");
        call_index = 0;
        call();  // warm-up (workspaces, cuBLAS heuristics), then the check against table 0
        OkOrDie(DownloadAsF32(ctx, DType::kBF16, out.data(), out_host.data(), rows * m.hidden),
                "download");
        float err = 0.0f;
        for (size_t i = 0; i < out_host.size(); ++i) {
          const float d = std::fabs(out_host[i] - ref_host[i]);
          err = std::isnan(d) ? INFINITY : std::max(err, d);
        }
        err = ref_max > 0.0f ? err / ref_max : err;
        int iters = iters_arg;
        if (iters <= 0) {
          const double once = timer.Mean(1, call);
          iters = static_cast<int>(std::clamp(200.0 / std::max(once, 1e-3), 3.0, 200.0));
        }
        const double ms = timer.Mean(iters, call);
        const double tflops = flops / (ms * 1e-3) / 1e12;
        const double gbs = wbytes / (ms * 1e-3) / 1e9;
        std::printf(
            "%-14s %6lld %6lld %6lld %-8s %6d %11.1f %9.2f %6.1f%% %9.0f %6.1f%% %6.1f%% %8.1e "
            "%6.1f%% %6.1f%% %6s %6.1f%% %6.1f%% %6s\n",
            m.name, static_cast<long long>(tokens), static_cast<long long>(rows),
            static_cast<long long>(active), p.key, iters, ms * 1e3, tflops,
            100.0 * tflops / peak_tflops, gbs, 100.0 * gbs / peak_gbs, 100.0 * copy_ms / ms, err,
            100.0 * read_gbs / peak_gbs, 100.0 * read_ms / ms, rdcfg, 100.0 * read2_gbs / peak_gbs,
            100.0 * read2_ms / ms, rd2cfg);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace sy::kernels

int main(int argc, char** argv) { return sy::kernels::Run(argc, argv); }
