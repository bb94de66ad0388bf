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
#include "absl/flags/usage_config.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "engine/engine.h"
#include "engine/loader.h"
#include "services/cluster/process.h"
#include "tools/generate_output.h"

ABSL_FLAG(std::string, model, "", "Model directory: config.json and *.safetensors (required)");
ABSL_FLAG(std::string, load_format, "auto",
          "auto: read the checkpoint; dummy: random weights of the config's shapes");
ABSL_FLAG(uint64_t, dummy_seed, 0, "Seed for --load-format dummy weights");
ABSL_FLAG(std::string, prompt_ids, "", "Comma-separated prompt token ids (required)");
ABSL_FLAG(int32_t, max_new_tokens, 16, "Stop after this many generated tokens");
ABSL_FLAG(int32_t, min_new_tokens, 0, "Do not stop on EOS/stop tokens before this many tokens");
ABSL_FLAG(std::string, stop_token_ids, "", "Comma-separated extra stop token ids");
ABSL_FLAG(bool, ignore_eos, false, "Do not stop on the model's EOS token");
ABSL_FLAG(double, temperature, -1.0,
          "Sampling temperature; 0 = greedy. Default: 1 when --top-k, --top-p, --min-p or "
          "--seed is given, else 0 (greedy)");
ABSL_FLAG(int32_t, top_k, 0, "Keep the k most likely tokens; 0 = off");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling mass; 1 = off");
ABSL_FLAG(double, min_p, 0.0, "Drop tokens below min_p x the top probability; 0 = off");
ABSL_FLAG(double, repetition_penalty, 1.0, "Penalty for tokens already in prompt/output; 1 = off");
ABSL_FLAG(double, presence_penalty, 0.0, "Subtracted from logits of tokens already generated");
ABSL_FLAG(double, frequency_penalty, 0.0, "Subtracted per occurrence in the output");
ABSL_FLAG(int64_t, seed, -1, "Sampling seed (reproducible per request); -1 = random");
ABSL_FLAG(int32_t, logprobs, -1, "Report logprob of each chosen token plus top-N; -1 = off");
ABSL_FLAG(int32_t, prompt_logprobs, -1, "Report logprobs of prompt tokens plus top-N; -1 = off");
ABSL_FLAG(int64_t, max_model_len, 0, "Context limit in tokens; 0 = max_position_embeddings");
ABSL_FLAG(int64_t, kv_block_size, 16, "Tokens per KV cache block");
ABSL_FLAG(int64_t, kv_blocks, 0, "KV cache blocks; 0 = enough for the context limit");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

bool ParseIds(const std::string& text, const char* flag, std::vector<int32_t>* out) {
  out->clear();
  if (text.empty()) return true;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      std::cerr << "switchyard-generate: --" << flag << ": '" << part << "' is not a token id\n";
      return false;
    }
    out->push_back(v);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // --help lists every flag (abseil's default filters by file name).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view) { return true; };
  usage.contains_helpshort_flags = [](absl::string_view) { return true; };
  absl::SetFlagsUsageConfig(usage);
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
  if (!ParseIds(absl::GetFlag(FLAGS_prompt_ids), "prompt_ids", &req.prompt) ||
      !ParseIds(absl::GetFlag(FLAGS_stop_token_ids), "stop_token_ids",
                &req.stopping.stop_token_ids)) {
    return 2;
  }
  if (req.prompt.empty()) {
    std::cerr << "switchyard-generate: --prompt-ids is required\n";
    return 2;
  }
  req.stopping.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  req.stopping.min_new_tokens = absl::GetFlag(FLAGS_min_new_tokens);
  req.stopping.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  auto& sp = req.sampling;
  const double temperature = absl::GetFlag(FLAGS_temperature);
  if (temperature == -1.0) {
    // Greedy unless sampling flags are given.
    const bool sampling = absl::GetFlag(FLAGS_top_k) > 0 || absl::GetFlag(FLAGS_top_p) < 1.0 ||
                          absl::GetFlag(FLAGS_min_p) > 0.0 || absl::GetFlag(FLAGS_seed) >= 0;
    sp.temperature = sampling ? 1.0f : 0.0f;
  } else {
    sp.temperature = static_cast<float>(temperature);
  }
  sp.top_k = absl::GetFlag(FLAGS_top_k);
  sp.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  sp.min_p = static_cast<float>(absl::GetFlag(FLAGS_min_p));
  sp.repetition_penalty = static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty));
  sp.presence_penalty = static_cast<float>(absl::GetFlag(FLAGS_presence_penalty));
  sp.frequency_penalty = static_cast<float>(absl::GetFlag(FLAGS_frequency_penalty));
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    sp.has_seed = true;
    sp.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  }
  req.logprobs = absl::GetFlag(FLAGS_logprobs);
  req.prompt_logprobs = absl::GetFlag(FLAGS_prompt_logprobs);

  using Clock = std::chrono::steady_clock;
  const auto t_load = Clock::now();
  sy::engine::ModelSource source;
  source.dir = absl::GetFlag(FLAGS_model);
  source.load_format = absl::GetFlag(FLAGS_load_format);
  source.dummy_seed = absl::GetFlag(FLAGS_dummy_seed);
  auto runner = sy::engine::LoadModelRunner(source, sy::kernels::Context{});
  if (!runner.ok()) {
    std::cerr << "switchyard-generate: " << runner.status().message() << "\n";
    return 1;
  }
  sy::engine::EngineOptions opts;
  opts.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  opts.kv.block_size = absl::GetFlag(FLAGS_kv_block_size);
  opts.kv.num_blocks = absl::GetFlag(FLAGS_kv_blocks);
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
