#include "tools/generate_output.h"

namespace sy::tools {

void GenerationResult::Apply(const engine::RequestUpdate& u) {
  tokens.insert(tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
  logprobs.insert(logprobs.end(), u.new_logprobs.begin(), u.new_logprobs.end());
  if (u.prompt_logprobs.has_value()) prompt_logprobs = u.prompt_logprobs;
  if (u.finish != engine::FinishReason::kNone) {
    finish = u.finish;
    error = u.error;
    timings = u.timings;
  }
}

nlohmann::ordered_json LogprobJson(const engine::TokenLogprob& lp) {
  nlohmann::ordered_json top = nlohmann::ordered_json::array();
  for (const auto& t : lp.top) top.push_back({{"token", t.token}, {"logprob", t.logprob}});
  return {{"token", lp.token}, {"logprob", lp.logprob}, {"top", top}};
}

nlohmann::ordered_json ResultJson(const GenerationResult& r,
                                  const nlohmann::ordered_json& extra_timings) {
  nlohmann::ordered_json out;
  out["tokens"] = r.tokens;
  out["finish_reason"] = std::string(engine::FinishReasonName(r.finish));
  if (!r.error.empty()) out["error"] = r.error;
  if (r.want_logprobs) {
    nlohmann::ordered_json lps = nlohmann::ordered_json::array();
    for (const auto& lp : r.logprobs) lps.push_back(LogprobJson(lp));
    out["logprobs"] = lps;
  } else {
    out["logprobs"] = nullptr;
  }
  if (r.prompt_logprobs.has_value()) {
    nlohmann::ordered_json pls = nlohmann::ordered_json::array();
    for (const auto& lp : *r.prompt_logprobs) {
      pls.push_back(lp.has_value() ? LogprobJson(*lp) : nlohmann::ordered_json(nullptr));
    }
    out["prompt_logprobs"] = pls;
  } else {
    out["prompt_logprobs"] = nullptr;
  }
  nlohmann::ordered_json timings =
      extra_timings.is_object() ? extra_timings : nlohmann::ordered_json::object();
  if (r.timings.has_value()) {
    timings["queue_ms"] = r.timings->queue_ms;
    timings["ttft_ms"] = r.timings->ttft_ms;
    timings["total_ms"] = r.timings->total_ms;
    timings["prompt_tokens"] = r.timings->prompt_tokens;
    timings["output_tokens"] = r.timings->output_tokens;
  }
  out["timings"] = timings;
  return out;
}

}  // namespace sy::tools
