// Tests of the dense kernels (Linear, Embedding, RmsNorm, Add, SiluMul, Rope,
// CacheWrite, GroupedExpertFfn) and of the dispatcher, each against a plain
// double-precision loop written here. Attention and routing tests live in
// kernels_attention_test.cc and kernels_moe_test.cc.
#include "kernels/kernels.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels_test_util.h"

namespace sy::kernels {
namespace {

using ::sy::kernels::testing::ExpectAllNear;
using ::sy::kernels::testing::RandomVector;

constexpr Context kCpu{};
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------- Linear

struct LinearCase {
  int64_t m, n, k;
};

std::vector<double> NaiveLinear(const std::vector<float>& x, const std::vector<float>& w,
                                const float* bias, int64_t m, int64_t n, int64_t k) {
  std::vector<double> y(static_cast<size_t>(m * n));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = bias != nullptr ? bias[j] : 0.0;
      for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(x[r * k + i]) * w[j * k + i];
      y[static_cast<size_t>(r * n + j)] = acc;
    }
  }
  return y;
}

TEST(LinearTest, MatchesNaiveWithAndWithoutBias) {
  const LinearCase cases[] = {{1, 1, 1},    {1, 7, 13},    {1, 64, 100},  {3, 5, 9},
                              {17, 33, 70}, {64, 31, 127}, {2, 130, 257}, {5, 8, 0}};
  uint32_t seed = 1;
  for (const LinearCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "m=" << c.m << " n=" << c.n << " k=" << c.k);
    const auto x = RandomVector(static_cast<size_t>(c.m * c.k), seed++);
    const auto w = RandomVector(static_cast<size_t>(c.n * c.k), seed++);
    const auto bias = RandomVector(static_cast<size_t>(c.n), seed++);
    for (const bool with_bias : {false, true}) {
      const float* b = with_bias ? bias.data() : nullptr;
      // Stale NaNs in the output must not leak through.
      std::vector<float> y(static_cast<size_t>(c.m * c.n), kNaN);
      ASSERT_TRUE(Linear(kCpu, DType::kF32, x.data(), w.data(), b, y.data(), c.m, c.n, c.k).ok());
      ExpectAllNear(y, NaiveLinear(x, w, b, c.m, c.n, c.k), 1e-5);
    }
  }
}

TEST(LinearTest, EmptyOutputIsANoOp) {
  EXPECT_TRUE(Linear(kCpu, DType::kF32, nullptr, nullptr, nullptr, nullptr, 0, 4, 3).ok());
  EXPECT_TRUE(Linear(kCpu, DType::kF32, nullptr, nullptr, nullptr, nullptr, 4, 0, 3).ok());
}

// ------------------------------------------------------------- Embedding

TEST(EmbeddingTest, GathersRows) {
  const int64_t vocab = 11;
  const int64_t hidden = 5;
  const auto table = RandomVector(static_cast<size_t>(vocab * hidden), 7);
  const std::vector<int32_t> ids = {3, 0, 10, 3, 7};
  std::vector<float> out(ids.size() * hidden, kNaN);
  ASSERT_TRUE(Embedding(kCpu, DType::kF32, ids.data(), static_cast<int64_t>(ids.size()),
                        table.data(), vocab, hidden, out.data())
                  .ok());
  for (size_t t = 0; t < ids.size(); ++t) {
    for (int64_t j = 0; j < hidden; ++j) {
      EXPECT_EQ(out[t * hidden + j], table[ids[t] * hidden + j]) << "t=" << t << " j=" << j;
    }
  }
}

TEST(EmbeddingTest, LargeBatchUsesEveryId) {
  const int64_t vocab = 1000;
  const int64_t hidden = 96;
  const auto table = RandomVector(static_cast<size_t>(vocab * hidden), 8);
  std::vector<int32_t> ids(2000);
  for (size_t t = 0; t < ids.size(); ++t) ids[t] = static_cast<int32_t>((t * 7919) % vocab);
  std::vector<float> out(ids.size() * hidden);
  ASSERT_TRUE(Embedding(kCpu, DType::kF32, ids.data(), static_cast<int64_t>(ids.size()),
                        table.data(), vocab, hidden, out.data())
                  .ok());
  for (size_t t = 0; t < ids.size(); ++t) {
    ASSERT_EQ(out[t * hidden + hidden - 1], table[ids[t] * hidden + hidden - 1]) << t;
  }
}

TEST(EmbeddingTest, RejectsOutOfRangeIds) {
  const auto table = RandomVector(4 * 3, 9);
  std::vector<float> out(3);
  for (const int32_t bad : {4, -1}) {
    const absl::Status status =
        Embedding(kCpu, DType::kF32, &bad, 1, table.data(), 4, 3, out.data());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
}

// --------------------------------------------------------------- RmsNorm

std::vector<double> NaiveRmsNorm(const std::vector<float>& x, int64_t x_stride,
                                 const std::vector<float>& w, int64_t rows, int64_t dim,
                                 float eps) {
  std::vector<double> y(static_cast<size_t>(rows * dim));
  for (int64_t r = 0; r < rows; ++r) {
    double sum_sq = 0.0;
    for (int64_t i = 0; i < dim; ++i)
      sum_sq += static_cast<double>(x[r * x_stride + i]) * x[r * x_stride + i];
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i)
      y[static_cast<size_t>(r * dim + i)] = x[r * x_stride + i] * inv * w[i];
  }
  return y;
}

TEST(RmsNormTest, StridedRowsMatchNaive) {
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {1, 64}, {3, 5}, {7, 129}, {600, 128}};
  uint32_t seed = 20;
  for (const auto& [rows, dim] : shapes) {
    SCOPED_TRACE(::testing::Message() << "rows=" << rows << " dim=" << dim);
    const int64_t x_stride = dim + 3;
    const int64_t y_stride = dim + 1;
    const float eps = 1e-6f;
    const auto x = RandomVector(static_cast<size_t>(rows * x_stride), seed++, -2.0f, 2.0f);
    const auto w = RandomVector(static_cast<size_t>(dim), seed++, 0.5f, 1.5f);
    std::vector<float> y(static_cast<size_t>(rows * y_stride), 42.0f);
    ASSERT_TRUE(
        RmsNorm(kCpu, DType::kF32, x.data(), x_stride, w.data(), y.data(), y_stride, rows, dim, eps)
            .ok());
    std::vector<float> packed;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < dim; ++i) packed.push_back(y[r * y_stride + i]);
      EXPECT_EQ(y[r * y_stride + dim], 42.0f) << "row padding overwritten, row " << r;
    }
    ExpectAllNear(packed, NaiveRmsNorm(x, x_stride, w, rows, dim, eps), 1e-5);
  }
}

TEST(RmsNormTest, InPlacePerHead) {
  // Per-head q norm: rows = tokens * heads, each head row inside a wider token row.
  const int64_t tokens = 3, heads = 4, head_dim = 10, stride = head_dim;
  const int64_t rows = tokens * heads;
  auto x = RandomVector(static_cast<size_t>(rows * stride), 30);
  const auto w = RandomVector(static_cast<size_t>(head_dim), 31);
  const auto want = NaiveRmsNorm(x, stride, w, rows, head_dim, 1e-5f);
  ASSERT_TRUE(RmsNorm(kCpu, DType::kF32, x.data(), stride, w.data(), x.data(), stride, rows,
                      head_dim, 1e-5f)
                  .ok());
  ExpectAllNear(x, want, 1e-5);
}

// ------------------------------------------------------------ Add, SiluMul

TEST(AddTest, AddsInPlace) {
  for (const int64_t n : {0, 1, 17, 300001}) {
    auto y = RandomVector(static_cast<size_t>(n), 40);
    const auto x = RandomVector(static_cast<size_t>(n), 41);
    std::vector<float> want(y.size());
    for (size_t i = 0; i < y.size(); ++i) want[i] = y[i] + x[i];
    ASSERT_TRUE(Add(kCpu, DType::kF32, y.data(), x.data(), n).ok());
    EXPECT_EQ(y, want) << "n=" << n;
  }
}

TEST(SiluMulTest, MatchesNaive) {
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {1, 7}, {3, 33}, {40, 600}};
  uint32_t seed = 50;
  for (const auto& [rows, inter] : shapes) {
    auto in = RandomVector(static_cast<size_t>(rows * 2 * inter), seed++, -6.0f, 6.0f);
    in[0] = -100.0f;  // exp overflows: silu must still be -0, not NaN
    if (inter > 1) in[1] = 100.0f;
    std::vector<float> out(static_cast<size_t>(rows * inter), kNaN);
    ASSERT_TRUE(SiluMul(kCpu, DType::kF32, in.data(), out.data(), rows, inter).ok());
    std::vector<double> want(out.size());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < inter; ++i) {
        const double g = in[r * 2 * inter + i];
        const double u = in[r * 2 * inter + inter + i];
        want[static_cast<size_t>(r * inter + i)] = g / (1.0 + std::exp(-g)) * u;
      }
    }
    ExpectAllNear(out, want, 1e-5);
  }
}

// ------------------------------------------------------------------ Rope

std::vector<float> InvFreq(int64_t rotary_dim, double base) {
  std::vector<float> f(static_cast<size_t>(rotary_dim / 2));
  for (size_t i = 0; i < f.size(); ++i) {
    f[i] = static_cast<float>(1.0 / std::pow(base, 2.0 * static_cast<double>(i) / rotary_dim));
  }
  return f;
}

// Rotates one head in double; the angle is formed in fp32 like the kernel.
void NaiveRopeHead(std::vector<double>& h, int32_t pos, const RopeParams& p) {
  const int64_t half = p.rotary_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * p.inv_freq[i];
    const double c = std::cos(static_cast<double>(angle)) * p.attention_scaling;
    const double s = std::sin(static_cast<double>(angle)) * p.attention_scaling;
    const int64_t a = p.interleaved ? 2 * i : i;
    const int64_t b = p.interleaved ? 2 * i + 1 : i + half;
    const double a0 = h[a];
    const double b0 = h[b];
    h[a] = a0 * c - b0 * s;
    h[b] = b0 * c + a0 * s;
  }
}

struct RopeCase {
  int64_t num_tokens, num_heads, head_dim, rotary_dim;
  bool interleaved;
  float scaling;
};

TEST(RopeTest, MatchesNaiveAndLeavesTailAlone) {
  const RopeCase cases[] = {
      {1, 1, 8, 8, false, 1.0f},     {3, 4, 16, 16, false, 1.0f},   {3, 4, 16, 16, true, 1.0f},
      {5, 3, 64, 32, false, 1.0f},   {5, 3, 64, 32, true, 1.0f},    {7, 2, 24, 6, true, 1.3f},
      {2, 5, 128, 64, false, 1.25f}, {300, 8, 64, 64, false, 1.0f}, {300, 8, 64, 64, true, 1.0f},
      {4, 2, 10, 0, false, 1.0f},
  };
  uint32_t seed = 60;
  for (const RopeCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "tokens=" << c.num_tokens << " heads=" << c.num_heads
                                      << " head_dim=" << c.head_dim << " rot=" << c.rotary_dim
                                      << " interleaved=" << c.interleaved);
    const int64_t head_stride = c.head_dim + 2;  // padding between heads stays untouched
    const int64_t token_stride = c.num_heads * head_stride + 5;
    const auto inv_freq = InvFreq(c.rotary_dim, 10000.0);
    RopeParams params{c.rotary_dim, c.interleaved, inv_freq.data(), c.scaling};
    std::vector<int32_t> positions(static_cast<size_t>(c.num_tokens));
    std::mt19937 rng(seed);
    for (auto& p : positions) p = static_cast<int32_t>(rng() % 5000);
    positions[0] = 0;
    const auto x0 = RandomVector(static_cast<size_t>(c.num_tokens * token_stride), seed++);
    auto x = x0;
    ASSERT_TRUE(Rope(kCpu, DType::kF32, x.data(), c.num_tokens, c.num_heads, token_stride,
                     head_stride, positions.data(), params)
                    .ok());
    std::vector<float> got;
    std::vector<double> want;
    for (int64_t t = 0; t < c.num_tokens; ++t) {
      for (int64_t h = 0; h < c.num_heads; ++h) {
        const int64_t base = t * token_stride + h * head_stride;
        std::vector<double> head(x0.begin() + base, x0.begin() + base + c.head_dim);
        NaiveRopeHead(head, positions[t], params);
        for (int64_t i = 0; i < c.rotary_dim; ++i) {
          got.push_back(x[base + i]);
          want.push_back(head[i]);
        }
        for (int64_t i = c.rotary_dim; i < head_stride; ++i) {
          ASSERT_EQ(x[base + i], x0[base + i]) << "tail/padding changed at t=" << t << " h=" << h;
        }
      }
      for (int64_t i = c.num_heads * head_stride; i < token_stride; ++i) {
        ASSERT_EQ(x[t * token_stride + i], x0[t * token_stride + i]);
      }
    }
    ExpectAllNear(got, want, 2e-5);
  }
}

// Rotating q at position m and k at position n gives a dot product that only
// depends on m - n (and scaling^2 times the norms' product when unrotated).
TEST(RopeTest, DotProductDependsOnlyOnPositionDifference) {
  const int64_t dim = 64;
  const auto inv_freq = InvFreq(dim, 10000.0);
  const auto q = RandomVector(dim, 70);
  const auto k = RandomVector(dim, 71);
  for (const bool interleaved : {false, true}) {
    SCOPED_TRACE(interleaved ? "interleaved" : "neox");
    RopeParams params{dim, interleaved, inv_freq.data(), 1.0f};
    auto rotated_dot = [&](int32_t pq, int32_t pk) {
      auto qr = q;
      auto kr = k;
      EXPECT_TRUE(Rope(kCpu, DType::kF32, qr.data(), 1, 1, dim, dim, &pq, params).ok());
      EXPECT_TRUE(Rope(kCpu, DType::kF32, kr.data(), 1, 1, dim, dim, &pk, params).ok());
      double dot = 0.0;
      for (int64_t i = 0; i < dim; ++i) dot += static_cast<double>(qr[i]) * kr[i];
      return dot;
    };
    double plain = 0.0;
    for (int64_t i = 0; i < dim; ++i) plain += static_cast<double>(q[i]) * k[i];
    EXPECT_NEAR(rotated_dot(5, 5), plain, 1e-5);
    for (const int32_t delta : {0, 1, 3, 17, 100}) {
      const double ref = rotated_dot(delta, 0);
      for (const int32_t shift : {1, 7, 64, 250}) {
        EXPECT_NEAR(rotated_dot(delta + shift, shift), ref, 2e-4)
            << "delta=" << delta << " shift=" << shift;
      }
    }
    // A different offset does change the product (the rotation is not trivial).
    EXPECT_GT(std::fabs(rotated_dot(3, 0) - rotated_dot(4, 0)), 1e-3);
  }
}

// --------------------------------------------------------------- CacheWrite

TEST(CacheWriteTest, WritesSlotsAndSkipsNegative) {
  const int64_t num_tokens = 5, row_elems = 6, src_stride = 9, num_slots = 12;
  const auto src = RandomVector(static_cast<size_t>(num_tokens * src_stride), 80);
  const std::vector<int32_t> slots = {7, -1, 0, 11, 3};
  std::vector<float> cache(static_cast<size_t>(num_slots * row_elems), -5.0f);
  ASSERT_TRUE(CacheWrite(kCpu, DType::kF32, src.data(), src_stride, num_tokens, row_elems,
                         slots.data(), cache.data())
                  .ok());
  std::vector<float> want(cache.size(), -5.0f);
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (slots[t] < 0) continue;
    for (int64_t j = 0; j < row_elems; ++j)
      want[slots[t] * row_elems + j] = src[t * src_stride + j];
  }
  EXPECT_EQ(cache, want);
}

// --------------------------------------------------------- GroupedExpertFfn

TEST(GroupedExpertFfnTest, MatchesPerRowNaive) {
  struct Case {
    int64_t hidden, inter;
    std::vector<int64_t> rows_per_expert;
  };
  const Case cases[] = {
      {13, 7, {3, 0, 1, 5}}, {64, 96, {1, 1}}, {33, 20, {0, 0, 9}}, {128, 64, {40, 0, 70, 2, 0}}};
  uint32_t seed = 90;
  for (const Case& c : cases) {
    const auto num_experts = static_cast<int64_t>(c.rows_per_expert.size());
    SCOPED_TRACE(::testing::Message()
                 << "hidden=" << c.hidden << " inter=" << c.inter << " experts=" << num_experts);
    std::vector<int64_t> offsets(1, 0);
    for (const int64_t r : c.rows_per_expert) offsets.push_back(offsets.back() + r);
    const int64_t rows = offsets.back();
    const auto x = RandomVector(static_cast<size_t>(rows * c.hidden), seed++);
    std::vector<std::vector<float>> gate_up, down;
    std::vector<const void*> gate_up_ptrs, down_ptrs;
    for (int64_t e = 0; e < num_experts; ++e) {
      // Weights at the usual 1/sqrt(fan_in) scale keep activations O(1).
      const auto gu_range = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.hidden)));
      const auto dn_range = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.inter)));
      gate_up.push_back(
          RandomVector(static_cast<size_t>(2 * c.inter * c.hidden), seed++, -gu_range, gu_range));
      down.push_back(
          RandomVector(static_cast<size_t>(c.hidden * c.inter), seed++, -dn_range, dn_range));
      // Experts without rows may have no weights at all.
      const bool empty = c.rows_per_expert[static_cast<size_t>(e)] == 0;
      gate_up_ptrs.push_back(empty ? nullptr : gate_up.back().data());
      down_ptrs.push_back(empty ? nullptr : down.back().data());
    }
    std::vector<float> out(static_cast<size_t>(rows * c.hidden), kNaN);
    ASSERT_TRUE(GroupedExpertFfn(kCpu, DType::kF32, x.data(), offsets.data(), num_experts, rows,
                                 gate_up_ptrs.data(), down_ptrs.data(), c.hidden, c.inter,
                                 out.data())
                    .ok());
    std::vector<double> want(out.size());
    for (int64_t e = 0; e < num_experts; ++e) {
      const auto& gu = gate_up[static_cast<size_t>(e)];
      const auto& dn = down[static_cast<size_t>(e)];
      for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
        std::vector<double> act(static_cast<size_t>(c.inter));
        for (int64_t i = 0; i < c.inter; ++i) {
          double g = 0.0, u = 0.0;
          for (int64_t j = 0; j < c.hidden; ++j) {
            g += static_cast<double>(gu[i * c.hidden + j]) * x[r * c.hidden + j];
            u += static_cast<double>(gu[(c.inter + i) * c.hidden + j]) * x[r * c.hidden + j];
          }
          act[static_cast<size_t>(i)] = g / (1.0 + std::exp(-g)) * u;
        }
        for (int64_t j = 0; j < c.hidden; ++j) {
          double acc = 0.0;
          for (int64_t i = 0; i < c.inter; ++i)
            acc += dn[j * c.inter + i] * act[static_cast<size_t>(i)];
          want[static_cast<size_t>(r * c.hidden + j)] = acc;
        }
      }
    }
    ExpectAllNear(out, want, 2e-5);
  }
}

// --------------------------------------------------------------- Dispatch

void ExpectUnimplemented(const absl::Status& status, const std::string& fn,
                         const std::string& device, const std::string& dtype) {
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
  const std::string message(status.message());
  EXPECT_NE(message.find(fn), std::string::npos) << message;
  EXPECT_NE(message.find(device), std::string::npos) << message;
  EXPECT_NE(message.find(dtype), std::string::npos) << message;
}

TEST(DispatchTest, UnsupportedDeviceOrDtypeIsUnimplemented) {
  const Context cuda{Device::kCuda, nullptr};
  struct Combo {
    Context ctx;
    DType dtype;
    const char* device_name;
    const char* dtype_name;
  };
  // CUDA contexts: f16 has no kernels (Unimplemented) in any build; see
  // CudaContextTest for f32/bf16.
  const Combo combos[] = {{kCpu, DType::kBF16, "cpu", "bf16"},
                          {kCpu, DType::kF16, "cpu", "f16"},
                          {cuda, DType::kF16, "cuda", "f16"}};
  float buf[64] = {};
  const int32_t ids[1] = {0};
  const int64_t offsets[2] = {0, 0};
  const void* weights[1] = {buf};
  const float inv_freq[1] = {1.0f};
  RopeParams rope{2, false, inv_freq, 1.0f};
  AttentionBatch batch;
  AttentionShape shape;
  shape.num_heads = shape.num_kv_heads = 1;
  for (const Combo& c : combos) {
    SCOPED_TRACE(::testing::Message() << c.device_name << "/" << c.dtype_name);
    const auto d = c.device_name;
    const auto t = c.dtype_name;
    ExpectUnimplemented(Linear(c.ctx, c.dtype, buf, buf, nullptr, buf, 1, 1, 1), "Linear", d, t);
    ExpectUnimplemented(Embedding(c.ctx, c.dtype, ids, 1, buf, 1, 1, buf), "Embedding", d, t);
    ExpectUnimplemented(RmsNorm(c.ctx, c.dtype, buf, 1, buf, buf, 1, 1, 1, 1e-6f), "RmsNorm", d, t);
    ExpectUnimplemented(Add(c.ctx, c.dtype, buf, buf, 1), "Add", d, t);
    ExpectUnimplemented(SiluMul(c.ctx, c.dtype, buf, buf, 1, 1), "SiluMul", d, t);
    ExpectUnimplemented(Rope(c.ctx, c.dtype, buf, 1, 1, 2, 2, ids, rope), "Rope", d, t);
    ExpectUnimplemented(CacheWrite(c.ctx, c.dtype, buf, 1, 1, 1, ids, buf), "CacheWrite", d, t);
    ExpectUnimplemented(PagedAttention(c.ctx, c.dtype, buf, buf, buf, buf, batch, shape),
                        "PagedAttention", d, t);
    ExpectUnimplemented(
        GroupedExpertFfn(c.ctx, c.dtype, buf, offsets, 1, 0, weights, weights, 1, 1, buf),
        "GroupedExpertFfn", d, t);
  }
}

// A CUDA Context that did not come from DeviceContext is refused (with CUDA:
// InvalidArgument naming the function; without: Unimplemented), never used.
TEST(DispatchTest, CudaContextWithoutBackendIsRefused) {
  const Context cuda{Device::kCuda, nullptr};
  float buf[4] = {};
  const absl::Status st = Linear(cuda, DType::kF32, buf, buf, nullptr, buf, 1, 1, 1);
  EXPECT_TRUE(st.code() == absl::StatusCode::kInvalidArgument ||
              st.code() == absl::StatusCode::kUnimplemented)
      << st;
  EXPECT_NE(std::string(st.message()).find("Linear"), std::string::npos) << st;
}

TEST(DispatchTest, RejectsInconsistentParameters) {
  float buf[16] = {};
  const int32_t pos = 0;
  const float inv_freq[2] = {1.0f, 0.5f};
  EXPECT_EQ(Linear(kCpu, DType::kF32, buf, buf, nullptr, buf, -1, 1, 1).code(),
            absl::StatusCode::kInvalidArgument);
  RopeParams odd{3, false, inv_freq, 1.0f};
  EXPECT_EQ(Rope(kCpu, DType::kF32, buf, 1, 1, 4, 4, &pos, odd).code(),
            absl::StatusCode::kInvalidArgument);
  RopeParams no_freq{4, false, nullptr, 1.0f};
  EXPECT_EQ(Rope(kCpu, DType::kF32, buf, 1, 1, 4, 4, &pos, no_freq).code(),
            absl::StatusCode::kInvalidArgument);
  AttentionBatch batch;
  AttentionShape shape;
  shape.num_heads = 3;
  shape.num_kv_heads = 2;
  EXPECT_EQ(PagedAttention(kCpu, DType::kF32, buf, buf, buf, buf, batch, shape).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sy::kernels
