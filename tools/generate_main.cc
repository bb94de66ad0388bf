// switchyard-generate: loads a checkpoint directory and generates from token
// ids with the single-process engine, printing one JSON object on stdout.
// Progress and logs go to stderr.
//
//   switchyard-generate --model DIR --prompt-ids 1,7,42 --max-new-tokens 24
//       --logprobs 5 --prompt-logprobs 5
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "engine/engine.h"
#include "engine/loader.h"
#include "kernels/device.h"
#include "services/cluster/process.h"
#include "tools/generate_output.h"
#include "tools/request_flags.h"

ABSL_FLAG(std::string, model, "", "Model directory: config.json and *.safetensors (required)");
ABSL_FLAG(std::string, load_format, "auto",
          "auto: read the checkpoint; dummy: random weights of the config's shapes");
ABSL_FLAG(uint64_t, dummy_seed, 0, "Seed for --load-format dummy weights");
ABSL_FLAG(int64_t, max_model_len, 0, "Context limit in tokens; 0 = max_position_embeddings");
ABSL_FLAG(int64_t, kv_block_size, 16, "Tokens per KV cache block");
ABSL_FLAG(int64_t, kv_blocks, 0, "KV cache blocks; 0 = enough for the context limit");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");
ABSL_FLAG(std::string, device, "cpu", "cpu, or cuda (GPU 0 of this build's CUDA backend)");
ABSL_FLAG(std::string, dtype, "",
          "Weights, activations and KV cache: f32 or bf16; default f32 on the CPU, bf16 on cuda");
ABSL_FLAG(double, gpu_memory_fraction, 0.5,
          "cuda: fraction of the GPU memory free after loading the weights that the KV cache "
          "takes when --kv-blocks is 0");
ABSL_FLAG(bool, cuda_graphs, true, "cuda: replay decode steps as CUDA graphs");

int main(int argc, char** argv) {
  sy::cluster::ListAllFlagsInHelp();
  absl::SetProgramUsageMessage(
      "Generates from token ids with the single-process Switchyard engine.\n"
      "  switchyard-generate --model DIR --prompt-ids 1,7,42 --max-new-tokens 24");
  std::vector<std::string> arg_storage;
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &arg_storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  sy::LogLevel level;
  if (!sy::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "switchyard-generate: --log_level must be debug, info, warning or error\n";
    return 2;
  }
  sy::SetMinLogLevel(level);
  if (absl::GetFlag(FLAGS_model).empty()) {
    std::cerr << "switchyard-generate: --model is required\n";
    return 2;
  }
  sy::engine::GenerationRequest req;
  req.id = "generate-0";
  if (!sy::tools::RequestFromFlags("switchyard-generate", &req)) return 2;

  using Clock = std::chrono::steady_clock;
  const auto t_load = Clock::now();
  sy::engine::ModelSource source;
  source.dir = absl::GetFlag(FLAGS_model);
  source.load_format = absl::GetFlag(FLAGS_load_format);
  source.dummy_seed = absl::GetFlag(FLAGS_dummy_seed);
  const std::string device = absl::GetFlag(FLAGS_device);
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  if (device != "cpu" && device != "cuda") {
    std::cerr << "switchyard-generate: --device must be cpu or cuda (got '" << device << "')\n";
    return 2;
  }
  if (!dtype_name.empty() && dtype_name != "f32" && dtype_name != "bf16") {
    std::cerr << "switchyard-generate: --dtype must be f32 or bf16 (got '" << dtype_name << "')\n";
    return 2;
  }
  const double fraction = absl::GetFlag(FLAGS_gpu_memory_fraction);
  if (!(fraction > 0 && fraction <= 0.98)) {
    std::cerr << "switchyard-generate: --gpu-memory-fraction must be in (0, 0.98]\n";
    return 2;
  }
  auto dc = sy::kernels::DeviceContext::Create(device == "cuda" ? sy::kernels::Device::kCuda
                                                                : sy::kernels::Device::kCpu);
  if (!dc.ok()) {
    std::cerr << "switchyard-generate: --device " << device << ": " << dc.status().message()
              << "\n";
    return 1;
  }
  sy::engine::RunnerOptions ropts;
  ropts.ctx = (*dc)->ctx();
  ropts.dtype = dtype_name == "f32" || (dtype_name.empty() && device == "cpu")
                    ? sy::kernels::DType::kF32
                    : sy::kernels::DType::kBF16;
  ropts.max_graph_batch = absl::GetFlag(FLAGS_cuda_graphs) ? 512 : 0;
  auto runner = sy::engine::LoadModelRunner(source, ropts);
  if (!runner.ok()) {
    std::cerr << "switchyard-generate: " << runner.status().message() << "\n";
    return 1;
  }
  sy::engine::EngineOptions opts;
  opts.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  opts.kv.block_size = absl::GetFlag(FLAGS_kv_block_size);
  opts.kv.num_blocks = absl::GetFlag(FLAGS_kv_blocks);
  if (device == "cuda") opts.kv.memory_fraction = fraction;
  opts.max_num_seqs = 1;
  auto engine = sy::engine::Engine::Create(*std::move(runner), opts);
  if (!engine.ok()) {
    std::cerr << "switchyard-generate: " << engine.status().message() << "\n";
    return 1;
  }
  const double load_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_load).count();
  if (absl::Status st = (*engine)->Add(req); !st.ok()) {
    std::cerr << "switchyard-generate: invalid request: " << st.message() << "\n";
    return 2;
  }
  sy::tools::GenerationResult result;
  result.want_logprobs = req.logprobs >= 0;
  const auto t_gen = Clock::now();
  double prefill_ms = 0;
  while ((*engine)->HasWork()) {
    auto updates = (*engine)->Step();
    if (!updates.ok()) {
      std::cerr << "switchyard-generate: " << updates.status().message() << "\n";
      return 1;
    }
    if (prefill_ms == 0) {
      prefill_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_gen).count();
    }
    for (const auto& u : *updates) result.Apply(u);
  }
  const double gen_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_gen).count();
  const double decode_ms = gen_ms - prefill_ms;
  const int64_t n_decode = static_cast<int64_t>(result.tokens.size()) - 1;
  nlohmann::ordered_json timings = {
      {"load_ms", load_ms},
      {"prefill_ms", prefill_ms},
      {"decode_ms", decode_ms},
      {"prefill_tokens_per_s", prefill_ms > 0 ? 1000.0 * req.prompt.size() / prefill_ms : 0.0},
      {"decode_tokens_per_s", decode_ms > 0 && n_decode > 0 ? 1000.0 * n_decode / decode_ms : 0.0},
  };
  std::cout << sy::tools::ResultJson(result, timings).dump() << std::endl;
  return result.finish == sy::engine::FinishReason::kError ? 1 : 0;
}
