#include "engine/sampler.h"

#include <cmath>
#include <map>

#include "gtest/gtest.h"

namespace sy::engine {
namespace {

std::vector<int32_t> kEmpty;

int32_t Draw(const std::vector<float>& logits, const SamplingParams& p, std::mt19937_64& rng,
             const std::vector<int32_t>& output = kEmpty,
             const std::vector<int32_t>& masked = kEmpty) {
  std::vector<float> scratch;
  return Sampler::Sample(logits.data(), static_cast<int64_t>(logits.size()), p, kEmpty, output,
                         masked, rng, &scratch);
}

std::map<int32_t, double> Frequencies(const std::vector<float>& logits, const SamplingParams& p,
                                      int n) {
  std::mt19937_64 rng(42);
  std::map<int32_t, double> f;
  for (int i = 0; i < n; ++i) f[Draw(logits, p, rng)] += 1.0 / n;
  return f;
}

TEST(SamplerTest, GreedyPicksArgmaxAndRespectsMask) {
  std::mt19937_64 rng(1);
  SamplingParams p;
  EXPECT_EQ(Draw({0.1f, 3.0f, 2.0f}, p, rng), 1);
  EXPECT_EQ(Draw({0.1f, 3.0f, 2.0f}, p, rng, kEmpty, {1}), 2);
}

TEST(SamplerTest, TemperatureSamplingFollowsSoftmax) {
  SamplingParams p;
  p.temperature = 1.0f;
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // probabilities 1/4, 3/4
  auto f = Frequencies(logits, p, 20000);
  EXPECT_NEAR(f[1], 0.75, 0.02);
  p.temperature = 0.5f;  // squares the odds: 1/10, 9/10
  f = Frequencies(logits, p, 20000);
  EXPECT_NEAR(f[1], 0.9, 0.02);
}

TEST(SamplerTest, TopKTopPMinPTruncate) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  auto f = Frequencies(logits, p, 20000);
  EXPECT_EQ(f.count(2) + f.count(3), 0u);
  EXPECT_NEAR(f[0], 0.5 / 0.8, 0.02);
  p.top_k = 0;
  p.top_p = 0.85f;  // keeps 0.5 + 0.3 + 0.15
  f = Frequencies(logits, p, 20000);
  EXPECT_EQ(f.count(3), 0u);
  EXPECT_GT(f[2], 0.1);
  p.top_p = 1.0f;
  p.min_p = 0.5f;  // keeps tokens with p >= 0.25
  f = Frequencies(logits, p, 20000);
  EXPECT_EQ(f.count(2) + f.count(3), 0u);
}

TEST(SamplerTest, PenaltiesChangeTheGreedyChoice) {
  std::mt19937_64 rng(1);
  SamplingParams p;
  const std::vector<float> logits = {2.0f, 1.9f, -1.0f};
  p.repetition_penalty = 1.2f;  // 2.0 / 1.2 < 1.9
  EXPECT_EQ(Draw(logits, p, rng, {0}), 1);
  p.repetition_penalty = 1.0f;
  p.presence_penalty = 0.2f;
  EXPECT_EQ(Draw(logits, p, rng, {0}), 1);
  p.presence_penalty = 0.0f;
  p.frequency_penalty = 0.04f;  // two occurrences: 2.0 - 0.08 < 1.9? no: 1.92 > 1.9
  EXPECT_EQ(Draw(logits, p, rng, {0, 0}), 0);
  EXPECT_EQ(Draw(logits, p, rng, {0, 0, 0}), 1);  // 1.88 < 1.9
  // Repetition penalty makes a negative logit more negative.
  p.frequency_penalty = 0.0f;
  p.repetition_penalty = 2.0f;
  const std::vector<float> neg = {-1.0f, -1.5f};
  EXPECT_EQ(Draw(neg, p, rng, {0}), 1);
}

TEST(SamplerTest, LogprobsAreLogSoftmaxOfRawLogits) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, 0.5f};
  double z = 0;
  for (float l : logits) z += std::exp(l);
  TokenLogprob lp = ComputeLogprob(logits.data(), 4, 1, 2);
  EXPECT_EQ(lp.token, 1);
  EXPECT_NEAR(lp.logprob, 2.0 - std::log(z), 1e-6);
  ASSERT_EQ(lp.top.size(), 2u);
  EXPECT_EQ(lp.top[0].token, 2);
  EXPECT_EQ(lp.top[1].token, 1);
  EXPECT_NEAR(lp.top[0].logprob, 3.0 - std::log(z), 1e-6);
  EXPECT_TRUE(ComputeLogprob(logits.data(), 4, 0, 0).top.empty());
}

TEST(SamplerTest, ValidationNamesField) {
  SamplingParams p;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
  p.top_p = 1.5f;
  EXPECT_NE(ValidateSamplingParams(p).message().find("sampling.top_p"), std::string::npos);
  p = SamplingParams{};
  p.temperature = NAN;
  EXPECT_NE(ValidateSamplingParams(p).message().find("sampling.temperature"), std::string::npos);
}

}  // namespace
}  // namespace sy::engine
