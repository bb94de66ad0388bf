// CUDA MoE kernels against the CPU reference through the public kernels.h
// API: MoeRoute (every method x score x bias x renormalize x scaling, and
// both dropped-group values), MoePermute (exact offsets / row_pos / rows,
// out-of-range ids), MoeCombine, and GroupedExpertFfn on every CUDA path
// (small-M kernel, cuBLAS grouped, cuBLAS loop, kAuto, and kAuto inside a
// CUDA graph capture). Every case skips, saying why, without a usable GPU.
//
// Router ids must match exactly. That is fair only without near-ties, so the
// router logits are drawn per token until every comparison the selection
// makes (adjacent values among the top k + 1 selection values, and the kept /
// dropped group boundary) is separated by >= 1e-6 in a double-precision
// recomputation: >= ~100 ulps of fp32 values of this size, far more than the
// few-ulp differences of expf and of the softmax sum order between the CPU
// and the GPU. Exact ties (dropped experts, repeated logits) are computed
// identically on both and must break toward the lower index on both.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/kernels.h"
#if SY_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/backend.h"
#endif

namespace sy::kernels {
namespace {

using ::sy::kernels::testing::DTypeLabel;
using ::sy::kernels::testing::ExpectClose;
using ::sy::kernels::testing::OutputTolerance;
using ::sy::kernels::testing::RoundTo;

std::vector<float> Uniform(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ---- MoeRoute ----------------------------------------------------------------

constexpr double kMinGap = 1e-6;

// True when the selection of this token has no near-tie (see the top).
bool WellSeparated(const float* logits, const RouterParams& p, const float* bias) {
  const int64_t n = p.num_experts;
  thread_local std::vector<double> score, choice, group_score;
  thread_local std::vector<char> dropped;
  thread_local std::vector<int64_t> order, group_order;
  score.resize(static_cast<size_t>(n));
  if (p.score == ScoreFunction::kSoftmax) {
    const double mx = *std::max_element(logits, logits + n);
    double sum = 0.0;
    for (int64_t e = 0; e < n; ++e) sum += (score[e] = std::exp(logits[e] - mx));
    for (double& s : score) s /= sum;
  } else {
    for (int64_t e = 0; e < n; ++e) score[e] = 1.0 / (1.0 + std::exp(-double{logits[e]}));
  }
  choice = score;
  if (bias != nullptr) {
    for (int64_t e = 0; e < n; ++e) choice[e] += bias[e];
  }
  dropped.assign(static_cast<size_t>(n), 0);
  if (p.method != TopkMethod::kGreedy) {
    const int64_t size = n / p.num_groups;
    group_score.resize(static_cast<size_t>(p.num_groups));
    for (int64_t g = 0; g < p.num_groups; ++g) {
      double top1 = -INFINITY, top2 = -INFINITY;
      for (int64_t e = g * size; e < (g + 1) * size; ++e) {
        if (choice[e] > top1) {
          top2 = top1;
          top1 = choice[e];
        } else if (choice[e] > top2) {
          top2 = choice[e];
        }
      }
      group_score[g] = p.method == TopkMethod::kGroupLimitedGreedy ? top1 : top1 + top2;
    }
    group_order.resize(static_cast<size_t>(p.num_groups));
    std::iota(group_order.begin(), group_order.end(), 0);
    std::sort(group_order.begin(), group_order.end(),
              [&](int64_t a, int64_t b) { return group_score[a] > group_score[b]; });
    if (p.topk_groups < p.num_groups &&
        group_score[group_order[p.topk_groups - 1]] - group_score[group_order[p.topk_groups]] <
            kMinGap) {
      return false;
    }
    for (int64_t i = p.topk_groups; i < p.num_groups; ++i) {
      for (int64_t e = group_order[i] * size; e < (group_order[i] + 1) * size; ++e) {
        dropped[e] = 1;
        choice[e] = p.dropped_group_value;
      }
    }
  }
  order.resize(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const int64_t depth = std::min(n, p.top_k + 1);
  std::partial_sort(order.begin(), order.begin() + depth, order.end(),
                    [&](int64_t a, int64_t b) { return choice[a] > choice[b]; });
  for (int64_t i = 0; i + 1 < depth; ++i) {
    const int64_t a = order[i], b = order[i + 1];
    if (dropped[a] && dropped[b]) continue;  // the same constant on both devices
    if (!(choice[a] - choice[b] >= kMinGap)) return false;
  }
  return true;
}

struct RouteShape {
  int64_t tokens, experts, top_k, groups, topk_groups;
};

class CudaMoeRouteTest : public testing::CudaTest {
 protected:
  // Routes `logits` on the CPU and on the GPU with every weight setting
  // (renormalize x scaling) and expects identical ids and close weights.
  void CompareRoute(const std::vector<float>& logits, int64_t tokens, RouterParams p,
                    const std::vector<float>* bias) {
    const int64_t k = p.top_k;
    const auto pairs = static_cast<size_t>(tokens * k);
    DeviceBuffer d_logits = UploadRaw(logits);
    DeviceBuffer d_bias = bias != nullptr ? UploadRaw(*bias) : DeviceBuffer();
    DeviceBuffer d_ids = Alloc(static_cast<int64_t>(pairs * 4));
    DeviceBuffer d_w = Alloc(static_cast<int64_t>(pairs * 4));
    for (const bool renormalize : {false, true}) {
      for (const float scaling : {1.0f, 2.5f}) {
        SCOPED_TRACE(::testing::Message()
                     << "renormalize=" << renormalize << " scaling=" << scaling);
        p.renormalize = renormalize;
        p.scaling = scaling;
        RouterParams cpu_p = p;
        cpu_p.correction_bias = bias != nullptr ? bias->data() : nullptr;
        std::vector<int32_t> want_ids(pairs, -7);
        std::vector<float> want_w(pairs, -7.0f);
        ASSERT_TRUE(
            MoeRoute(Context{}, logits.data(), tokens, cpu_p, want_ids.data(), want_w.data()).ok());
        RouterParams gpu_p = p;
        gpu_p.correction_bias = bias != nullptr ? d_bias.as<float>() : nullptr;
        const absl::Status st = MoeRoute(gpu(), d_logits.as<float>(), tokens, gpu_p,
                                         d_ids.as<int32_t>(), d_w.as<float>());
        ASSERT_TRUE(st.ok()) << st;
        if (pairs == 0) continue;
        const auto ids = DownloadRaw<int32_t>(d_ids.data(), static_cast<int64_t>(pairs));
        const auto w = DownloadRaw<float>(d_w.data(), static_cast<int64_t>(pairs));
        for (size_t i = 0; i < pairs; ++i) {
          ASSERT_EQ(ids[i], want_ids[i]) << "token " << i / k << " rank " << i % k;
        }
        // A few ulps: expf and the softmax sum order differ between devices.
        ExpectClose(w, want_w, 3e-6, 1e-9, "weights");
      }
    }
  }
};

TEST_F(CudaMoeRouteTest, MatchesCpuForEveryMethod) {
  const RouteShape shapes[] = {
      {0, 8, 2, 4, 2},      {1, 8, 1, 4, 2},      {1, 8, 4, 4, 2},    {37, 8, 8, 2, 1},
      {37, 64, 6, 8, 3},    {37, 60, 2, 5, 2},    {37, 128, 8, 8, 4}, {37, 512, 16, 64, 8},
      {1024, 128, 8, 8, 4}, {4096, 256, 8, 8, 4},  // DeepSeek-V3: 8 groups, 4 kept
      {37, 256, 1, 8, 4},   {37, 256, 2, 16, 4},
  };
  uint32_t seed = 7;
  for (const RouteShape& s : shapes) {
    std::mt19937 rng(seed++);
    const auto bias = Uniform(static_cast<size_t>(s.experts), rng, -0.1f, 0.1f);
    for (const TopkMethod method :
         {TopkMethod::kGreedy, TopkMethod::kGroupLimitedGreedy, TopkMethod::kNoAuxTc}) {
      for (const ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
        for (const bool with_bias : {false, true}) {
          for (const float dropped : {0.0f, -std::numeric_limits<float>::infinity()}) {
            if (method == TopkMethod::kGreedy && dropped != 0.0f) continue;
            SCOPED_TRACE(::testing::Message()
                         << "tokens=" << s.tokens << " experts=" << s.experts << " k=" << s.top_k
                         << " groups=" << s.groups << "/" << s.topk_groups << " method="
                         << static_cast<int>(method) << " score=" << static_cast<int>(score)
                         << " bias=" << with_bias << " dropped=" << dropped);
            RouterParams p;
            p.num_experts = s.experts;
            p.top_k = s.top_k;
            p.score = score;
            p.method = method;
            p.num_groups = s.groups;
            p.topk_groups = s.topk_groups;
            p.dropped_group_value = dropped;
            const float* b = with_bias ? bias.data() : nullptr;
            std::vector<float> logits(static_cast<size_t>(s.tokens * s.experts));
            for (int64_t t = 0; t < s.tokens; ++t) {
              float* row = logits.data() + t * s.experts;
              int attempts = 0;
              do {
                ASSERT_LT(attempts++, 100) << "no well-separated logits for token " << t;
                const auto drawn = Uniform(static_cast<size_t>(s.experts), rng, -4.0f, 4.0f);
                std::copy(drawn.begin(), drawn.end(), row);
              } while (!WellSeparated(row, p, b));
            }
            CompareRoute(logits, s.tokens, p, with_bias ? &bias : nullptr);
          }
        }
      }
    }
  }
}

// Logits from {-1, 0, 0.5, 1}: many exact ties, computed identically on
// both devices, so both must order them by index.
TEST_F(CudaMoeRouteTest, ExactTiesBreakTowardLowerIndex) {
  std::mt19937 rng(99);
  const float values[] = {-1.0f, 0.0f, 0.5f, 1.0f};
  for (const int64_t experts : {8, 64, 256}) {
    const int64_t tokens = 37;
    std::vector<float> logits(static_cast<size_t>(tokens * experts));
    for (float& l : logits) l = values[rng() % 4];
    for (const TopkMethod method :
         {TopkMethod::kGreedy, TopkMethod::kGroupLimitedGreedy, TopkMethod::kNoAuxTc}) {
      for (const ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
        SCOPED_TRACE(::testing::Message()
                     << "experts=" << experts << " method=" << static_cast<int>(method)
                     << " score=" << static_cast<int>(score));
        RouterParams p;
        p.num_experts = experts;
        p.top_k = std::min<int64_t>(8, experts);
        p.score = score;
        p.method = method;
        p.num_groups = 4;
        p.topk_groups = 2;
        CompareRoute(logits, tokens, p, nullptr);
      }
    }
  }
}

// ---- MoePermute --------------------------------------------------------------

struct PermuteCase {
  int64_t tokens, top_k, experts, hidden;
  bool skewed;  // every pair to expert min(3, experts - 1)
};

class CudaMoePermuteTest : public testing::CudaDTypeTest {};

TEST_P(CudaMoePermuteTest, MatchesCpu) {
  const PermuteCase cases[] = {
      {0, 2, 8, 16, false},     {1, 1, 8, 13, false},      {1, 8, 128, 2048, false},
      {37, 6, 64, 13, false},   {37, 8, 256, 2048, false}, {100, 2, 1, 16, false},
      {513, 4, 16, 32, true},   {4096, 8, 128, 64, false}, {4096, 8, 256, 7, false},
      {70000, 8, 64, 8, false},  // ~500 chunks of 1120 pairs
  };
  uint32_t seed = 21;
  for (const PermuteCase& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << DTypeLabel(dtype()) << " tokens=" << c.tokens << " k=" << c.top_k
                 << " experts=" << c.experts << " hidden=" << c.hidden << " skewed=" << c.skewed);
    std::mt19937 rng(seed++);
    const int64_t pairs = c.tokens * c.top_k;
    std::vector<int32_t> ids(static_cast<size_t>(pairs));
    for (int32_t& id : ids) {
      id = c.skewed ? static_cast<int32_t>(std::min<int64_t>(3, c.experts - 1))
                    : static_cast<int32_t>(rng() % c.experts);
    }
    const auto x =
        RoundTo(dtype(), Uniform(static_cast<size_t>(c.tokens * c.hidden), rng, -1.0f, 1.0f));
    std::vector<int64_t> want_off(static_cast<size_t>(c.experts + 1));
    std::vector<int32_t> want_pos(static_cast<size_t>(pairs));
    std::vector<float> want_rows(static_cast<size_t>(pairs * c.hidden));
    ASSERT_TRUE(MoePermute(Context{}, DType::kF32, x.data(), c.tokens, c.hidden, ids.data(),
                           c.top_k, c.experts, want_off.data(), want_pos.data(), want_rows.data())
                    .ok());

    DeviceBuffer d_x = Upload(dtype(), x);
    DeviceBuffer d_ids = UploadRaw(ids);
    DeviceBuffer d_off = Alloc((c.experts + 1) * 8);
    DeviceBuffer d_pos = Alloc(pairs * 4);
    DeviceBuffer d_rows = Alloc(pairs * c.hidden * DTypeSize(dtype()));
    const absl::Status st =
        MoePermute(gpu(), dtype(), d_x.data(), c.tokens, c.hidden, d_ids.as<int32_t>(), c.top_k,
                   c.experts, d_off.as<int64_t>(), d_pos.as<int32_t>(), d_rows.data());
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(DownloadRaw<int64_t>(d_off.data(), c.experts + 1), want_off);
    if (pairs == 0) continue;
    EXPECT_EQ(DownloadRaw<int32_t>(d_pos.data(), pairs), want_pos);
    EXPECT_EQ(Download(dtype(), d_rows.data(), pairs * c.hidden), want_rows);
  }
}

// On CUDA an id outside [0, E) gets row_pos -1 and no row; the other pairs
// keep their stable order.
TEST_P(CudaMoePermuteTest, OutOfRangeIdsGetNoRow) {
  const int64_t tokens = 300, top_k = 4, experts = 16, hidden = 24;
  std::mt19937 rng(5);
  const int64_t pairs = tokens * top_k;
  std::vector<int32_t> ids(static_cast<size_t>(pairs));
  const int32_t bad[] = {-1, 16, -5, std::numeric_limits<int32_t>::max()};
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = rng() % 7 == 0 ? bad[rng() % 4] : static_cast<int32_t>(rng() % experts);
  }
  const auto x = RoundTo(dtype(), Uniform(static_cast<size_t>(tokens * hidden), rng, -1.0f, 1.0f));
  // Counting sort of the valid pairs.
  std::vector<int64_t> want_off(experts + 1, 0);
  for (const int32_t id : ids) {
    if (id >= 0 && id < experts) ++want_off[id + 1];
  }
  for (int64_t e = 0; e < experts; ++e) want_off[e + 1] += want_off[e];
  std::vector<int64_t> cursor(want_off.begin(), want_off.end() - 1);
  std::vector<int32_t> want_pos(static_cast<size_t>(pairs));
  for (size_t i = 0; i < ids.size(); ++i) {
    want_pos[i] = ids[i] >= 0 && ids[i] < experts ? static_cast<int32_t>(cursor[ids[i]]++) : -1;
  }
  DeviceBuffer d_x = Upload(dtype(), x);
  DeviceBuffer d_ids = UploadRaw(ids);
  DeviceBuffer d_off = Alloc((experts + 1) * 8);
  DeviceBuffer d_pos = Alloc(pairs * 4);
  DeviceBuffer d_rows = Alloc(pairs * hidden * DTypeSize(dtype()));
  ASSERT_TRUE(MoePermute(gpu(), dtype(), d_x.data(), tokens, hidden, d_ids.as<int32_t>(), top_k,
                         experts, d_off.as<int64_t>(), d_pos.as<int32_t>(), d_rows.data())
                  .ok());
  EXPECT_EQ(DownloadRaw<int64_t>(d_off.data(), experts + 1), want_off);
  const auto pos = DownloadRaw<int32_t>(d_pos.data(), pairs);
  EXPECT_EQ(pos, want_pos);
  const auto rows = Download(dtype(), d_rows.data(), want_off[experts] * hidden);
  for (int64_t i = 0; i < pairs; ++i) {
    if (want_pos[i] < 0) continue;
    for (int64_t h = 0; h < hidden; ++h) {
      ASSERT_EQ(rows[want_pos[i] * hidden + h], x[(i / top_k) * hidden + h]) << "pair " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaMoePermuteTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeLabel(info.param)); });

// ---- MoeCombine --------------------------------------------------------------

class CudaMoeCombineTest : public testing::CudaDTypeTest {};

// fp32: the kernel multiplies and adds in k order as the CPU does, so only
// the output rounding (bf16: rtol OutputTolerance) separates the results.
TEST_P(CudaMoeCombineTest, MatchesCpu) {
  struct Case {
    int64_t tokens, top_k, hidden;
  };
  const Case cases[] = {{0, 2, 16},    {1, 1, 13},    {37, 8, 13},
                        {37, 6, 2048}, {64, 8, 7168}, {1000, 2, 2048}};
  uint32_t seed = 300;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << DTypeLabel(dtype()) << " tokens=" << c.tokens
                                      << " k=" << c.top_k << " hidden=" << c.hidden);
    std::mt19937 rng(seed++);
    const int64_t pairs = c.tokens * c.top_k;
    std::vector<int32_t> row_pos(static_cast<size_t>(pairs));
    std::iota(row_pos.begin(), row_pos.end(), 0);
    std::shuffle(row_pos.begin(), row_pos.end(), rng);
    for (int32_t& r : row_pos) {
      if (rng() % 10 == 0) r = -1;
    }
    const auto weights = Uniform(static_cast<size_t>(pairs), rng, 0.0f, 1.0f);
    const auto expert_out =
        RoundTo(dtype(), Uniform(static_cast<size_t>(pairs * c.hidden), rng, -1.0f, 1.0f));
    std::vector<float> want(static_cast<size_t>(c.tokens * c.hidden));
    ASSERT_TRUE(MoeCombine(Context{}, DType::kF32, expert_out.data(), row_pos.data(),
                           weights.data(), c.tokens, c.top_k, c.hidden, want.data())
                    .ok());
    DeviceBuffer d_eo = Upload(dtype(), expert_out);
    DeviceBuffer d_pos = UploadRaw(row_pos);
    DeviceBuffer d_w = UploadRaw(weights);
    DeviceBuffer d_out = Alloc(c.tokens * c.hidden * DTypeSize(dtype()));
    const absl::Status st = MoeCombine(gpu(), dtype(), d_eo.data(), d_pos.as<int32_t>(),
                                       d_w.as<float>(), c.tokens, c.top_k, c.hidden, d_out.data());
    ASSERT_TRUE(st.ok()) << st;
    if (want.empty()) continue;
    ExpectClose(Download(dtype(), d_out.data(), c.tokens * c.hidden), want,
                OutputTolerance(dtype()), 1e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaMoeCombineTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeLabel(info.param)); });

// ---- GroupedExpertFfn --------------------------------------------------------

#if SY_WITH_CUDA

struct FfnCase {
  std::string name;
  int64_t hidden, inter;
  std::vector<int64_t> rows;  // per expert
};

// Rows per expert: `active` experts (random, distinct) share `total` rows.
std::vector<int64_t> SpreadRows(int64_t experts, int64_t total, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int64_t> rows(static_cast<size_t>(experts), 0);
  for (int64_t i = 0; i < total; ++i) ++rows[rng() % experts];
  return rows;
}

std::vector<FfnCase> FfnCases() {
  std::vector<FfnCase> cases = {
      {"one_expert_1_row", 13, 7, {1}},
      {"one_expert_37_rows", 13, 7, {37}},
      {"four_with_zeros", 13, 7, {0, 1, 0, 3}},
      {"four_aligned_odd_rows", 16, 8, {5, 0, 9, 2}},
      {"vector_gate_up_scalar_down", 256, 100, {2, 0, 7, 1}},
  };
  std::vector<int64_t> skewed = SpreadRows(16, 20, 1);
  skewed[3] = 1000;
  cases.push_back({"sixteen_skewed_1000", 256, 128, skewed});
  std::vector<int64_t> one_token(128, 0);
  for (const int64_t e : {3, 17, 18, 40, 77, 90, 101, 127}) one_token[e] = 1;
  cases.push_back({"qwen3_one_token", 2048, 768, one_token});
  // At most one row per expert on average, so the small-M path takes rows two
  // at a time: one expert with 9 rows needs five passes (2, 2, 2, 2, 1).
  std::vector<int64_t> few_rows = SpreadRows(128, 100, 5);
  few_rows[64] = 9;
  cases.push_back({"qwen3_few_rows_one_heavy", 2048, 768, few_rows});
  cases.push_back({"qwen3_64_tokens", 2048, 768, SpreadRows(128, 512, 2)});
  cases.push_back({"qwen3_192_tokens", 2048, 768, SpreadRows(128, 1536, 3)});
  std::vector<int64_t> skewed_real = SpreadRows(16, 40, 4);
  skewed_real[9] = 300;
  cases.push_back({"realistic_skewed_300", 2048, 768, skewed_real});
  // The sm90 kernel's edges: K tails (264 = 4 * 64 + 8, 200 = 3 * 64 + 8),
  // column tails (200 = 128 + 72 fused outputs, 264 = 256 + 8 down outputs)
  // and row tiles of 128 (exactly full, one over, one row).
  cases.push_back({"sm90_tails", 264, 200, {300, 0, 129, 1, 128, 7, 0, 256}});
  // Many more tiles than SMs, one K step each: every block of the sm90 kernel
  // walks tiles of different experts (different weights) back to back.
  cases.push_back({"sm90_many_tiles", 64, 1024, std::vector<int64_t>(64, 512)});
  return cases;
}

// One weight set for every expert, random activations for rows_per[e] rows
// of expert e, and the CPU's fp32 result.
struct SharedWeights {
  std::vector<int64_t> offsets;
  int64_t rows;
  std::vector<float> gu, dn, x, want;
};
SharedWeights MakeSharedWeights(DType dtype, int64_t experts, int64_t hidden, int64_t inter,
                                const std::vector<int64_t>& rows_per, uint32_t seed) {
  SharedWeights w;
  w.offsets.assign(static_cast<size_t>(experts + 1), 0);
  for (int64_t e = 0; e < experts; ++e) w.offsets[e + 1] = w.offsets[e] + rows_per[e];
  w.rows = w.offsets[experts];
  std::mt19937 rng(seed);
  w.gu = RoundTo(dtype, Uniform(static_cast<size_t>(2 * inter * hidden), rng, -0.06f, 0.06f));
  w.dn = RoundTo(dtype, Uniform(static_cast<size_t>(hidden * inter), rng, -0.1f, 0.1f));
  w.x = RoundTo(dtype, Uniform(static_cast<size_t>(w.rows * hidden), rng, -1.0f, 1.0f));
  const std::vector<const void*> h_gu(experts, w.gu.data()), h_dn(experts, w.dn.data());
  w.want.resize(static_cast<size_t>(w.rows * hidden));
  EXPECT_TRUE(GroupedExpertFfn(Context{}, DType::kF32, w.x.data(), w.offsets.data(), experts,
                               w.rows, h_gu.data(), h_dn.data(), hidden, inter, w.want.data())
                  .ok());
  return w;
}

class CudaGroupedFfnTest : public testing::CudaDTypeTest {
 protected:
  // Captures kAuto in a CUDA graph for these rows per expert (8 experts) and
  // checks the replay against the CPU.
  void CheckGraphCapture(const std::vector<int64_t>& rows_per);

  // Tolerance: fp32: accumulation order only. bf16: one output rounding
  // (rtol OutputTolerance) plus the rounding of the [rows, inter]
  // intermediate to bf16 (and, on the cuBLAS paths, of the gate/up outputs
  // before SiLU): a relative error delta_j <= ~3 * 2^-9 on each term of the
  // down projection, with random signs, so |err| ~ rms(delta) * rms(out) per
  // output; 3e-2 * rms(out) is several standard deviations.
  void CheckFfn(const std::vector<float>& got, const std::vector<float>& want,
                const std::string& what) {
    double sq = 0.0;
    for (const float w : want) sq += static_cast<double>(w) * w;
    const double rms = want.empty() ? 0.0 : std::sqrt(sq / static_cast<double>(want.size()));
    const bool f32 = dtype() == DType::kF32;
    ExpectClose(got, want, OutputTolerance(dtype()), (f32 ? 1e-4 : 3e-2) * rms + 1e-7, what);
  }
};

TEST_P(CudaGroupedFfnTest, EveryPathMatchesCpu) {
  uint32_t seed = 500;
  for (const FfnCase& c : FfnCases()) {
    SCOPED_TRACE(c.name + " (" + DTypeLabel(dtype()) + ")");
    std::mt19937 rng(seed++);
    const auto experts = static_cast<int64_t>(c.rows.size());
    std::vector<int64_t> offsets(static_cast<size_t>(experts + 1), 0);
    for (int64_t e = 0; e < experts; ++e) offsets[e + 1] = offsets[e] + c.rows[e];
    const int64_t rows = offsets[experts];
    // At most 4 distinct weight sets; expert e uses set e % 4 (the kernels
    // only see pointers, and this keeps 128-expert cases small).
    const int64_t sets = std::min<int64_t>(experts, 4);
    const float gu_scale = 1.0f / std::sqrt(static_cast<float>(c.hidden));
    const float dn_scale = 1.0f / std::sqrt(static_cast<float>(c.inter));
    std::vector<std::vector<float>> gu(sets), dn(sets);
    std::vector<DeviceBuffer> d_gu, d_dn;
    for (int64_t s = 0; s < sets; ++s) {
      gu[s] = RoundTo(
          dtype(), Uniform(static_cast<size_t>(2 * c.inter * c.hidden), rng, -gu_scale, gu_scale));
      dn[s] = RoundTo(dtype(),
                      Uniform(static_cast<size_t>(c.hidden * c.inter), rng, -dn_scale, dn_scale));
      d_gu.push_back(Upload(dtype(), gu[s]));
      d_dn.push_back(Upload(dtype(), dn[s]));
    }
    std::vector<const void*> h_gu, h_dn, g_gu, g_dn;
    for (int64_t e = 0; e < experts; ++e) {
      h_gu.push_back(gu[e % sets].data());
      h_dn.push_back(dn[e % sets].data());
      g_gu.push_back(d_gu[e % sets].data());
      g_dn.push_back(d_dn[e % sets].data());
    }
    const auto x =
        RoundTo(dtype(), Uniform(static_cast<size_t>(rows * c.hidden), rng, -1.0f, 1.0f));
    std::vector<float> want(static_cast<size_t>(rows * c.hidden));
    ASSERT_TRUE(GroupedExpertFfn(Context{}, DType::kF32, x.data(), offsets.data(), experts, rows,
                                 h_gu.data(), h_dn.data(), c.hidden, c.inter, want.data())
                    .ok());

    DeviceBuffer d_x = Upload(dtype(), x);
    DeviceBuffer d_off = UploadRaw(offsets);
    DeviceBuffer d_gu_ptrs = UploadRaw(g_gu);
    DeviceBuffer d_dn_ptrs = UploadRaw(g_dn);
    DeviceBuffer d_out = Alloc(rows * c.hidden * DTypeSize(dtype()));
    const auto* gu_ptrs = d_gu_ptrs.as<const void* const>();
    const auto* dn_ptrs = d_dn_ptrs.as<const void* const>();
    for (const auto path : {cuda::GroupedFfnPath::kSmallM, cuda::GroupedFfnPath::kCublasGrouped,
                            cuda::GroupedFfnPath::kCublasLoop, cuda::GroupedFfnPath::kSm90,
                            cuda::GroupedFfnPath::kAuto}) {
      const std::string what = "path " + std::to_string(static_cast<int>(path));
      if (path == cuda::GroupedFfnPath::kSm90 &&
          !cuda::GroupedFfnSm90Available(gpu(), dtype(), experts, c.hidden, c.inter)) {
        // Not this GPU, dtype or shape: a clear refusal, never a wrong result.
        const absl::Status st =
            cuda::GroupedExpertFfn(gpu(), dtype(), d_x.data(), d_off.as<int64_t>(), experts, rows,
                                   gu_ptrs, dn_ptrs, c.hidden, c.inter, d_out.data(), path);
        EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << what << ": " << st;
        continue;
      }
      // NaN everywhere (0xFF bytes in both dtypes): unwritten rows fail.
      ASSERT_TRUE(Memset(gpu(), d_out.data(), 0xFF, d_out.bytes()).ok());
      const absl::Status st =
          path == cuda::GroupedFfnPath::kAuto
              ? GroupedExpertFfn(gpu(), dtype(), d_x.data(), d_off.as<int64_t>(), experts, rows,
                                 gu_ptrs, dn_ptrs, c.hidden, c.inter, d_out.data())
              : cuda::GroupedExpertFfn(gpu(), dtype(), d_x.data(), d_off.as<int64_t>(), experts,
                                       rows, gu_ptrs, dn_ptrs, c.hidden, c.inter, d_out.data(),
                                       path);
      ASSERT_TRUE(st.ok()) << what << ": " << st;
      CheckFfn(Download(dtype(), d_out.data(), rows * c.hidden), want, what);
    }
  }
}

TEST_P(CudaGroupedFfnTest, NoRowsIsANoOp) {
  const std::vector<int64_t> offsets(5, 0);
  DeviceBuffer d_off = UploadRaw(offsets);
  const std::vector<const void*> null_ptrs(4, nullptr);
  DeviceBuffer d_ptrs = UploadRaw(null_ptrs);
  const auto* ptrs = d_ptrs.as<const void* const>();
  for (const auto path : {cuda::GroupedFfnPath::kSmallM, cuda::GroupedFfnPath::kCublasGrouped,
                          cuda::GroupedFfnPath::kCublasLoop, cuda::GroupedFfnPath::kSm90,
                          cuda::GroupedFfnPath::kAuto}) {
    EXPECT_TRUE(cuda::GroupedExpertFfn(gpu(), dtype(), nullptr, d_off.as<int64_t>(), 4, 0, ptrs,
                                       ptrs, 64, 32, nullptr, path)
                    .ok());
  }
  EXPECT_TRUE(dc_->Synchronize().ok());
}

// The small-M path's down kernel starts (programmatic dependent launch)
// while its gate_up kernel still runs, and each gate_up waits for the kernel
// before it: many launches queued back to back, with routings of different
// active-expert counts, each give the CPU's result.
TEST_P(CudaGroupedFfnTest, SmallMLaunchesBackToBack) {
  const int64_t experts = 32, hidden = 128, inter = 64;
  std::mt19937 rng(91);
  const auto gu =
      RoundTo(dtype(), Uniform(static_cast<size_t>(2 * inter * hidden), rng, -0.09f, 0.09f));
  const auto dn =
      RoundTo(dtype(), Uniform(static_cast<size_t>(hidden * inter), rng, -0.12f, 0.12f));
  DeviceBuffer d_gu = Upload(dtype(), gu), d_dn = Upload(dtype(), dn);
  DeviceBuffer d_gu_ptrs = UploadRaw(std::vector<const void*>(experts, d_gu.data()));
  DeviceBuffer d_dn_ptrs = UploadRaw(std::vector<const void*>(experts, d_dn.data()));
  const std::vector<const void*> h_gu(experts, gu.data()), h_dn(experts, dn.data());
  struct Launch {
    DeviceBuffer x, off, out;
    std::vector<float> want;
    int64_t rows;
  };
  std::vector<Launch> launches;
  for (int i = 0; i < 24; ++i) {
    // 1 to 32 rows over 32 experts: at most one row per expert on average.
    const int64_t total = 1 + (i * 7) % experts;
    const std::vector<int64_t> per = SpreadRows(experts, total, 300 + i);
    std::vector<int64_t> offsets(experts + 1, 0);
    for (int64_t e = 0; e < experts; ++e) offsets[e + 1] = offsets[e] + per[e];
    const auto x = RoundTo(dtype(), Uniform(static_cast<size_t>(total * hidden), rng, -1.0f, 1.0f));
    Launch l{Upload(dtype(), x), UploadRaw(offsets), Alloc(total * hidden * DTypeSize(dtype())),
             std::vector<float>(static_cast<size_t>(total * hidden)), total};
    ASSERT_TRUE(GroupedExpertFfn(Context{}, DType::kF32, x.data(), offsets.data(), experts, total,
                                 h_gu.data(), h_dn.data(), hidden, inter, l.want.data())
                    .ok());
    launches.push_back(std::move(l));
  }
  for (int round = 0; round < 2; ++round) {
    // NaN in every output first, so that the launches are queued adjacent.
    for (Launch& l : launches) ASSERT_TRUE(Memset(gpu(), l.out.data(), 0xFF, l.out.bytes()).ok());
    for (Launch& l : launches) {
      ASSERT_TRUE(cuda::GroupedExpertFfn(gpu(), dtype(), l.x.data(), l.off.as<int64_t>(), experts,
                                         l.rows, d_gu_ptrs.as<const void* const>(),
                                         d_dn_ptrs.as<const void* const>(), hidden, inter,
                                         l.out.data(), cuda::GroupedFfnPath::kSmallM)
                      .ok());
    }
    for (size_t i = 0; i < launches.size(); ++i) {
      CheckFfn(Download(dtype(), launches[i].out.data(), launches[i].rows * hidden),
               launches[i].want, "round " + std::to_string(round) + " launch " + std::to_string(i));
    }
  }
}

// Weights that are not 16-byte aligned (an expert placed at any address) take
// the small-M path's element-wise loads instead of its vector or bulk copies,
// with the same result.
TEST_P(CudaGroupedFfnTest, SmallMMisalignedWeights) {
  const int64_t experts = 8, hidden = 256, inter = 64;
  const std::vector<int64_t> per = {1, 0, 2, 1, 0, 1, 0, 3};
  const auto [offsets, rows, gu, dn, x, want] =
      MakeSharedWeights(dtype(), experts, hidden, inter, per, 17);
  // Each weight matrix 4 bytes past a 16-byte boundary.
  DeviceBuffer gu_aligned = Upload(dtype(), gu), dn_aligned = Upload(dtype(), dn);
  DeviceBuffer gu_buf = Alloc(gu_aligned.bytes() + 16), dn_buf = Alloc(dn_aligned.bytes() + 16);
  void* gu_at = gu_buf.as<char>() + 4;
  void* dn_at = dn_buf.as<char>() + 4;
  ASSERT_TRUE(CopyOnDevice(gpu(), gu_at, gu_aligned.data(), gu_aligned.bytes()).ok());
  ASSERT_TRUE(CopyOnDevice(gpu(), dn_at, dn_aligned.data(), dn_aligned.bytes()).ok());
  DeviceBuffer d_x = Upload(dtype(), x), d_off = UploadRaw(offsets);
  DeviceBuffer d_gu_ptrs = UploadRaw(std::vector<const void*>(experts, gu_at));
  DeviceBuffer d_dn_ptrs = UploadRaw(std::vector<const void*>(experts, dn_at));
  DeviceBuffer d_out = Alloc(rows * hidden * DTypeSize(dtype()));
  ASSERT_TRUE(Memset(gpu(), d_out.data(), 0xFF, d_out.bytes()).ok());
  ASSERT_TRUE(cuda::GroupedExpertFfn(gpu(), dtype(), d_x.data(), d_off.as<int64_t>(), experts, rows,
                                     d_gu_ptrs.as<const void* const>(),
                                     d_dn_ptrs.as<const void* const>(), hidden, inter, d_out.data(),
                                     cuda::GroupedFfnPath::kSmallM)
                  .ok());
  CheckFfn(Download(dtype(), d_out.data(), rows * hidden), want, "misaligned weights");
}

// kAuto inside a CUDA graph capture must take a path without host
// synchronisation (the small-M kernel, or the sm90 kernel on Hopper in bf16)
// even where it would otherwise pick cuBLAS, and the graph replays correctly.
TEST_P(CudaGroupedFfnTest, AutoIsGraphCapturable) {
  // At most one row per expert (the small-M path's two-row passes), avg 16 rows per
  // expert (above the small-M kernel's range), then avg 250 (several 128-row
  // tiles per expert for the sm90 kernel).
  for (const std::vector<int64_t>& rows_per :
       {std::vector<int64_t>{1, 0, 2, 0, 1, 0, 3, 1},
        std::vector<int64_t>{40, 0, 3, 17, 1, 0, 60, 9},
        std::vector<int64_t>{300, 200, 256, 190, 0, 600, 250, 204}}) {
    SCOPED_TRACE(rows_per[0]);
    CheckGraphCapture(rows_per);
  }
}

void CudaGroupedFfnTest::CheckGraphCapture(const std::vector<int64_t>& rows_per) {
  const int64_t experts = 8, hidden = 256, inter = 96;
  const auto [offsets, rows, gu, dn, x, want] =
      MakeSharedWeights(dtype(), experts, hidden, inter, rows_per, 77);
  DeviceBuffer d_gu = Upload(dtype(), gu), d_dn = Upload(dtype(), dn), d_x = Upload(dtype(), x);
  DeviceBuffer d_off = UploadRaw(offsets);
  DeviceBuffer d_gu_ptrs = UploadRaw(std::vector<const void*>(experts, d_gu.data()));
  DeviceBuffer d_dn_ptrs = UploadRaw(std::vector<const void*>(experts, d_dn.data()));
  DeviceBuffer d_out = Alloc(rows * hidden * DTypeSize(dtype()));
  auto run = [&] {
    return GroupedExpertFfn(gpu(), dtype(), d_x.data(), d_off.as<int64_t>(), experts, rows,
                            d_gu_ptrs.as<const void* const>(), d_dn_ptrs.as<const void* const>(),
                            hidden, inter, d_out.data());
  };
  ASSERT_TRUE(run().ok());  // grows the workspaces outside the capture
  ASSERT_TRUE(dc_->Synchronize().ok());
  cudaStream_t stream = cuda::Stream(gpu());
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const absl::Status captured = run();
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(captured.ok()) << captured;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 3; ++replay) {
    ASSERT_TRUE(Memset(gpu(), d_out.data(), 0xFF, d_out.bytes()).ok());
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    CheckFfn(Download(dtype(), d_out.data(), rows * hidden), want,
             "graph replay " + std::to_string(replay));
  }
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaGroupedFfnTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeLabel(info.param)); });

#endif  // SY_WITH_CUDA

}  // namespace
}  // namespace sy::kernels
