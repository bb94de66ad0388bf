// Router-side validation of a generation request against the served model's
// limits. No proto types: the messages name the public API's field paths
// (`input_ids[3]`, `stopping.max_new_tokens`, `sampling.top_p`, ...), so a
// client sees the field it sent. Pure functions; any thread.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "engine/engine.h"

namespace sy::api {

// What a request must respect. Filled from the model's config.json and the
// router's options.
struct Limits {
  int64_t vocab_size = 0;
  int64_t max_context = 0;  // prompt + max_new_tokens at most
  int64_t max_new_tokens_limit = 4096;
  int32_t max_logprobs = 20;  // largest top-N for logprobs / prompt_logprobs
};

// OK, or InvalidArgument naming the offending field, e.g.
// "input_ids[3] = 900 is outside the vocabulary [0, 512)".
absl::Status ValidateRequest(const engine::GenerationRequest& request, const Limits& limits);

}  // namespace sy::api
