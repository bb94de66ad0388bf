#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"

namespace sy::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kMinTemperature = 1e-5f;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("sampling.", field, " ", what));
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f) {
    return FieldError("temperature", "must be a finite number >= 0");
  }
  if (p.top_k < 0) return FieldError("top_k", "must be >= 0 (0 disables)");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return FieldError("top_p", "must be in (0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return FieldError("min_p", "must be in [0, 1]");
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0.0f) {
    return FieldError("repetition_penalty", "must be > 0");
  }
  if (!std::isfinite(p.presence_penalty) || std::fabs(p.presence_penalty) > 2.0f) {
    return FieldError("presence_penalty", "must be in [-2, 2]");
  }
  if (!std::isfinite(p.frequency_penalty) || std::fabs(p.frequency_penalty) > 2.0f) {
    return FieldError("frequency_penalty", "must be in [-2, 2]");
  }
  return absl::OkStatus();
}

TokenLogprob ComputeLogprob(const float* logits, int64_t vocab, int32_t token, int32_t top_n) {
  float max_logit = kNegInf;
  for (int64_t i = 0; i < vocab; ++i) max_logit = std::max(max_logit, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - max_logit));
  const float log_z = max_logit + static_cast<float>(std::log(sum));
  TokenLogprob out;
  out.token = token;
  out.logprob = logits[token] - log_z;
  if (top_n > 0) {
    const int64_t n = std::min<int64_t>(top_n, vocab);
    std::vector<int32_t> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    out.top.reserve(n);
    for (int64_t i = 0; i < n; ++i) out.top.push_back({idx[i], logits[idx[i]] - log_z});
  }
  return out;
}

int32_t Sampler::Sample(const float* logits, int64_t vocab, const SamplingParams& p,
                        const std::vector<int32_t>& prompt, const std::vector<int32_t>& output,
                        const std::vector<int32_t>& masked, std::mt19937_64& rng,
                        std::vector<float>* scratch) {
  std::vector<float>& l = *scratch;
  l.assign(logits, logits + vocab);
  if (p.repetition_penalty != 1.0f) {
    auto penalize = [&](int32_t t) {
      // Applied once per distinct token; mark by sign-preserving division.
      l[t] = logits[t] > 0 ? logits[t] / p.repetition_penalty : logits[t] * p.repetition_penalty;
    };
    for (int32_t t : prompt) penalize(t);
    for (int32_t t : output) penalize(t);
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int32_t> counts;
    for (int32_t t : output) ++counts[t];
    for (const auto& [t, c] : counts) {
      l[t] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(c);
    }
  }
  for (int32_t t : masked) l[t] = kNegInf;

  // Temperatures this small are greedy in all but name (and 1/T overflows).
  if (p.temperature < kMinTemperature) {
    int32_t best = 0;
    for (int64_t i = 1; i < vocab; ++i) {
      if (l[i] > l[best]) best = static_cast<int32_t>(i);
    }
    return best;
  }
  // Candidates sorted by processed logit, highest first.
  std::vector<int32_t> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  int64_t n = vocab;
  if (p.top_k > 0 && p.top_k < vocab) n = p.top_k;
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(),
                    [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  idx.resize(n);
  const double inv_t = 1.0 / static_cast<double>(p.temperature);
  const double top = l[idx[0]];
  std::vector<double> probs(n);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    probs[i] = std::exp((static_cast<double>(l[idx[i]]) - top) * inv_t);
    total += probs[i];
  }
  for (double& q : probs) q /= total;
  // top-p: smallest prefix whose mass reaches top_p (always keeps one).
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    int64_t keep = 0;
    while (keep < n) {
      cum += probs[keep++];
      if (cum >= p.top_p) break;
    }
    n = keep;
  }
  // min-p: drop tokens below min_p times the most likely one.
  if (p.min_p > 0.0f) {
    const double floor = p.min_p * probs[0];
    int64_t keep = 1;
    while (keep < n && probs[keep] >= floor) ++keep;
    n = keep;
  }
  double mass = 0.0;
  for (int64_t i = 0; i < n; ++i) mass += probs[i];
  const double u = std::uniform_real_distribution<double>(0.0, mass)(rng);
  double cum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cum += probs[i];
    if (u < cum) return idx[i];
  }
  return idx[n - 1];
}

}  // namespace sy::engine
