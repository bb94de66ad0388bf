// fp32 MoE router of the CPU backend.
//
// Per token: scores (softmax or sigmoid of the logits), selection values
// (scores + correction bias), optional group restriction, top-k selection and
// the combine weights taken from the raw scores. The group rules follow the
// Hugging Face transformers DeepSeek-V2/V3 routers: experts of groups that are
// not kept get selection value `dropped_group_value` (0.0 there, so with a
// negative bias they can still win over kept experts; -inf for Param2MoE).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace sy::kernels::cpu {
namespace {

constexpr int64_t kParallelWork = int64_t{1} << 14;

// Strict weak order: larger value first, equal values by lower index.
struct DescendingByValue {
  const float* values;
  bool operator()(int32_t a, int32_t b) const {
    if (values[a] != values[b]) return values[a] > values[b];
    return a < b;
  }
};

void ComputeScores(const float* logits, int64_t n, ScoreFunction fn, float* scores) {
  if (fn == ScoreFunction::kSigmoid) {
    for (int64_t e = 0; e < n; ++e) scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
    return;
  }
  const float max_logit = *std::max_element(logits, logits + n);
  float sum = 0.0f;
  for (int64_t e = 0; e < n; ++e) {
    scores[e] = std::exp(logits[e] - max_logit);
    sum += scores[e];
  }
  const float inv_sum = 1.0f / sum;
  for (int64_t e = 0; e < n; ++e) scores[e] *= inv_sum;
}

// Per-token scratch, reused across the tokens of one thread.
struct RouteScratch {
  explicit RouteScratch(const RouterParams& p)
      : scores(static_cast<size_t>(p.num_experts)),
        choice(static_cast<size_t>(p.num_experts)),
        order(static_cast<size_t>(p.num_experts)),
        group_score(NumGroups(p)),
        group_order(NumGroups(p)),
        group_kept(NumGroups(p)) {}
  // Greedy routing ignores num_groups (which may then be anything).
  static size_t NumGroups(const RouterParams& p) {
    return p.method == TopkMethod::kGreedy ? 0 : static_cast<size_t>(p.num_groups);
  }
  std::vector<float> scores;
  std::vector<float> choice;
  std::vector<int32_t> order;
  std::vector<float> group_score;
  std::vector<int32_t> group_order;
  std::vector<char> group_kept;
};

// Sets the selection value of every expert outside the best `topk_groups`
// groups to 0.0.
void MaskGroups(const RouterParams& p, RouteScratch& s) {
  const int64_t groups = p.num_groups;
  const int64_t group_size = p.num_experts / groups;
  for (int64_t g = 0; g < groups; ++g) {
    const float* c = s.choice.data() + g * group_size;
    if (p.method == TopkMethod::kGroupLimitedGreedy) {
      s.group_score[static_cast<size_t>(g)] = *std::max_element(c, c + group_size);
    } else {  // kNoAuxTc: sum of the two largest values of the group
      float top1 = c[0];
      float top2 = c[1];
      if (top2 > top1) std::swap(top1, top2);
      for (int64_t i = 2; i < group_size; ++i) {
        if (c[i] > top1) {
          top2 = top1;
          top1 = c[i];
        } else if (c[i] > top2) {
          top2 = c[i];
        }
      }
      s.group_score[static_cast<size_t>(g)] = top1 + top2;
    }
  }
  std::iota(s.group_order.begin(), s.group_order.end(), 0);
  std::partial_sort(s.group_order.begin(), s.group_order.begin() + p.topk_groups,
                    s.group_order.end(), DescendingByValue{s.group_score.data()});
  std::fill(s.group_kept.begin(), s.group_kept.end(), 0);
  for (int64_t i = 0; i < p.topk_groups; ++i) {
    s.group_kept[static_cast<size_t>(s.group_order[static_cast<size_t>(i)])] = 1;
  }
  for (int64_t g = 0; g < groups; ++g) {
    if (s.group_kept[static_cast<size_t>(g)]) continue;
    std::fill_n(s.choice.begin() + g * group_size, group_size, p.dropped_group_value);
  }
}

void RouteToken(const float* logits, const RouterParams& p, RouteScratch& s, int32_t* ids,
                float* weights) {
  const int64_t n = p.num_experts;
  const int64_t k = p.top_k;
  ComputeScores(logits, n, p.score, s.scores.data());
  for (int64_t e = 0; e < n; ++e) {
    const size_t i = static_cast<size_t>(e);
    s.choice[i] = p.correction_bias != nullptr ? s.scores[i] + p.correction_bias[e] : s.scores[i];
  }
  if (p.method != TopkMethod::kGreedy) MaskGroups(p, s);

  std::iota(s.order.begin(), s.order.end(), 0);
  std::partial_sort(s.order.begin(), s.order.begin() + k, s.order.end(),
                    DescendingByValue{s.choice.data()});
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    const int32_t expert = s.order[static_cast<size_t>(i)];
    ids[i] = expert;
    weights[i] = s.scores[static_cast<size_t>(expert)];
    sum += weights[i];
  }
  if (p.renormalize) {
    const float denom = sum + 1e-20f;
    for (int64_t i = 0; i < k; ++i) weights[i] /= denom;
  }
  for (int64_t i = 0; i < k; ++i) weights[i] *= p.scaling;
}

}  // namespace

void MoeRoute(const float* logits, int64_t num_tokens, const RouterParams& params,
              int32_t* topk_ids, float* topk_weights) {
  if (num_tokens <= 0 || params.num_experts <= 0 || params.top_k <= 0) return;
  const int64_t n = params.num_experts;
  const int64_t k = params.top_k;
#pragma omp parallel if (num_tokens * n >= kParallelWork)
  {
    RouteScratch scratch(params);
#pragma omp for
    for (int64_t t = 0; t < num_tokens; ++t) {
      RouteToken(logits + t * n, params, scratch, topk_ids + t * k, topk_weights + t * k);
    }
  }
}

}  // namespace sy::kernels::cpu
