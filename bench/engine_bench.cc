// CPU prefill and decode throughput of the single-process engine.
//
//   build/bin/switchyard-engine-bench [--models a,b] [--batches 1,8] [--prompt 128]
//       [--decode 32] [--repeats 3] [--root REPO_DIR]
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

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "engine/engine.h"
#include "engine/loader.h"

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
};

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
  for (const std::string& name : args.models) {
    ModelSpec spec{name, root + "/tests/data/goldens/" + name, "auto"};
    if (name == "qwen3_30b_a3b_2layers") {
      spec = {name, root + "/bench/configs/" + name, "dummy"};
    }
    sy::engine::ModelSource src{spec.dir, spec.load_format, 0};
    const auto t0 = Clock::now();
    auto runner = sy::engine::LoadModelRunner(src, sy::kernels::Context{});
    if (!runner.ok()) {
      std::cerr << name << ": " << runner.status() << "\n";
      return 1;
    }
    const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
    const int64_t vocab = (*runner)->config().vocab_size;
    int max_batch = 1;
    for (int b : args.batches) max_batch = std::max(max_batch, b);
    sy::engine::EngineOptions opts;
    opts.max_num_seqs = max_batch;
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
      std::printf(
          "%-24s batch %2d  prefill %8.1f tok/s (%8.1f ms)  decode %8.1f tok/s (%7.2f ms/step)"
          "  load %.1f s\n",
          name.c_str(), batch, batch * args.prompt / m.prefill_s, m.prefill_s * 1e3,
          batch * m.steps / m.decode_s, m.decode_s * 1e3 / std::max(m.steps, 1), load_s);
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
    } else {
      std::cerr << "usage: switchyard-engine-bench [--models a,b] [--batches 1,8] [--prompt N] "
                   "[--decode N] [--repeats N] [--root DIR]\n(bad argument: "
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
