#include "services/api/validate.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/sampler.h"

namespace sy::api {
namespace {

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", what));
}

absl::Status CheckTopN(const char* field, int32_t value, int32_t max_logprobs) {
  if (value < -1 || value > max_logprobs) {
    return FieldError(field, absl::StrCat("(", value, ") must be in [0, ", max_logprobs,
                                          "] (leave it unset for none)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateRequest(const engine::GenerationRequest& r, const Limits& limits) {
  if (r.prompt.empty()) return FieldError("input_ids", "must not be empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= limits.vocab_size) {
      return FieldError(absl::StrCat("input_ids[", i, "]"),
                        absl::StrCat("= ", r.prompt[i], " is outside the vocabulary [0, ",
                                     limits.vocab_size, ")"));
    }
  }
  const int64_t num_prompt = static_cast<int64_t>(r.prompt.size());
  if (num_prompt >= limits.max_context) {
    return FieldError("input_ids", absl::StrCat("(", num_prompt,
                                                " tokens) leaves no room for new tokens in the "
                                                "context limit of ",
                                                limits.max_context, " tokens"));
  }
  const engine::StoppingParams& st = r.stopping;
  if (st.max_new_tokens < 1) {
    return FieldError("stopping.max_new_tokens",
                      absl::StrCat("(", st.max_new_tokens, ") must be >= 1"));
  }
  if (st.max_new_tokens > limits.max_new_tokens_limit) {
    return FieldError("stopping.max_new_tokens",
                      absl::StrCat("(", st.max_new_tokens, ") exceeds the limit of ",
                                   limits.max_new_tokens_limit));
  }
  if (num_prompt + st.max_new_tokens > limits.max_context) {
    return FieldError(
        "stopping.max_new_tokens",
        absl::StrCat("(", st.max_new_tokens, ") + input_ids (", num_prompt,
                     " tokens) exceeds the context limit of ", limits.max_context, " tokens"));
  }
  if (st.min_new_tokens < 0 || st.min_new_tokens > st.max_new_tokens) {
    return FieldError("stopping.min_new_tokens",
                      absl::StrCat("(", st.min_new_tokens, ") must be in [0, max_new_tokens]"));
  }
  for (size_t i = 0; i < st.stop_token_ids.size(); ++i) {
    if (st.stop_token_ids[i] < 0 || st.stop_token_ids[i] >= limits.vocab_size) {
      return FieldError(absl::StrCat("stopping.stop_token_ids[", i, "]"),
                        absl::StrCat("= ", st.stop_token_ids[i], " is outside the vocabulary [0, ",
                                     limits.vocab_size, ")"));
    }
  }
  SY_RETURN_IF_ERROR(CheckTopN("logprobs", r.logprobs, limits.max_logprobs));
  SY_RETURN_IF_ERROR(CheckTopN("prompt_logprobs", r.prompt_logprobs, limits.max_logprobs));
  // The engine's own check; its messages already say "sampling.<field>".
  return engine::ValidateSamplingParams(r.sampling);
}

}  // namespace sy::api
