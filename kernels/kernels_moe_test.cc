// MoeRoute: hand-computed cases that pin the Hugging Face transformers
// semantics (grouped selection with 0.0 for dropped groups, weights from the
// raw scores, renormalization, scaling, order) and random cases against a
// double-precision reference for every method/score/bias/renormalize mix.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "kernels/kernels_test_util.h"

namespace sy::kernels {
namespace {

using ::sy::kernels::testing::RandomVector;

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed Route(const std::vector<float>& logits, const RouterParams& p) {
  const auto num_tokens = static_cast<int64_t>(logits.size()) / p.num_experts;
  Routed r{std::vector<int32_t>(static_cast<size_t>(num_tokens * p.top_k), -7),
           std::vector<float>(static_cast<size_t>(num_tokens * p.top_k), -7.0f)};
  const absl::Status status =
      MoeRoute(Context{}, logits.data(), num_tokens, p, r.ids.data(), r.weights.data());
  EXPECT_TRUE(status.ok()) << status;
  return r;
}

// Reference router in double, written from the transformers code paths.
void NaiveRoute(const float* logits, const RouterParams& p, int32_t* ids, double* weights) {
  const int64_t n = p.num_experts;
  std::vector<double> scores(static_cast<size_t>(n));
  if (p.score == ScoreFunction::kSoftmax) {
    const double mx = *std::max_element(logits, logits + n);
    double sum = 0.0;
    for (int64_t e = 0; e < n; ++e) sum += (scores[e] = std::exp(logits[e] - mx));
    for (double& s : scores) s /= sum;
  } else {
    for (int64_t e = 0; e < n; ++e)
      scores[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits[e])));
  }
  std::vector<double> choice = scores;
  if (p.correction_bias != nullptr) {
    for (int64_t e = 0; e < n; ++e) choice[e] += p.correction_bias[e];
  }
  if (p.method != TopkMethod::kGreedy) {
    const int64_t size = n / p.num_groups;
    std::vector<std::pair<double, int64_t>> groups;
    for (int64_t g = 0; g < p.num_groups; ++g) {
      std::vector<double> members(choice.begin() + g * size, choice.begin() + (g + 1) * size);
      std::sort(members.rbegin(), members.rend());
      const double score =
          p.method == TopkMethod::kGroupLimitedGreedy ? members[0] : members[0] + members[1];
      groups.emplace_back(-score, g);  // ascending sort = descending score, low index first
    }
    std::sort(groups.begin(), groups.end());
    std::vector<bool> kept(static_cast<size_t>(p.num_groups), false);
    for (int64_t i = 0; i < p.topk_groups; ++i) kept[groups[i].second] = true;
    for (int64_t e = 0; e < n; ++e) {
      if (!kept[e / size]) choice[e] = 0.0;
    }
  }
  std::vector<std::pair<double, int64_t>> ranked;
  for (int64_t e = 0; e < n; ++e) ranked.emplace_back(-choice[e], e);
  std::sort(ranked.begin(), ranked.end());
  double sum = 0.0;
  for (int64_t i = 0; i < p.top_k; ++i) {
    ids[i] = static_cast<int32_t>(ranked[i].second);
    weights[i] = scores[ranked[i].second];
    sum += weights[i];
  }
  for (int64_t i = 0; i < p.top_k; ++i) {
    if (p.renormalize) weights[i] /= sum + 1e-20;
    weights[i] *= p.scaling;
  }
}

TEST(MoeRouteTest, GreedySoftmaxHandComputed) {
  // softmax(log(1..4)) = {0.1, 0.2, 0.3, 0.4}.
  const std::vector<float> logits = {std::log(1.0f), std::log(2.0f), std::log(3.0f),
                                     std::log(4.0f)};
  RouterParams p;
  p.num_experts = 4;
  p.top_k = 2;
  Routed r = Route(logits, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{3, 2}));
  EXPECT_NEAR(r.weights[0], 0.4f, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.3f, 1e-6);

  p.renormalize = true;
  p.scaling = 2.0f;
  r = Route(logits, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{3, 2}));
  EXPECT_NEAR(r.weights[0], 8.0 / 7.0, 1e-6);
  EXPECT_NEAR(r.weights[1], 6.0 / 7.0, 1e-6);
}

TEST(MoeRouteTest, GreedyTiesBreakTowardLowerIndex) {
  const std::vector<float> logits = {0.5f, 1.0f, 0.5f, 1.0f, 0.5f};
  RouterParams p;
  p.num_experts = 5;
  p.top_k = 4;
  p.score = ScoreFunction::kSigmoid;
  EXPECT_EQ(Route(logits, p).ids, (std::vector<int32_t>{1, 3, 0, 2}));
}

// 8 experts in 4 groups of 2, sigmoid scores {0.5, 0.25, 0.75, 0.5, 0.25,
// 0.75, 0.5, 0.5} and a bias that pushes groups 1-3 below zero:
//   choice = {0.75, 0.5 | -0.125, -0.0625 | -0.5, -0.25 | -0.5, -0.75}.
// Groups 0 and 1 are kept under both group rules; the experts of groups 2 and
// 3 get choice 0.0, which beats the negative kept experts 2 and 3. So the
// third pick is expert 4 (lowest index among the zeros), weighted with its
// raw score 0.25.
TEST(MoeRouteTest, DroppedGroupsScoreZeroAndCanBeatNegativeKeptExperts) {
  const float l3 = std::log(3.0f);
  const std::vector<float> logits = {0.0f, -l3, l3, 0.0f, -l3, l3, 0.0f, 0.0f};
  const std::vector<float> bias = {0.25f, 0.25f, -0.875f, -0.5625f, -0.75f, -1.0f, -1.0f, -1.25f};
  for (const TopkMethod method : {TopkMethod::kGroupLimitedGreedy, TopkMethod::kNoAuxTc}) {
    SCOPED_TRACE(static_cast<int>(method));
    RouterParams p;
    p.num_experts = 8;
    p.top_k = 3;
    p.score = ScoreFunction::kSigmoid;
    p.method = method;
    p.num_groups = 4;
    p.topk_groups = 2;
    p.correction_bias = bias.data();
    Routed r = Route(logits, p);
    EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 4}));
    EXPECT_NEAR(r.weights[0], 0.5f, 1e-6);
    EXPECT_NEAR(r.weights[1], 0.25f, 1e-6);
    EXPECT_NEAR(r.weights[2], 0.25f, 1e-6);

    p.top_k = 4;
    p.renormalize = true;
    p.scaling = 2.5f;
    r = Route(logits, p);
    EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 4, 5}));
    // Raw scores {0.5, 0.25, 0.25, 0.75} sum to 1.75.
    EXPECT_NEAR(r.weights[0], 2.5 * 0.5 / 1.75, 1e-6);
    EXPECT_NEAR(r.weights[1], 2.5 * 0.25 / 1.75, 1e-6);
    EXPECT_NEAR(r.weights[2], 2.5 * 0.25 / 1.75, 1e-6);
    EXPECT_NEAR(r.weights[3], 2.5 * 0.75 / 1.75, 1e-6);
  }
}

// Group A = {0.9, 0.0}, group B = {0.6, 0.6} (scores 0.5 plus bias): the max
// rule (DeepSeek-V2) keeps A, the top-2-sum rule (DeepSeek-V3) keeps B.
TEST(MoeRouteTest, GroupRulesDiffer) {
  const std::vector<float> logits(4, 0.0f);
  const std::vector<float> bias = {0.4f, -0.5f, 0.1f, 0.1f};
  RouterParams p;
  p.num_experts = 4;
  p.top_k = 2;
  p.score = ScoreFunction::kSigmoid;
  p.num_groups = 2;
  p.topk_groups = 1;
  p.correction_bias = bias.data();
  p.method = TopkMethod::kGroupLimitedGreedy;
  EXPECT_EQ(Route(logits, p).ids, (std::vector<int32_t>{0, 1}));
  p.method = TopkMethod::kNoAuxTc;
  const Routed r = Route(logits, p);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 3}));
  EXPECT_NEAR(r.weights[0], 0.5f, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.5f, 1e-6);
}

TEST(MoeRouteTest, RandomMatchesReference) {
  struct Shape {
    int64_t tokens, experts, top_k, groups, topk_groups;
  };
  const Shape shapes[] = {{1, 8, 2, 4, 2}, {37, 64, 6, 8, 3}, {300, 64, 8, 8, 4}, {5, 60, 4, 5, 2}};
  uint32_t seed = 1000;
  for (const Shape& s : shapes) {
    const auto logits =
        RandomVector(static_cast<size_t>(s.tokens * s.experts), seed++, -3.0f, 3.0f);
    const auto bias = RandomVector(static_cast<size_t>(s.experts), seed++, -0.1f, 0.1f);
    for (const TopkMethod method :
         {TopkMethod::kGreedy, TopkMethod::kGroupLimitedGreedy, TopkMethod::kNoAuxTc}) {
      for (const ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
        for (const bool with_bias : {false, true}) {
          for (const bool renormalize : {false, true}) {
            SCOPED_TRACE(::testing::Message()
                         << "tokens=" << s.tokens << " experts=" << s.experts << " method="
                         << static_cast<int>(method) << " score=" << static_cast<int>(score)
                         << " bias=" << with_bias << " renorm=" << renormalize);
            RouterParams p;
            p.num_experts = s.experts;
            p.top_k = s.top_k;
            p.score = score;
            p.method = method;
            p.num_groups = s.groups;
            p.topk_groups = s.topk_groups;
            p.renormalize = renormalize;
            p.scaling = renormalize ? 2.5f : 1.0f;
            p.correction_bias = with_bias ? bias.data() : nullptr;
            const Routed r = Route(logits, p);
            std::vector<int32_t> want_ids(static_cast<size_t>(s.top_k));
            std::vector<double> want_w(static_cast<size_t>(s.top_k));
            for (int64_t t = 0; t < s.tokens; ++t) {
              NaiveRoute(logits.data() + t * s.experts, p, want_ids.data(), want_w.data());
              for (int64_t i = 0; i < s.top_k; ++i) {
                const size_t at = static_cast<size_t>(t * s.top_k + i);
                ASSERT_EQ(r.ids[at], want_ids[i]) << "token " << t << " rank " << i;
                ASSERT_NEAR(r.weights[at], want_w[i], 1e-5 * std::max(1.0, want_w[i]))
                    << "token " << t << " rank " << i;
              }
            }
          }
        }
      }
    }
  }
}

TEST(MoeRouteTest, RejectsInconsistentParameters) {
  const std::vector<float> logits(6, 0.0f);
  int32_t ids[6];
  float weights[6];
  auto code = [&](const RouterParams& p) {
    return MoeRoute(Context{}, logits.data(), 1, p, ids, weights).code();
  };
  RouterParams p;
  p.num_experts = 6;
  p.top_k = 7;
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.top_k = 2;
  p.method = TopkMethod::kGroupLimitedGreedy;
  p.num_groups = 4;  // does not divide 6
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.num_groups = 3;
  p.topk_groups = 4;
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.topk_groups = 2;
  EXPECT_EQ(code(p), absl::StatusCode::kOk);
  p.method = TopkMethod::kNoAuxTc;
  p.num_groups = 6;  // one expert per group: no top-2
  p.topk_groups = 2;
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sy::kernels
