// Prefill and decode throughput of the single-process engine, on the CPU or
// a GPU.
//
//   build/bin/switchyard-engine-bench [--models a,b] [--batches 1,8] [--prompt 128]
//       [--decode 32] [--repeats 3] [--root REPO_DIR] [--device cpu|cuda]
//       [--dtype f32|bf16] [--graphs 0|1]
//
// On a GPU each row also carries the memory-bandwidth bound of a decode step:
// the bytes it must read (dense weights, the distinct experts that batch's
// routing touches in expectation under uniform routing, and the KV cache)
// over the device-to-device copy bandwidth measured in the same run.
//
// For each model and batch size B: B requests of `prompt` tokens arrive
// together; the first step prefills all of them (tokens/s = B * prompt /
// step time), the following steps decode one token per sequence (tokens/s =
// B * decode steps / time). Models: the shipped golden checkpoints and a
// `dummy` Qwen3-30B-A3B cut to 2 layers (bench/configs). Prints the command
// line and one row per configuration (the median of --repeats runs, after an
// untimed warm-up).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "engine/engine.h"
#include "engine/loader.h"
#include "kernels/device.h"

namespace {

using Clock = std::chrono::steady_clock;

struct ModelSpec {
  std::string name;
  std::string dir;
  std::string load_format;
};

struct Args {
  std::vector<std::string> models = {"deepseek_v3", "deepseek_v3_noqlora", "deepseek_v2",
                                     "qwen3_moe",   "qwen2_moe",           "glm4_moe",
                                     "mixtral",     "param2moe",           "qwen3_30b_a3b_2layers"};
  std::vector<int> batches = {1, 8};
  int prompt = 128;
  int decode = 32;
  int repeats = 3;
  std::string root = SY_SOURCE_DIR;  // repository checkout holding tests/data and bench/configs
  std::string device = "cpu";
  std::string dtype = "";  // default: f32 on the CPU, bf16 on the GPU
  bool graphs = true;
};

// Device-to-device copy bandwidth (bytes read + written per second) of a
// 2 GiB buffer, mean of 10 copies after a warm-up.
double CopyBandwidth(const sy::kernels::Context& ctx) {
  const int64_t bytes = int64_t{1} << 30;
  auto a = sy::kernels::DeviceBuffer::Allocate(ctx, bytes);
  auto b = sy::kernels::DeviceBuffer::Allocate(ctx, bytes);
  if (!a.ok() || !b.ok()) return 0;
  (void)sy::kernels::Memset(ctx, a->data(), 1, bytes);
  (void)sy::kernels::CopyOnDevice(ctx, b->data(), a->data(), bytes);
  auto dc_sync = [&] {
    char c;
    (void)sy::kernels::CopyToHost(ctx, &c, b->data(), 1);
  };
  dc_sync();
  const auto t0 = Clock::now();
  for (int i = 0; i < 10; ++i) (void)sy::kernels::CopyOnDevice(ctx, b->data(), a->data(), bytes);
  dc_sync();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return 2.0 * 10 * static_cast<double>(bytes) / s;
}

bool ParseList(const std::string& text, std::vector<int>* out) {
  out->clear();
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int v;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) return false;
    out->push_back(v);
  }
  return !out->empty();
}

struct Measurement {
  double prefill_s = 0;
  double decode_s = 0;
  int steps = 0;
};

// `batch` requests of `prompt` tokens arrive together; the first step
// prefills them all, the rest decode `decode` tokens per sequence.
bool Measure(sy::engine::Engine& engine, int64_t vocab, int batch, int prompt, int decode,
             Measurement* m) {
  for (int i = 0; i < batch; ++i) {
    sy::engine::GenerationRequest r;
    r.id = std::to_string(i);
    for (int t = 0; t < prompt; ++t) {
      r.prompt.push_back(static_cast<int32_t>((t * 37 + i * 101 + 11) % vocab));
    }
    r.stopping.max_new_tokens = decode + 1;
    r.stopping.ignore_eos = true;
    if (auto st = engine.Add(r); !st.ok()) {
      std::cerr << st << "\n";
      return false;
    }
  }
  const auto p0 = Clock::now();
  if (auto st = engine.Step(); !st.ok()) return false;
  m->prefill_s = std::chrono::duration<double>(Clock::now() - p0).count();
  const auto d0 = Clock::now();
  m->steps = 0;
  while (engine.HasWork()) {
    if (auto st = engine.Step(); !st.ok()) return false;
    ++m->steps;
  }
  m->decode_s = std::chrono::duration<double>(Clock::now() - d0).count();
  return true;
}

int Run(const Args& args) {
  const std::string& root = args.root;
  const bool gpu = args.device == "cuda";
  std::unique_ptr<sy::kernels::DeviceContext> dc;
  {
    auto created = sy::kernels::DeviceContext::Create(gpu ? sy::kernels::Device::kCuda
                                                          : sy::kernels::Device::kCpu);
    if (!created.ok()) {
      std::cerr << "device " << args.device << ": " << created.status() << "\n";
      return 1;
    }
    dc = *std::move(created);
  }
  const sy::kernels::DType dtype = args.dtype == "f32" || (args.dtype.empty() && !gpu)
                                       ? sy::kernels::DType::kF32
                                       : sy::kernels::DType::kBF16;
  double copy_bw = 0;
  if (gpu) {
    auto info = dc->Info();
    copy_bw = CopyBandwidth(dc->ctx());
    std::printf("device %s, %s, D2D copy bandwidth %.0f GB/s (read + write), CUDA graphs %s\n",
                info.ok() ? info->name.c_str() : "?", sy::kernels::DTypeName(dtype), copy_bw / 1e9,
                args.graphs ? "on" : "off");
  }
  for (const std::string& name : args.models) {
    ModelSpec spec{name, root + "/tests/data/goldens/" + name, "auto"};
    if (name == "qwen3_30b_a3b_2layers") {
      spec = {name, root + "/bench/configs/" + name, "dummy"};
    }
    sy::engine::ModelSource src{spec.dir, spec.load_format, 0};
    const auto t0 = Clock::now();
    sy::engine::RunnerOptions ropts;
    ropts.ctx = dc->ctx();
    ropts.dtype = dtype;
    ropts.max_graph_batch = args.graphs ? 512 : 0;
    auto runner = sy::engine::LoadModelRunner(src, ropts);
    if (!runner.ok()) {
      std::cerr << name << ": " << runner.status() << "\n";
      return 1;
    }
    const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
    const int64_t vocab = (*runner)->config().vocab_size;
    const sy::model::ModelConfig cfg = (*runner)->config();
    const double dense_bytes = static_cast<double>((*runner)->weight_bytes());
    int max_batch = 1;
    for (int b : args.batches) max_batch = std::max(max_batch, b);
    sy::engine::EngineOptions opts;
    opts.max_num_seqs = max_batch;
    // A tight context limit keeps the captured decode graphs' block tables small.
    opts.max_model_len =
        std::min<int64_t>(cfg.max_position_embeddings, args.prompt + args.decode + 16);
    opts.max_batched_tokens = int64_t{max_batch} * args.prompt;
    opts.kv.max_tokens = int64_t{max_batch} * (args.prompt + args.decode + 16);
    auto engine = sy::engine::Engine::Create(*std::move(runner), opts);
    if (!engine.ok()) {
      std::cerr << name << ": " << engine.status() << "\n";
      return 1;
    }
    // One untimed run warms up allocations, OpenMP and BLAS thread pools.
    Measurement warm;
    if (!Measure(**engine, vocab, 1, std::min(args.prompt, 16), 2, &warm)) return 1;
    for (int batch : args.batches) {
      std::vector<Measurement> runs(args.repeats);
      for (auto& m : runs) {
        if (!Measure(**engine, vocab, batch, args.prompt, args.decode, &m)) return 1;
      }
      // Median run by total time.
      std::sort(runs.begin(), runs.end(), [](const Measurement& a, const Measurement& b) {
        return a.prefill_s + a.decode_s < b.prefill_s + b.decode_s;
      });
      const Measurement& m = runs[runs.size() / 2];
      const double step_s = m.decode_s / std::max(m.steps, 1);
      std::printf(
          "%-24s batch %3d  prefill %9.1f tok/s (%8.1f ms)  decode %9.1f tok/s (%7.3f ms/step)"
          "  load %.1f s",
          name.c_str(), batch, batch * args.prompt / m.prefill_s, m.prefill_s * 1e3,
          batch * m.steps / m.decode_s, step_s * 1e3, load_s);
      if (gpu && copy_bw > 0) {
        // Bytes one decode step must read: dense weights, the experts that
        // `batch * top_k` uniform draws touch in expectation, and the KV of
        // a context of prompt + decode / 2 tokens per sequence.
        const double es = static_cast<double>(sy::kernels::DTypeSize(dtype));
        const double E = static_cast<double>(cfg.num_experts);
        const double touched =
            E > 0 ? E * (1.0 - std::pow(1.0 - 1.0 / E, static_cast<double>(batch * cfg.top_k)))
                  : 0.0;
        const double expert_bytes = 3.0 * static_cast<double>(cfg.hidden_size) *
                                    static_cast<double>(cfg.moe_intermediate_size) * es;
        const double kv_row = cfg.attention == sy::model::AttentionKind::kMla
                                  ? static_cast<double>(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
                                  : 2.0 * static_cast<double>(cfg.num_kv_heads * cfg.head_dim);
        const double kv_bytes = static_cast<double>(batch) * (args.prompt + args.decode / 2.0) *
                                kv_row * es * static_cast<double>(cfg.num_layers);
        // The embedding table is only gathered (batch rows), not read whole.
        const double embed_bytes =
            static_cast<double>(cfg.vocab_size) * static_cast<double>(cfg.hidden_size) * es;
        const double step_bytes =
            dense_bytes - embed_bytes +
            touched * expert_bytes * static_cast<double>(cfg.num_moe_layers()) + kv_bytes;
        const double bound_s = step_bytes / (copy_bw / 2.0);  // a read moves half the copy's bytes
        std::printf("  | HBM bound %.3f ms/step = %.0f tok/s, measured at %.0f%% of it",
                    bound_s * 1e3, batch / bound_s, 100.0 * bound_s / step_s);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const std::string next = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--models" && !next.empty()) {
      args.models = absl::StrSplit(next, ',');
      ++i;
    } else if (a == "--batches" && ParseList(next, &args.batches)) {
      ++i;
    } else if (a == "--prompt" && absl::SimpleAtoi(next, &args.prompt) && args.prompt > 0) {
      ++i;
    } else if (a == "--decode" && absl::SimpleAtoi(next, &args.decode) && args.decode > 0) {
      ++i;
    } else if (a == "--repeats" && absl::SimpleAtoi(next, &args.repeats) && args.repeats > 0) {
      ++i;
    } else if (a == "--root" && !next.empty()) {
      args.root = next;
      ++i;
    } else if (a == "--device" && (next == "cpu" || next == "cuda")) {
      args.device = next;
      ++i;
    } else if (a == "--dtype" && (next == "f32" || next == "bf16")) {
      args.dtype = next;
      ++i;
    } else if (a == "--graphs" && (next == "0" || next == "1")) {
      args.graphs = next == "1";
      ++i;
    } else {
      std::cerr << "usage: switchyard-engine-bench [--models a,b] [--batches 1,8] [--prompt N] "
                   "[--decode N] [--repeats N] [--root DIR] [--device cpu|cuda] [--dtype f32|bf16] "
                   "[--graphs 0|1]\n(bad argument: "
                << a << ")\n";
      return 2;
    }
  }
  sy::SetMinLogLevel(sy::LogLevel::kWarning);
  std::vector<std::string> cmd(argv, argv + argc);
  std::printf("command: %s\n", absl::StrJoin(cmd, " ").c_str());
  std::printf("prompt %d tokens, decode %d tokens per sequence\n", args.prompt, args.decode);
  return Run(args);
}
