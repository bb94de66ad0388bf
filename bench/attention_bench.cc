// Decode attention benchmark (q_len 1, bf16) on the GPU through the public
// kernel API: GQA (Qwen3-30B-A3B: 32 heads, 4 kv heads, head_dim 128) and
// MLA's absorbed form (DeepSeek-V3: 128 heads, one latent head of 576, value
// = its first 512) at batch 1..256 and contexts 512..32768.
//
// Per case it prints the GPU time of one PagedAttention call (CUDA events
// around many replays of a captured CUDA graph, after warm-up), the KV bytes
// the call must read (sum over sequences of context * cache row bytes) per
// second, and that as a fraction of the device-to-device copy bandwidth
// measured in the same run (cudaMemcpyAsync of a 2 GiB buffer, read + write
// bytes, mean of several runs).
//
// Usage: switchyard-attention-bench [--model=gqa|mla|all] [--iters=N (0: auto)]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/gpu_bench_util.h"
#include "kernels/device.h"
#include "kernels/kernels.h"

namespace sy::kernels {
namespace {

using ::sy::bench::OkOrDie;
using ::sy::bench::OrDie;

struct Model {
  const char* name;
  int64_t num_heads, num_kv_heads, head_dim, v_dim;
  bool mla;  // one latent row per slot serves as key and value
  int64_t k_row() const { return mla ? head_dim : num_kv_heads * head_dim; }
  int64_t v_row() const { return mla ? 0 : num_kv_heads * v_dim; }
  int64_t row_bytes() const { return 2 * (k_row() + v_row()); }  // bf16 bytes read per position
};

// Mean read+write bandwidth of device-to-device copies of `bytes`.
double CopyBandwidth(const Context& ctx, int64_t bytes) {
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream);
  DeviceBuffer src = OrDie(DeviceBuffer::Allocate(ctx, bytes), "Allocate");
  DeviceBuffer dst = OrDie(DeviceBuffer::Allocate(ctx, bytes), "Allocate");
  OkOrDie(Memset(ctx, src.data(), 1, bytes), "Memset");
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 2; ++i) {
    BENCH_CUDA(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, stream));
  }
  constexpr int kRuns = 5, kCopies = 5;
  double sum = 0.0;
  for (int r = 0; r < kRuns; ++r) {
    BENCH_CUDA(cudaEventRecord(start, stream));
    for (int i = 0; i < kCopies; ++i) {
      BENCH_CUDA(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, stream));
    }
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float ms = 0.0f;
    BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
    sum += 2.0 * static_cast<double>(bytes) * kCopies / (ms * 1e-3);
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  return sum / kRuns;
}

struct Result {
  double us = 0.0;
  bool graph = false;
};

Result RunCase(const DeviceContext& dc, const Model& m, int64_t batch, int64_t context, int iters) {
  constexpr int64_t kBlockSize = 16;
  const Context& ctx = dc.ctx();
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream);
  const int64_t blocks_per_seq = (context + kBlockSize - 1) / kBlockSize;
  const int64_t num_blocks = batch * blocks_per_seq;
  const int64_t slots = num_blocks * kBlockSize;

  DeviceBuffer k = OrDie(DeviceBuffer::Allocate(ctx, slots * m.k_row() * 2), "Allocate k");
  DeviceBuffer v;
  if (!m.mla) v = OrDie(DeviceBuffer::Allocate(ctx, slots * m.v_row() * 2), "Allocate v");
  // 0x3c3c is bf16 0.0115: finite, small values everywhere.
  OkOrDie(Memset(ctx, k.data(), 0x3c, k.bytes()), "Memset");
  if (!m.mla) OkOrDie(Memset(ctx, v.data(), 0x3c, v.bytes()), "Memset");
  DeviceBuffer q = OrDie(DeviceBuffer::Allocate(ctx, batch * m.num_heads * m.head_dim * 2), "q");
  OkOrDie(Memset(ctx, q.data(), 0x3c, q.bytes()), "Memset");
  DeviceBuffer out = OrDie(DeviceBuffer::Allocate(ctx, batch * m.num_heads * m.v_dim * 2), "out");

  // Scattered blocks, as a paged cache hands them out.
  std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::mt19937 rng(1234);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> q_start(static_cast<size_t>(batch + 1));
  std::iota(q_start.begin(), q_start.end(), 0);
  std::vector<int32_t> context_lens(static_cast<size_t>(batch), static_cast<int32_t>(context));
  auto upload = [&](const std::vector<int32_t>& h) {
    DeviceBuffer b = OrDie(DeviceBuffer::Allocate(ctx, static_cast<int64_t>(h.size() * 4)), "tab");
    OkOrDie(CopyToDevice(ctx, b.data(), h.data(), static_cast<int64_t>(h.size() * 4)), "copy");
    return b;
  };
  DeviceBuffer d_tables = upload(pool), d_q_start = upload(q_start), d_ctx = upload(context_lens);

  AttentionBatch ab;
  ab.num_seqs = batch;
  ab.q_start = d_q_start.as<int32_t>();
  ab.context_lens = d_ctx.as<int32_t>();
  ab.block_tables = d_tables.as<int32_t>();
  ab.max_blocks_per_seq = blocks_per_seq;
  ab.block_size = kBlockSize;
  ab.max_q_len = 1;
  ab.max_context_len = context;
  ab.num_tokens = batch;
  AttentionShape shape;
  shape.num_heads = m.num_heads;
  shape.num_kv_heads = m.num_kv_heads;
  shape.head_dim = m.head_dim;
  shape.v_dim = m.v_dim;
  shape.q_stride = m.num_heads * m.head_dim;
  shape.out_stride = m.num_heads * m.v_dim;
  shape.k_slot_stride = m.k_row();
  shape.v_slot_stride = m.mla ? m.k_row() : m.v_row();
  shape.scale = 1.0f / std::sqrt(static_cast<float>(m.head_dim));
  const void* v_ptr = m.mla ? k.data() : v.data();
  auto call = [&] {
    return PagedAttention(ctx, DType::kBF16, q.data(), k.data(), v_ptr, out.data(), ab, shape);
  };
  for (int i = 0; i < 3; ++i) OkOrDie(call(), "PagedAttention");  // grows the workspace
  OkOrDie(dc.Synchronize(), "Synchronize");

  // One call captured as a graph: replays measure the kernels, not the host.
  Result res;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    const absl::Status st = call();
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    if (st.ok() && end == cudaSuccess &&
        cudaGraphInstantiate(&exec, graph, nullptr, nullptr, 0) == cudaSuccess) {
      res.graph = true;
    }
  }
  (void)cudaGetLastError();
  auto step = [&] {
    if (res.graph) {
      BENCH_CUDA(cudaGraphLaunch(exec, stream));
    } else {
      OkOrDie(call(), "PagedAttention");
    }
  };
  if (iters <= 0) {
    const double bytes = static_cast<double>(batch * context * m.row_bytes());
    iters = static_cast<int>(std::clamp(4e9 / bytes, 20.0, 1000.0));
  }
  for (int i = 0; i < 5; ++i) step();
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  BENCH_CUDA(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) step();
  BENCH_CUDA(cudaEventRecord(stop, stream));
  BENCH_CUDA(cudaEventSynchronize(stop));
  float ms = 0.0f;
  BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
  res.us = 1e3 * ms / iters;
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  if (exec != nullptr) BENCH_CUDA(cudaGraphExecDestroy(exec));
  if (graph != nullptr) BENCH_CUDA(cudaGraphDestroy(graph));
  OkOrDie(dc.Synchronize(), "Synchronize");
  return res;
}

int Main(int argc, char** argv) {
  std::string cmd = argv[0];
  for (int i = 1; i < argc; ++i) cmd += std::string(" ") + argv[i];
  std::printf("command: %s\n", cmd.c_str());
  std::string model_flag = "all";
  int iters = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--model=", 0) == 0) {
      model_flag = a.substr(8);
    } else if (a.rfind("--iters=", 0) == 0) {
      iters = std::atoi(a.c_str() + 8);
    } else {
      std::fprintf(stderr, "unknown flag %s\nusage: %s [--model=gqa|mla|all] [--iters=N]\n",
                   a.c_str(), argv[0]);
      return 2;
    }
  }
  auto dc = OrDie(DeviceContext::Create(Device::kCuda), "DeviceContext::Create");
  const Context& ctx = dc->ctx();
  const DeviceInfo info = OrDie(dc->Info(), "Info");
  std::printf("device: %s, %d SMs, %.1f GiB (%.1f GiB free)\n", info.name.c_str(),
              info.multiprocessors, info.total_memory / 1073741824.0,
              info.free_memory / 1073741824.0);
  const double copy_bw = CopyBandwidth(ctx, int64_t{2} << 30);
  std::printf("d2d copy bandwidth (2 GiB, read+write, mean of 5): %.1f GB/s\n\n", copy_bw / 1e9);

  const Model models[] = {
      {"gqa-qwen3-30b-a3b", 32, 4, 128, 128, false},
      {"mla-deepseek-v3", 128, 1, 576, 512, true},
  };
  std::printf("%-18s %6s %7s %12s %10s %9s %8s %6s\n", "model", "batch", "context", "kv_bytes",
              "time_us", "GB/s", "of_copy", "graph");
  for (const Model& m : models) {
    if (model_flag != "all" && model_flag != (m.mla ? "mla" : "gqa")) continue;
    for (int64_t batch : {1, 16, 64, 256}) {
      for (int64_t context : {512, 4096, 32768}) {
        const int64_t kv_bytes = batch * context * m.row_bytes();
        const DeviceInfo now = OrDie(dc->Info(), "Info");
        const int64_t limit = std::min<int64_t>(int64_t{60} << 30, now.free_memory * 8 / 10);
        if (kv_bytes > limit) {
          std::printf("%-18s %6ld %7ld %12ld  skipped (cache over %.1f GB)\n", m.name,
                      static_cast<long>(batch), static_cast<long>(context),
                      static_cast<long>(kv_bytes), limit / 1e9);
          continue;
        }
        const Result r = RunCase(*dc, m, batch, context, iters);
        const double gbs = static_cast<double>(kv_bytes) / (r.us * 1e-6) / 1e9;
        std::printf("%-18s %6ld %7ld %12ld %10.2f %9.1f %7.1f%% %6s\n", m.name,
                    static_cast<long>(batch), static_cast<long>(context),
                    static_cast<long>(kv_bytes), r.us, gbs, 100.0 * gbs * 1e9 / copy_bw,
                    r.graph ? "yes" : "no");
        std::fflush(stdout);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace sy::kernels

int main(int argc, char** argv) { return sy::kernels::Main(argc, argv); }
