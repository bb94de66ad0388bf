// The JSON document `switchyard-generate` prints (and the cluster client
// prints the same): tokens, finish reason, logprobs, prompt logprobs, timings.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "nlohmann/json.hpp"

namespace sy::tools {

// Everything one finished generation produced, gathered from its updates.
struct GenerationResult {
  std::vector<int32_t> tokens;
  engine::FinishReason finish = engine::FinishReason::kNone;
  std::string error;
  bool want_logprobs = false;
  std::vector<engine::TokenLogprob> logprobs;
  std::optional<std::vector<std::optional<engine::TokenLogprob>>> prompt_logprobs;
  std::optional<engine::RequestTimings> timings;

  // Folds one engine update into the result.
  void Apply(const engine::RequestUpdate& update);
};

nlohmann::ordered_json LogprobJson(const engine::TokenLogprob& lp);
// {"tokens", "finish_reason", "logprobs", "prompt_logprobs", "timings"}; the
// logprob fields are null when they were not requested.
nlohmann::ordered_json ResultJson(const GenerationResult& result,
                                  const nlohmann::ordered_json& extra_timings);

}  // namespace sy::tools
