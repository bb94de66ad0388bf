// Token selection and log-probabilities for one sequence at a time.
//
// Order of logit processing (as common serving systems do): repetition
// penalty (prompt + output tokens), presence and frequency penalties (output
// tokens), stop-token masking while below min_new_tokens, then greedy argmax
// when temperature == 0, else temperature, top-k, top-p, min-p and a draw from
// the request's own RNG. Reported logprobs are those of the model's raw
// distribution (log-softmax of the unprocessed logits), so they do not depend
// on sampling settings.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sy::engine {

struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy
  int32_t top_k = 0;                // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off; >1 discourages repeats
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  bool has_seed = false;
  uint64_t seed = 0;
};

// Checks ranges; InvalidArgument naming the field.
absl::Status ValidateSamplingParams(const SamplingParams& p);

struct TopLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<TopLogprob> top;  // highest first
};

// log_softmax(logits)[token] plus the `top_n` most likely tokens.
TokenLogprob ComputeLogprob(const float* logits, int64_t vocab, int32_t token, int32_t top_n);

class Sampler {
 public:
  // Picks the next token. `prompt` and `output` are the sequence's tokens so
  // far; tokens in `masked` (stop tokens below min_new_tokens) are excluded.
  // `scratch` avoids allocation per call.
  static int32_t Sample(const float* logits, int64_t vocab, const SamplingParams& params,
                        const std::vector<int32_t>& prompt, const std::vector<int32_t>& output,
                        const std::vector<int32_t>& masked, std::mt19937_64& rng,
                        std::vector<float>* scratch);
};

}  // namespace sy::engine
