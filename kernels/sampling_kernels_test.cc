// kernels::SampleTokens: the CPU reference against hand-computed cases and an
// independent double-precision model of the filters (greedy, ties,
// temperature, top-k, top-p, min-p, their order, parameter errors, logprobs,
// determinism, frequencies over many steps), then the CUDA kernel against the
// CPU (every CUDA case skips, saying why, without a GPU).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/kernels.h"

namespace sy::kernels {
namespace {

using ::sy::kernels::testing::CudaTest;

constexpr float kInf = std::numeric_limits<float>::infinity();
const Context kCpu{};

SampleParams Params(float temperature, int32_t top_k = 0, float top_p = 1.0f, float min_p = 0.0f,
                    uint64_t seed = 0, uint64_t step = 0) {
  SampleParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.seed = seed;
  p.step = step;
  return p;
}

struct Sampled {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
};

Sampled CpuSample(const std::vector<float>& logits, int64_t vocab,
                  const std::vector<SampleParams>& params) {
  const auto rows = static_cast<int64_t>(params.size());
  Sampled out{std::vector<int32_t>(params.size(), -7), std::vector<float>(params.size(), 0.0f)};
  const absl::Status st = SampleTokens(kCpu, logits.data(), rows, vocab, params.data(),
                                       out.tokens.data(), out.logprobs.data());
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// One row, one draw.
int32_t CpuToken(const std::vector<float>& logits, const SampleParams& p) {
  return CpuSample(logits, static_cast<int64_t>(logits.size()), {p}).tokens[0];
}

double LogSoftmax(const float* logits, int64_t vocab, int64_t i) {
  double m = -kInf;
  for (int64_t j = 0; j < vocab; ++j) m = std::max(m, static_cast<double>(logits[j]));
  double sum = 0.0;
  for (int64_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(logits[j]) - m);
  return static_cast<double>(logits[i]) - m - std::log(sum);
}

std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

// An independent model of the filters in double precision: (token, probability)
// of the kept tokens in (prob desc, id asc) order, probabilities renormalised.
std::vector<std::pair<int32_t, double>> Filtered(const std::vector<float>& logits,
                                                 const SampleParams& p) {
  const auto vocab = static_cast<int64_t>(logits.size());
  double m = -kInf;
  for (float l : logits) m = std::max(m, static_cast<double>(l));
  std::vector<std::pair<int32_t, double>> t;
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double e = std::exp((static_cast<double>(logits[i]) - m) / p.temperature);
    t.emplace_back(static_cast<int32_t>(i), e);
    total += e;
  }
  for (auto& [id, q] : t) q /= total;
  std::stable_sort(t.begin(), t.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  if (p.top_k > 0 && p.top_k < vocab) t.resize(static_cast<size_t>(p.top_k));
  double mass = 0.0;
  for (const auto& x : t) mass += x.second;
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    size_t keep = 0;
    while (keep < t.size()) {
      cum += t[keep++].second;
      if (cum >= p.top_p * mass) break;
    }
    t.resize(keep);
  }
  const double floor = p.min_p * t[0].second;
  size_t keep = 1;
  while (keep < t.size() && t[keep].second >= floor) ++keep;
  t.resize(keep);
  mass = 0.0;
  for (const auto& x : t) mass += x.second;
  for (auto& x : t) x.second /= mass;
  return t;
}

std::vector<int32_t> Ids(const std::vector<std::pair<int32_t, double>>& f) {
  std::vector<int32_t> ids;
  for (const auto& x : f) ids.push_back(x.first);
  return ids;
}

// The inverse-CDF pick of the model for uniform u; -1 when u lies within
// `margin` of a CDF boundary (where float rounding may decide either way).
int32_t ModelPick(const std::vector<std::pair<int32_t, double>>& f, double u, double margin) {
  double cum = 0.0;
  for (const auto& [id, q] : f) {
    const double next = cum + q;
    if (std::fabs(u - next) < margin && next < 1.0 - 1e-12) return -1;
    if (u < next) return id;
    cum = next;
  }
  return f.back().first;
}

// Checks the kernel's draws against the model's for steps [0, num_steps).
void ExpectMatchesModel(const std::vector<float>& logits, SampleParams p, int num_steps,
                        const std::string& what) {
  const auto f = Filtered(logits, p);
  int checked = 0;
  for (int s = 0; s < num_steps; ++s) {
    p.step = static_cast<uint64_t>(s);
    const int32_t want = ModelPick(f, CounterUniform(p.seed, p.step), 1e-5);
    if (want < 0) continue;
    ++checked;
    ASSERT_EQ(CpuToken(logits, p), want) << what << " step " << s;
  }
  EXPECT_GT(checked, num_steps / 2) << what;
}

// ---- CPU -------------------------------------------------------------------

TEST(SampleTokensCpuTest, GreedyPicksTheArgmaxAndTiesGoToTheLowerId) {
  EXPECT_EQ(CpuToken({1.0f, 3.0f, 3.0f, 2.0f}, Params(0.0f)), 1);
  EXPECT_EQ(CpuToken({-5.0f, -4.0f, -4.5f}, Params(0.0f)), 1);
  // Filters and seeds do not change a greedy pick.
  EXPECT_EQ(CpuToken({0.0f, 1.0f, 9.0f}, Params(0.0f, 1, 0.1f, 0.9f, 42, 7)), 2);
  // NaN counts as -inf; +inf as the largest value.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(CpuToken({nan, -1.0f, 5.0f, nan}, Params(0.0f)), 2);
  EXPECT_EQ(CpuToken({1.0f, kInf, kInf}, Params(0.0f)), 1);
}

TEST(SampleTokensCpuTest, RowWithoutFiniteLogitsGivesTokenZero) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> logits = {-kInf, nan, -kInf, -kInf, nan, nan};
  const Sampled s = CpuSample(logits, 3, {Params(0.0f), Params(1.0f, 0, 0.9f, 0.1f, 3, 4)});
  EXPECT_EQ(s.tokens, (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(s.logprobs[0], -kInf);
  EXPECT_EQ(s.logprobs[1], -kInf);
}

TEST(SampleTokensCpuTest, InfiniteLogitsShareTheMass) {
  const std::vector<float> logits = {1.0f, kInf, 0.0f, kInf};
  int seen[4] = {0, 0, 0, 0};
  for (int s = 0; s < 200; ++s) ++seen[CpuToken(logits, Params(1.0f, 0, 1.0f, 0.0f, 5, s))];
  EXPECT_EQ(seen[0] + seen[2], 0);
  EXPECT_GT(seen[1], 50);
  EXPECT_GT(seen[3], 50);
  const Sampled one = CpuSample(logits, 4, {Params(1.0f)});
  EXPECT_NEAR(one.logprobs[0], std::log(0.5), 1e-6);
}

TEST(SampleTokensCpuTest, ParameterErrorsNameTheRowAndTheField) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<std::pair<SampleParams, std::string>> cases = {
      {Params(-0.5f), "temperature"},         {Params(nan), "temperature"},
      {Params(kInf), "temperature"},          {Params(1.0f, -1), "top_k"},
      {Params(1.0f, 0, 0.0f), "top_p"},       {Params(1.0f, 0, 1.5f), "top_p"},
      {Params(1.0f, 0, nan), "top_p"},        {Params(1.0f, 0, 1.0f, -0.1f), "min_p"},
      {Params(1.0f, 0, 1.0f, 1.1f), "min_p"}, {Params(1.0f, 0, 1.0f, nan), "min_p"},
  };
  const std::vector<float> logits(8, 0.0f);
  for (const auto& [bad, field] : cases) {
    const std::vector<SampleParams> params = {Params(1.0f), bad};
    std::vector<int32_t> tokens(2, -7);
    const absl::Status st =
        SampleTokens(kCpu, logits.data(), 2, 4, params.data(), tokens.data(), nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(st.message().find("row 1"), std::string::npos) << st;
    EXPECT_NE(st.message().find(field), std::string::npos) << st;
    EXPECT_EQ(tokens, (std::vector<int32_t>{-7, -7})) << "nothing written on error";
  }
  // Boundary values are valid.
  const std::vector<SampleParams> ok = {Params(0.0f, 0, 1.0f, 0.0f), Params(2.0f, 3, 1e-6f, 1.0f)};
  std::vector<int32_t> tokens(2);
  EXPECT_TRUE(SampleTokens(kCpu, logits.data(), 2, 4, ok.data(), tokens.data(), nullptr).ok());
}

TEST(SampleTokensCpuTest, ZeroRowsIsANoOp) {
  EXPECT_TRUE(SampleTokens(kCpu, nullptr, 0, 16, nullptr, nullptr, nullptr).ok());
}

TEST(SampleTokensCpuTest, LogprobsAreTheRawLogSoftmaxWhateverTheSettings) {
  const int64_t vocab = 1000;
  std::vector<float> logits(2 * vocab);
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  for (float& x : logits) x = dist(rng);
  const std::vector<SampleParams> settings = {Params(0.0f), Params(1.0f), Params(0.3f, 5),
                                              Params(2.0f, 0, 0.5f, 0.1f, 9, 1)};
  for (const SampleParams& p : settings) {
    const Sampled s = CpuSample(logits, vocab, {p, p});
    for (int64_t r = 0; r < 2; ++r) {
      EXPECT_NEAR(s.logprobs[r], LogSoftmax(logits.data() + r * vocab, vocab, s.tokens[r]), 1e-5)
          << "temperature " << p.temperature;
    }
  }
}

// p = {0.5, 0.3, 0.15, 0.05} over ids {0, 1, 2, 3} unless a test says otherwise.
const std::vector<double> kProbs = {0.5, 0.3, 0.15, 0.05};

TEST(SampleTokensCpuTest, PlainSamplingFollowsTheDistribution) {
  const auto logits = LogitsOf(kProbs);
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f))), (std::vector<int32_t>{0, 1, 2, 3}));
  ExpectMatchesModel(logits, Params(1.0f, 0, 1.0f, 0.0f, 17), 400, "plain");
}

TEST(SampleTokensCpuTest, TemperatureReshapesTheDistribution) {
  // p = {0.64, 0.36} at T = 2: proportional to {0.8, 0.6}, i.e. {4/7, 3/7}.
  const auto logits = LogitsOf({0.64, 0.36});
  const auto f = Filtered(logits, Params(2.0f));
  EXPECT_NEAR(f[0].second, 4.0 / 7.0, 1e-6);  // float logits
  ExpectMatchesModel(logits, Params(2.0f, 0, 1.0f, 0.0f, 3), 400, "T=2");
  ExpectMatchesModel(logits, Params(0.25f, 0, 1.0f, 0.0f, 3), 400, "T=0.25");
}

TEST(SampleTokensCpuTest, TopKKeepsTheKMostLikely) {
  const auto logits = LogitsOf({0.05, 0.5, 0.15, 0.3});
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 2))), (std::vector<int32_t>{1, 3}));
  ExpectMatchesModel(logits, Params(1.0f, 2, 1.0f, 0.0f, 1), 400, "top_k=2");
  for (int s = 0; s < 100; ++s) EXPECT_EQ(CpuToken(logits, Params(1.0f, 1, 1.0f, 0.0f, 2, s)), 1);
  // top_k at or beyond the vocabulary keeps everything.
  ExpectMatchesModel(logits, Params(1.0f, 4, 1.0f, 0.0f, 4), 200, "top_k=vocab");
  ExpectMatchesModel(logits, Params(1.0f, 99, 1.0f, 0.0f, 4), 200, "top_k>vocab");
}

TEST(SampleTokensCpuTest, TopKTiesAtTheBoundaryKeepTheLowerIds) {
  const std::vector<float> logits = {0.0f, 2.0f, 2.0f, 2.0f, 1.0f};
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 2))), (std::vector<int32_t>{1, 2}));
  int seen[5] = {0, 0, 0, 0, 0};
  for (int s = 0; s < 1000; ++s) ++seen[CpuToken(logits, Params(1.0f, 2, 1.0f, 0.0f, 8, s))];
  EXPECT_EQ(seen[0] + seen[3] + seen[4], 0);
  EXPECT_GT(seen[1], 400);
  EXPECT_GT(seen[2], 400);
}

TEST(SampleTokensCpuTest, TopPKeepsTheSmallestPrefixReachingP) {
  const auto logits = LogitsOf(kProbs);
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 0, 0.7f))), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 0, 0.85f))), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 0, 0.4f))), (std::vector<int32_t>{0}));
  ExpectMatchesModel(logits, Params(1.0f, 0, 0.7f, 0.0f, 5), 400, "top_p=0.7");
  ExpectMatchesModel(logits, Params(1.0f, 0, 0.85f, 0.0f, 5), 400, "top_p=0.85");
  for (int s = 0; s < 100; ++s) {
    EXPECT_EQ(CpuToken(logits, Params(1.0f, 0, 0.4f, 0.0f, 6, s)), 0);
    EXPECT_EQ(CpuToken(logits, Params(1.0f, 0, 1e-7f, 0.0f, 6, s)), 0) << "always keeps one";
  }
}

TEST(SampleTokensCpuTest, TopPTiesAtTheBoundaryKeepTheLowerIds) {
  // Four equal tokens: the cumulative mass reaches 0.5 exactly at the second.
  const std::vector<float> logits = {3.0f, 3.0f, 3.0f, 3.0f};
  int seen[4] = {0, 0, 0, 0};
  for (int s = 0; s < 1000; ++s) ++seen[CpuToken(logits, Params(1.0f, 0, 0.5f, 0.0f, 9, s))];
  EXPECT_EQ(seen[2] + seen[3], 0);
  EXPECT_GT(seen[0], 400);
  EXPECT_GT(seen[1], 400);
}

TEST(SampleTokensCpuTest, MinPDropsTokensBelowAFractionOfTheMax) {
  const auto logits = LogitsOf(kProbs);
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 0, 1.0f, 0.5f))), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 0, 1.0f, 0.2f))), (std::vector<int32_t>{0, 1, 2}));
  ExpectMatchesModel(logits, Params(1.0f, 0, 1.0f, 0.5f, 10), 400, "min_p=0.5");
  ExpectMatchesModel(logits, Params(1.0f, 0, 1.0f, 0.2f, 10), 400, "min_p=0.2");
  // min_p = 1 keeps only the most likely token(s).
  for (int s = 0; s < 100; ++s) EXPECT_EQ(CpuToken(logits, Params(1.0f, 0, 1.0f, 1.0f, 1, s)), 0);
}

TEST(SampleTokensCpuTest, FiltersApplyInOrderTopKThenTopPThenMinP) {
  // top-p works on the renormalised top-k set: with top_k = 2 the first token
  // has 0.4 / 0.7 = 0.571 >= 0.55, so it alone is kept (0.4 < 0.55 would keep two).
  const auto logits = LogitsOf({0.4, 0.3, 0.2, 0.1});
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 2, 0.55f))), (std::vector<int32_t>{0}));
  EXPECT_EQ(Ids(Filtered(logits, Params(1.0f, 0, 0.55f))), (std::vector<int32_t>{0, 1}));
  for (int s = 0; s < 100; ++s) EXPECT_EQ(CpuToken(logits, Params(1.0f, 2, 0.55f, 0.0f, 2, s)), 0);
  ExpectMatchesModel(logits, Params(1.0f, 0, 0.55f, 0.0f, 2), 400, "top_p alone");
  // All three: top-3 {0.4, 0.3, 0.2}, top_p 0.7 of 0.9 -> {0, 1}, min_p 0.8 -> {0}.
  const auto combined = Params(1.0f, 3, 0.7f, 0.0f, 12);
  EXPECT_EQ(Ids(Filtered(logits, combined)), (std::vector<int32_t>{0, 1}));
  ExpectMatchesModel(logits, combined, 400, "top_k+top_p");
  auto with_min_p = combined;
  with_min_p.min_p = 0.8f;
  EXPECT_EQ(Ids(Filtered(logits, with_min_p)), (std::vector<int32_t>{0}));
  ExpectMatchesModel(logits, with_min_p, 100, "top_k+top_p+min_p");
  // Temperature comes first: at T = 4 the top-3 set is flatter, so top_p 0.7 keeps three.
  const auto hot = Params(4.0f, 3, 0.7f, 0.0f, 13);
  EXPECT_EQ(Ids(Filtered(logits, hot)), (std::vector<int32_t>{0, 1, 2}));
  ExpectMatchesModel(logits, hot, 400, "T=4 top_k+top_p");
}

TEST(SampleTokensCpuTest, DrawsAreDeterministicPerSeedAndStep) {
  const int64_t vocab = 5000;
  std::vector<float> logits(vocab);
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  for (float& x : logits) x = dist(rng);
  std::vector<SampleParams> params;
  for (int s = 0; s < 32; ++s) params.push_back(Params(1.0f, 0, 0.95f, 0.0f, 77, s));
  std::vector<float> rows;
  for (int s = 0; s < 32; ++s) rows.insert(rows.end(), logits.begin(), logits.end());
  const Sampled a = CpuSample(rows, vocab, params);
  const Sampled b = CpuSample(rows, vocab, params);
  EXPECT_EQ(a.tokens, b.tokens);
  // A row alone draws what it draws in a batch.
  for (int s = 0; s < 32; ++s) EXPECT_EQ(CpuToken(logits, params[s]), a.tokens[s]);
  // Different steps (and seeds) give different draws.
  std::vector<int32_t> distinct = a.tokens;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  EXPECT_GT(distinct.size(), 8u);
}

// Frequencies over many steps against the model: a chi-square statistic with
// a loose bound. The seeds are fixed, so the outcome is deterministic.
void ExpectFrequenciesMatch(const std::vector<float>& logits, SampleParams p, int num_steps) {
  const auto f = Filtered(logits, p);
  std::vector<int> counts(logits.size(), 0);
  std::vector<SampleParams> params;
  for (int s = 0; s < num_steps; ++s) {
    p.step = static_cast<uint64_t>(s);
    params.push_back(p);
  }
  std::vector<float> rows;
  for (int s = 0; s < num_steps; ++s) rows.insert(rows.end(), logits.begin(), logits.end());
  const Sampled got = CpuSample(rows, static_cast<int64_t>(logits.size()), params);
  for (int32_t t : got.tokens) ++counts[t];
  std::vector<bool> kept(logits.size(), false);
  double chi2 = 0.0;
  for (const auto& [id, q] : f) {
    kept[id] = true;
    const double expected = q * num_steps;
    chi2 += (counts[id] - expected) * (counts[id] - expected) / expected;
  }
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!kept[i]) {
      EXPECT_EQ(counts[i], 0) << "filtered token " << i << " drawn";
    }
  }
  const double df = static_cast<double>(f.size()) - 1.0;
  // Mean df, sd sqrt(2 df): 8 standard deviations above the mean.
  EXPECT_LT(chi2, df + 8.0 * std::sqrt(2.0 * df) + 1.0) << "kept " << f.size();
}

TEST(SampleTokensCpuTest, FrequenciesMatchTheFilteredDistribution) {
  const std::vector<float> logits = {0.3f, 1.2f, -0.4f, 2.0f, 0.9f, -1.5f, 1.7f, 0.0f, -0.7f, 1.1f};
  ExpectFrequenciesMatch(logits, Params(1.3f, 0, 1.0f, 0.0f, 1234), 20000);
  ExpectFrequenciesMatch(logits, Params(0.8f, 6, 0.9f, 0.05f, 99), 20000);
  ExpectFrequenciesMatch(logits, Params(1.0f, 0, 0.8f, 0.0f, 7), 20000);
  ExpectFrequenciesMatch(logits, Params(1.0f, 0, 1.0f, 0.2f, 8), 20000);
}

// ---- CUDA against the CPU --------------------------------------------------

constexpr int64_t kQwenVocab = 151936;

class SampleTokensCudaTest : public CudaTest {
 protected:
  // Runs the CUDA kernel; logprobs are fetched only when `with_logprobs`.
  Sampled Gpu(const std::vector<float>& logits, int64_t vocab,
              const std::vector<SampleParams>& params, bool with_logprobs = true) {
    const auto rows = static_cast<int64_t>(params.size());
    DeviceBuffer d_logits = UploadRaw(logits);
    DeviceBuffer d_params = UploadRaw(params);
    DeviceBuffer d_tokens = Alloc(rows * static_cast<int64_t>(sizeof(int32_t)));
    DeviceBuffer d_logprobs = Alloc(rows * static_cast<int64_t>(sizeof(float)));
    const absl::Status st = SampleTokens(
        gpu(), static_cast<const float*>(d_logits.data()), rows, vocab,
        static_cast<const SampleParams*>(d_params.data()), static_cast<int32_t*>(d_tokens.data()),
        with_logprobs ? static_cast<float*>(d_logprobs.data()) : nullptr);
    EXPECT_TRUE(st.ok()) << st;
    Sampled out;
    out.tokens = DownloadRaw<int32_t>(d_tokens.data(), rows);
    if (with_logprobs) out.logprobs = DownloadRaw<float>(d_logprobs.data(), rows);
    return out;
  }

  // Expects the GPU's tokens equal to the CPU's (at most `max_mismatches`
  // of them off) and logprobs within 1e-5.
  void ExpectMatchesCpu(const std::vector<float>& logits, int64_t vocab,
                        const std::vector<SampleParams>& params, const std::string& what,
                        size_t max_mismatches = 0) {
    const Sampled want = CpuSample(logits, vocab, params);
    const Sampled got = Gpu(logits, vocab, params);
    ASSERT_EQ(got.tokens.size(), want.tokens.size());
    size_t mismatches = 0;
    for (size_t r = 0; r < params.size(); ++r) {
      if (got.tokens[r] != want.tokens[r]) {
        if (++mismatches <= 5) {
          ADD_FAILURE_AT(__FILE__, __LINE__)
              << what << " row " << r << ": gpu " << got.tokens[r] << ", cpu " << want.tokens[r]
              << " (T " << params[r].temperature << " top_k " << params[r].top_k << " top_p "
              << params[r].top_p << " min_p " << params[r].min_p << " step " << params[r].step
              << ")";
        }
        continue;
      }
      const float w = want.logprobs[r], g = got.logprobs[r];
      if (std::isinf(w)) {
        EXPECT_EQ(g, w) << what << " row " << r;
      } else {
        EXPECT_NEAR(g, w, 1e-5) << what << " row " << r;
      }
    }
    if (max_mismatches > 0 && mismatches <= max_mismatches) {
      // Tolerated (rows whose CDF boundary lies within rounding of u).
      ::testing::Test::RecordProperty(what + "_mismatches", static_cast<int>(mismatches));
      return;
    }
    EXPECT_EQ(mismatches, 0u) << what;
  }
};

std::vector<float> NormalLogits(int64_t n, uint32_t seed, float sd, float grid = 0.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sd);
  for (float& x : v) {
    x = dist(rng);
    if (grid > 0.0f) x = std::round(x / grid) * grid;
  }
  return v;
}

// A mix of settings, cycled over rows.
std::vector<SampleParams> Settings(int64_t rows, int64_t vocab, uint64_t step) {
  const std::vector<SampleParams> mix = {
      Params(1.0f),
      Params(0.7f, 50),
      Params(1.0f, 0, 0.9f),
      Params(1.2f, 0, 1.0f, 0.05f),
      Params(0.8f, 40, 0.95f, 0.02f),
      Params(1.0f, 1),
      Params(1.5f, static_cast<int32_t>(vocab) + 5),
      Params(0.5f, 0, 0.3f),
      Params(2.0f, 1000, 0.99f),
      Params(0.0f),
      Params(1.0f, static_cast<int32_t>(vocab) - 1, 1.0f, 0.001f),
  };
  std::vector<SampleParams> out;
  for (int64_t r = 0; r < rows; ++r) {
    SampleParams p = mix[static_cast<size_t>(r) % mix.size()];
    p.seed = 1000003ull * static_cast<uint64_t>(r) + 17;
    p.step = step;
    out.push_back(p);
  }
  return out;
}

TEST_F(SampleTokensCudaTest, GreedyMatchesCpuAtQwenVocab) {
  for (int64_t rows : {1, 7, 64}) {
    std::vector<float> logits = NormalLogits(rows * kQwenVocab, static_cast<uint32_t>(rows), 4.0f);
    // Plant ties at the max in some rows: the lower id must win.
    for (int64_t r = 0; r < rows; r += 3) {
      float* row = logits.data() + r * kQwenVocab;
      row[kQwenVocab - 1] = 100.0f;
      row[1000 + r] = 100.0f;
    }
    ExpectMatchesCpu(logits, kQwenVocab, std::vector<SampleParams>(rows, Params(0.0f)),
                     "greedy rows=" + std::to_string(rows));
  }
}

TEST_F(SampleTokensCudaTest, SampledTokensMatchCpuOnWellSeparatedRows) {
  // Logits on a grid of 0.5: few distinct levels, far apart, with many exact
  // ties, so the CPU and the GPU compute the same weights.
  for (int64_t rows : {1, 7, 64}) {
    const std::vector<float> logits =
        NormalLogits(rows * kQwenVocab, 100 + static_cast<uint32_t>(rows), 3.0f, 0.5f);
    for (uint64_t step = 0; step < 6; ++step) {
      ExpectMatchesCpu(logits, kQwenVocab, Settings(rows, kQwenVocab, step),
                       "grid rows=" + std::to_string(rows) + " step=" + std::to_string(step));
    }
  }
}

TEST_F(SampleTokensCudaTest, SampledTokensMatchCpuOverManySteps) {
  // Small vocabulary, many (seed, step) pairs.
  const int64_t vocab = 512, rows = 256;
  const std::vector<float> logits = NormalLogits(rows * vocab, 5, 2.0f, 0.25f);
  for (uint64_t step = 0; step < 40; ++step) {
    ExpectMatchesCpu(logits, vocab, Settings(rows, vocab, step), "step=" + std::to_string(step));
  }
}

TEST_F(SampleTokensCudaTest, SampledTokensMatchCpuOnContinuousRows) {
  // Continuous logits: the weights agree unless the two devices' exp() round
  // differently, which is rare; a handful of mismatches is tolerated.
  const int64_t rows = 64;
  const std::vector<float> logits = NormalLogits(rows * kQwenVocab, 7, 4.0f);
  for (uint64_t step = 0; step < 3; ++step) {
    ExpectMatchesCpu(logits, kQwenVocab, Settings(rows, kQwenVocab, step),
                     "continuous step=" + std::to_string(step), /*max_mismatches=*/2);
  }
}

TEST_F(SampleTokensCudaTest, FilterBoundariesMatchCpu) {
  const int64_t vocab = 4096;
  std::vector<std::vector<float>> rows_logits;
  std::vector<SampleParams> params;
  auto add = [&](std::vector<float> l, SampleParams p) {
    rows_logits.push_back(std::move(l));
    params.push_back(p);
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (uint64_t step = 0; step < 24; ++step) {
    const uint64_t seed = 31 + step;
    // A plateau of 300 equal tokens at the top: top-k cuts inside it.
    std::vector<float> plateau = NormalLogits(vocab, 1, 1.0f, 0.5f);
    for (int i = 0; i < 300; ++i) plateau[static_cast<size_t>(i * 13 % vocab)] = 6.0f;
    add(plateau, Params(1.0f, 100, 1.0f, 0.0f, seed, step));
    add(plateau, Params(1.0f, 300, 1.0f, 0.0f, seed, step));
    add(plateau, Params(1.0f, 301, 1.0f, 0.0f, seed, step));
    // top-p ending inside the plateau, and inside top-k's ties.
    add(plateau, Params(1.0f, 0, 0.2f, 0.0f, seed, step));
    add(plateau, Params(1.0f, 150, 0.5f, 0.0f, seed, step));
    add(plateau, Params(1.0f, 0, 1e-7f, 0.0f, seed, step));
    // min_p at a level, at 1 (only the plateau), at almost 0.
    add(plateau, Params(1.0f, 0, 1.0f, 1.0f, seed, step));
    add(plateau, Params(1.0f, 0, 1.0f, std::exp(-1.0f), seed, step));
    add(plateau, Params(1.0f, 0, 1.0f, 1e-30f, seed, step));
    // Uniform row: the draw's tie rank spans the whole vocabulary.
    add(std::vector<float>(vocab, 0.25f), Params(1.0f, 0, 1.0f, 0.0f, seed, step));
    add(std::vector<float>(vocab, 0.25f), Params(1.0f, 0, 0.5f, 0.0f, seed, step));
    add(std::vector<float>(vocab, 0.25f), Params(1.0f, 4095, 0.999f, 0.0f, seed, step));
    // Tiny and huge temperatures.
    add(plateau, Params(1e-20f, 0, 1.0f, 0.0f, seed, step));
    add(plateau, Params(1e4f, 0, 0.9f, 0.0f, seed, step));
    // NaN and +inf logits.
    std::vector<float> odd = NormalLogits(vocab, 2, 1.0f, 0.5f);
    for (int i = 0; i < vocab; i += 7) odd[static_cast<size_t>(i)] = nan;
    odd[100] = kInf;
    odd[3000] = kInf;
    add(odd, Params(1.0f, 0, 1.0f, 0.0f, seed, step));
    odd[100] = odd[3000] = 1.0f;
    add(odd, Params(1.0f, 10, 0.8f, 0.0f, seed, step));
    add(std::vector<float>(vocab, -kInf), Params(1.0f, 0, 1.0f, 0.0f, seed, step));
  }
  std::vector<float> logits;
  for (const auto& l : rows_logits) logits.insert(logits.end(), l.begin(), l.end());
  ExpectMatchesCpu(logits, vocab, params, "boundaries");
}

TEST_F(SampleTokensCudaTest, IsDeterministicAndWorksWithoutLogprobs) {
  const int64_t rows = 16;
  const std::vector<float> logits = NormalLogits(rows * kQwenVocab, 9, 3.0f);
  const auto params = Settings(rows, kQwenVocab, 3);
  const Sampled a = Gpu(logits, kQwenVocab, params);
  const Sampled b = Gpu(logits, kQwenVocab, params, /*with_logprobs=*/false);
  EXPECT_EQ(a.tokens, b.tokens);
}

TEST_F(SampleTokensCudaTest, ZeroRowsIsANoOp) {
  EXPECT_TRUE(SampleTokens(gpu(), nullptr, 0, kQwenVocab, nullptr, nullptr, nullptr).ok());
}

TEST_F(SampleTokensCudaTest, OutOfRangeParametersGiveTokenMinusOne) {
  // The GPU cannot report a Status without synchronising: bad rows get -1 and NaN.
  const std::vector<float> logits(3 * 64, 0.5f);
  const std::vector<SampleParams> params = {Params(1.0f), Params(-1.0f), Params(1.0f, 0, 2.0f)};
  const Sampled got = Gpu(logits, 64, params);
  EXPECT_GE(got.tokens[0], 0);
  EXPECT_EQ(got.tokens[1], -1);
  EXPECT_EQ(got.tokens[2], -1);
  EXPECT_TRUE(std::isnan(got.logprobs[1]));
}

}  // namespace
}  // namespace sy::kernels
