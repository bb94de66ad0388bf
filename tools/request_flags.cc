#include "tools/request_flags.h"

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

ABSL_FLAG(std::string, prompt_ids, "", "Comma-separated prompt token ids (required)");
ABSL_FLAG(int32_t, max_new_tokens, 16, "Stop after this many generated tokens");
ABSL_FLAG(int32_t, min_new_tokens, 0, "Do not stop on EOS/stop tokens before this many tokens");
ABSL_FLAG(std::string, stop_token_ids, "", "Comma-separated extra stop token ids");
ABSL_FLAG(bool, ignore_eos, false, "Do not stop on the model's EOS token");
ABSL_FLAG(std::string, temperature, "",
          "Sampling temperature >= 0; 0 = greedy. Default: 1 when --top-k, --top-p, --min-p or "
          "--seed is given, else 0 (greedy)");
ABSL_FLAG(int32_t, top_k, 0, "Keep the k most likely tokens; 0 = off");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling mass; 1 = off");
ABSL_FLAG(double, min_p, 0.0, "Drop tokens below min_p x the top probability; 0 = off");
ABSL_FLAG(double, repetition_penalty, 1.0, "Penalty for tokens already in prompt/output; 1 = off");
ABSL_FLAG(double, presence_penalty, 0.0, "Subtracted from logits of tokens already generated");
ABSL_FLAG(double, frequency_penalty, 0.0, "Subtracted per occurrence in the output");
ABSL_FLAG(std::string, seed, "", "Sampling seed >= 0 (reproducible per request); default: random");
ABSL_FLAG(int32_t, logprobs, -1, "Report logprob of each chosen token plus top-N; -1 = off");
ABSL_FLAG(int32_t, prompt_logprobs, -1, "Report logprobs of prompt tokens plus top-N; -1 = off");

namespace sy::tools {
namespace {

bool ParseIds(const char* program, const std::string& text, const char* flag,
              std::vector<int32_t>* out) {
  out->clear();
  if (text.empty()) return true;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      std::cerr << program << ": --" << flag << ": '" << std::string(part)
                << "' is not a token id\n";
      return false;
    }
    out->push_back(v);
  }
  return true;
}

}  // namespace

bool RequestFromFlags(const char* program, engine::GenerationRequest* req) {
  if (!ParseIds(program, absl::GetFlag(FLAGS_prompt_ids), "prompt-ids", &req->prompt) ||
      !ParseIds(program, absl::GetFlag(FLAGS_stop_token_ids), "stop-token-ids",
                &req->stopping.stop_token_ids)) {
    return false;
  }
  if (req->prompt.empty()) {
    std::cerr << program << ": --prompt-ids is required\n";
    return false;
  }
  req->stopping.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  req->stopping.min_new_tokens = absl::GetFlag(FLAGS_min_new_tokens);
  req->stopping.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  engine::SamplingParams& sp = req->sampling;
  // Empty means "not given"; a given value must be a valid one (no value is
  // taken for "unset").
  const std::string temperature_text = absl::GetFlag(FLAGS_temperature);
  const std::string seed_text = absl::GetFlag(FLAGS_seed);
  double temperature = 0.0;
  if (!temperature_text.empty() &&
      (!absl::SimpleAtod(temperature_text, &temperature) || !(temperature >= 0.0))) {
    std::cerr << program << ": --temperature must be a number >= 0 (0 = greedy), not '"
              << temperature_text << "'\n";
    return false;
  }
  int64_t seed = 0;
  if (!seed_text.empty() && (!absl::SimpleAtoi(seed_text, &seed) || seed < 0)) {
    std::cerr << program << ": --seed must be an integer >= 0, not '" << seed_text << "'\n";
    return false;
  }
  if (temperature_text.empty()) {
    const bool sampling = absl::GetFlag(FLAGS_top_k) > 0 || absl::GetFlag(FLAGS_top_p) < 1.0 ||
                          absl::GetFlag(FLAGS_min_p) > 0.0 || !seed_text.empty();
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
  if (!seed_text.empty()) {
    sp.has_seed = true;
    sp.seed = static_cast<uint64_t>(seed);
  }
  req->logprobs = absl::GetFlag(FLAGS_logprobs);
  req->prompt_logprobs = absl::GetFlag(FLAGS_prompt_logprobs);
  if (req->logprobs < -1 || req->prompt_logprobs < -1) {
    std::cerr << program << ": --logprobs and --prompt-logprobs must be >= -1\n";
    return false;
  }
  return true;
}

}  // namespace sy::tools
