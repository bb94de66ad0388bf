// CUDA dense and elementwise kernels against the CPU fp32 reference:
// Linear (with and without bias), LinearF32Out, BatchedLinear, Embedding,
// RmsNorm, AddRmsNorm, Add, SiluMul, Rope (neox, interleaved, partial,
// scaled), CacheWrite, Copy2D, SigmoidGateMul, and the device memory API.
// Each kernel runs for fp32 and bf16 storage over token counts 0, 1, odd and
// large; without a GPU every case skips with the reason.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/device.h"
#include "kernels/kernels.h"
#include "kernels/kernels_test_util.h"

namespace sy::kernels {
namespace {

using ::sy::kernels::testing::CudaDTypeTest;
using ::sy::kernels::testing::CudaTest;
using ::sy::kernels::testing::ExpectClose;
using ::sy::kernels::testing::OutputTolerance;
using ::sy::kernels::testing::RandomVector;
using ::sy::kernels::testing::RoundTo;

const Context kCpu{};
const int64_t kTokenCounts[] = {0, 1, 7, 133};

std::string Label(DType d, int64_t n) {
  return std::string(d == DType::kF32 ? "f32" : "bf16") + " tokens=" + std::to_string(n);
}

// GEMM outputs: fp32 products summed over k, so the error grows with k; bf16
// adds one output rounding (2^-8 relative) on top.
double GemmRtol(DType d, int64_t k) {
  return d == DType::kF32 ? 1e-5 * std::sqrt(static_cast<double>(k) + 1) : 1.6e-2;
}

TEST_P(CudaDTypeTest, LinearMatchesCpu) {
  const DType dt = dtype();
  for (int64_t m : kTokenCounts) {
    for (auto [n, k] : {std::pair<int64_t, int64_t>{64, 128}, {37, 29}, {1000, 512}}) {
      for (bool with_bias : {false, true}) {
        const auto x = RoundTo(dt, RandomVector(m * k, 1 + m));
        const auto w = RoundTo(dt, RandomVector(n * k, 2 + n, -0.1f, 0.1f));
        const auto b = RoundTo(dt, RandomVector(n, 3));
        std::vector<float> want(m * n);
        ASSERT_TRUE(Linear(kCpu, DType::kF32, x.data(), w.data(), with_bias ? b.data() : nullptr,
                           want.data(), m, n, k)
                        .ok());
        DeviceBuffer dx = Upload(dt, x), dw = Upload(dt, w), db = Upload(dt, b);
        DeviceBuffer dy = Alloc(m * n * DTypeSize(dt));
        ASSERT_TRUE(Linear(gpu(), dt, dx.data(), dw.data(), with_bias ? db.data() : nullptr,
                           dy.data(), m, n, k)
                        .ok());
        // bf16 with a bias rounds twice (the product, then product + bias),
        // so the absolute error scales with the largest output, not each one.
        double scale = 0;
        for (float v : want) scale = std::max(scale, std::fabs(static_cast<double>(v)));
        const double atol = dt == DType::kBF16 && with_bias ? OutputTolerance(dt) * scale : 1e-4;
        ExpectClose(Download(dt, dy.data(), m * n), want, GemmRtol(dt, k), atol,
                    Label(dt, m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
        // Router logits / lm_head: fp32 output from `dt` inputs.
        DeviceBuffer dy32 = Alloc(m * n * 4);
        ASSERT_TRUE(LinearF32Out(gpu(), dt, dx.data(), dw.data(), dy32.as<float>(), m, n, k).ok());
        if (!with_bias) {
          ExpectClose(Download(DType::kF32, dy32.data(), m * n), want,
                      dt == DType::kF32 ? GemmRtol(dt, k) : 1e-4, 1e-4, "LinearF32Out");
        }
      }
    }
  }
}

TEST_P(CudaDTypeTest, BatchedLinearMatchesCpu) {
  const DType dt = dtype();
  const int64_t batch = 5, n = 24, k = 40;
  for (int64_t m : kTokenCounts) {
    if (m == 0) continue;
    // x rows strided inside a wider matrix, as MLA's per-head projections read them.
    const int64_t x_row = batch * k + 3, y_row = batch * n + 5;
    const auto x = RoundTo(dt, RandomVector(m * x_row, 11));
    const auto w = RoundTo(dt, RandomVector(batch * n * k, 12, -0.2f, 0.2f));
    std::vector<float> want(m * y_row, 0.0f);
    ASSERT_TRUE(BatchedLinear(kCpu, DType::kF32, x.data(), x_row, k, w.data(), n * k, want.data(),
                              y_row, n, batch, m, n, k)
                    .ok());
    DeviceBuffer dx = Upload(dt, x), dw = Upload(dt, w);
    DeviceBuffer dy = Upload(dt, std::vector<float>(m * y_row, 0.0f));
    ASSERT_TRUE(BatchedLinear(gpu(), dt, dx.data(), x_row, k, dw.data(), n * k, dy.data(), y_row, n,
                              batch, m, n, k)
                    .ok());
    ExpectClose(Download(dt, dy.data(), m * y_row), want, GemmRtol(dt, k), 1e-4, Label(dt, m));
  }
}

TEST_P(CudaDTypeTest, EmbeddingMatchesCpu) {
  const DType dt = dtype();
  const int64_t vocab = 300, hidden = 72;
  const auto table = RoundTo(dt, RandomVector(vocab * hidden, 21));
  for (int64_t n : kTokenCounts) {
    std::vector<int32_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 37 + 5) % vocab);
    std::vector<float> want(n * hidden);
    ASSERT_TRUE(
        Embedding(kCpu, DType::kF32, ids.data(), n, table.data(), vocab, hidden, want.data()).ok());
    DeviceBuffer dt_table = Upload(dt, table), dids = UploadRaw(ids);
    DeviceBuffer dout = Alloc(n * hidden * DTypeSize(dt));
    ASSERT_TRUE(
        Embedding(gpu(), dt, dids.as<int32_t>(), n, dt_table.data(), vocab, hidden, dout.data())
            .ok());
    ExpectClose(Download(dt, dout.data(), n * hidden), want, 0.0, 0.0, Label(dt, n));
  }
  // An id outside the vocabulary (device memory: no error) gives a zero row.
  const std::vector<int32_t> bad = {-1, static_cast<int32_t>(vocab)};
  DeviceBuffer dt_table = Upload(dt, table), dids = UploadRaw(bad);
  DeviceBuffer dout = Upload(dt, std::vector<float>(2 * hidden, 5.0f));
  ASSERT_TRUE(
      Embedding(gpu(), dt, dids.as<int32_t>(), 2, dt_table.data(), vocab, hidden, dout.data())
          .ok());
  ExpectClose(Download(dt, dout.data(), 2 * hidden), std::vector<float>(2 * hidden, 0.0f), 0.0, 0.0,
              "out-of-range ids");
}

TEST_P(CudaDTypeTest, RmsNormAndAddRmsNormMatchCpu) {
  const DType dt = dtype();
  for (int64_t rows : kTokenCounts) {
    for (int64_t dim : {1, 40, 128, 2048, 7168}) {
      const auto x = RoundTo(dt, RandomVector(rows * dim, 31, -2.0f, 2.0f));
      const auto w = RoundTo(dt, RandomVector(dim, 32, 0.5f, 1.5f));
      std::vector<float> want(rows * dim);
      ASSERT_TRUE(
          RmsNorm(kCpu, DType::kF32, x.data(), dim, w.data(), want.data(), dim, rows, dim, 1e-6f)
              .ok());
      DeviceBuffer dx = Upload(dt, x), dw = Upload(dt, w);
      DeviceBuffer dy = Alloc(rows * dim * DTypeSize(dt));
      ASSERT_TRUE(
          RmsNorm(gpu(), dt, dx.data(), dim, dw.data(), dy.data(), dim, rows, dim, 1e-6f).ok());
      const std::string what = Label(dt, rows) + " dim=" + std::to_string(dim);
      ExpectClose(Download(dt, dy.data(), rows * dim), want, OutputTolerance(dt), 1e-5, what);
      // In place.
      ASSERT_TRUE(
          RmsNorm(gpu(), dt, dx.data(), dim, dw.data(), dx.data(), dim, rows, dim, 1e-6f).ok());
      ExpectClose(Download(dt, dx.data(), rows * dim), want, OutputTolerance(dt), 1e-5,
                  what + " in place");

      // Fused residual add: the residual is updated, then normalised.
      const auto res = RoundTo(dt, RandomVector(rows * dim, 33, -2.0f, 2.0f));
      const auto delta = RoundTo(dt, RandomVector(rows * dim, 34, -1.0f, 1.0f));
      std::vector<float> want_res = res, want_y(rows * dim);
      ASSERT_TRUE(AddRmsNorm(kCpu, DType::kF32, want_res.data(), delta.data(), w.data(),
                             want_y.data(), rows, dim, 1e-6f)
                      .ok());
      DeviceBuffer dres = Upload(dt, res), ddelta = Upload(dt, delta);
      ASSERT_TRUE(
          AddRmsNorm(gpu(), dt, dres.data(), ddelta.data(), dw.data(), dy.data(), rows, dim, 1e-6f)
              .ok());
      ExpectClose(Download(dt, dres.data(), rows * dim), want_res, OutputTolerance(dt), 1e-5,
                  what + " residual");
      // bf16: the normalised value comes from the rounded residual, two roundings deep.
      ExpectClose(Download(dt, dy.data(), rows * dim), want_y, 2 * OutputTolerance(dt), 1e-4,
                  what + " add+norm");
    }
  }
}

TEST_P(CudaDTypeTest, ElementwiseMatchCpu) {
  const DType dt = dtype();
  for (int64_t rows : kTokenCounts) {
    const int64_t inter = 96, dim = 64;
    const std::string what = Label(dt, rows);
    // Add.
    const auto a = RoundTo(dt, RandomVector(rows * dim, 41));
    const auto b = RoundTo(dt, RandomVector(rows * dim, 42));
    std::vector<float> want = a;
    ASSERT_TRUE(Add(kCpu, DType::kF32, want.data(), b.data(), rows * dim).ok());
    DeviceBuffer da = Upload(dt, a), db = Upload(dt, b);
    ASSERT_TRUE(Add(gpu(), dt, da.data(), db.data(), rows * dim).ok());
    ExpectClose(Download(dt, da.data(), rows * dim), want, OutputTolerance(dt), 1e-6,
                what + " Add");
    // SiluMul.
    const auto gu = RoundTo(dt, RandomVector(rows * 2 * inter, 43, -4.0f, 4.0f));
    std::vector<float> want_sm(rows * inter);
    ASSERT_TRUE(SiluMul(kCpu, DType::kF32, gu.data(), want_sm.data(), rows, inter).ok());
    DeviceBuffer dgu = Upload(dt, gu), dsm = Alloc(rows * inter * DTypeSize(dt));
    ASSERT_TRUE(SiluMul(gpu(), dt, dgu.data(), dsm.data(), rows, inter).ok());
    ExpectClose(Download(dt, dsm.data(), rows * inter), want_sm, OutputTolerance(dt), 1e-5,
                what + " SiluMul");
    // SigmoidGateMul with a strided gate.
    const auto y = RoundTo(dt, RandomVector(rows * dim, 44));
    const auto gate = RoundTo(dt, RandomVector(rows * 3, 45, -3.0f, 3.0f));
    std::vector<float> want_g = y;
    ASSERT_TRUE(SigmoidGateMul(kCpu, DType::kF32, want_g.data(), gate.data(), 3, rows, dim).ok());
    DeviceBuffer dy = Upload(dt, y), dg = Upload(dt, gate);
    ASSERT_TRUE(SigmoidGateMul(gpu(), dt, dy.data(), dg.data(), 3, rows, dim).ok());
    ExpectClose(Download(dt, dy.data(), rows * dim), want_g, OutputTolerance(dt), 1e-6,
                what + " SigmoidGateMul");
    // Copy2D between strided matrices.
    const auto src = RoundTo(dt, RandomVector(rows * 50, 46));
    std::vector<float> want_c(rows * 70, 9.0f);
    ASSERT_TRUE(
        Copy2D(kCpu, DType::kF32, src.data() + 3, 50, want_c.data() + 1, 70, rows, 40).ok());
    DeviceBuffer dsrc = Upload(dt, src), ddst = Upload(dt, std::vector<float>(rows * 70, 9.0f));
    ASSERT_TRUE(Copy2D(gpu(), dt, dsrc.as<char>() + 3 * DTypeSize(dt), 50,
                       ddst.as<char>() + DTypeSize(dt), 70, rows, 40)
                    .ok());
    ExpectClose(Download(dt, ddst.data(), rows * 70), want_c, 0.0, 0.0, what + " Copy2D");
  }
}

TEST_P(CudaDTypeTest, RopeMatchesCpu) {
  const DType dt = dtype();
  struct Case {
    int64_t head_dim, rotary_dim;
    bool interleaved;
    float scaling;
  };
  for (const Case& c : {Case{64, 64, false, 1.0f}, Case{128, 64, false, 1.0f},
                        Case{64, 64, true, 1.0f}, Case{40, 16, true, 1.2f}}) {
    for (int64_t n : kTokenCounts) {
      const int64_t heads = 3, stride = heads * c.head_dim + 4;
      std::vector<float> inv_freq(c.rotary_dim / 2);
      for (size_t i = 0; i < inv_freq.size(); ++i) {
        inv_freq[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / c.rotary_dim);
      }
      std::vector<int32_t> pos(n);
      for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(i * 131 % 32768);
      const auto x = RoundTo(dt, RandomVector(n * stride, 51));
      std::vector<float> want = x;
      RopeParams cpu_params{c.rotary_dim, c.interleaved, inv_freq.data(), c.scaling};
      ASSERT_TRUE(
          Rope(kCpu, DType::kF32, want.data(), n, heads, stride, c.head_dim, pos.data(), cpu_params)
              .ok());
      DeviceBuffer dx = Upload(dt, x), dpos = UploadRaw(pos), dfreq = UploadRaw(inv_freq);
      RopeParams gpu_params{c.rotary_dim, c.interleaved, dfreq.as<float>(), c.scaling};
      ASSERT_TRUE(
          Rope(gpu(), dt, dx.data(), n, heads, stride, c.head_dim, dpos.as<int32_t>(), gpu_params)
              .ok());
      // Angles up to 32768 rad: the device's sincosf and the host's cos/sin
      // of the same fp32 angle agree to a few ulp of the angle's magnitude.
      ExpectClose(Download(dt, dx.data(), n * stride), want,
                  dt == DType::kF32 ? 1e-4 : OutputTolerance(dt), 1e-4,
                  Label(dt, n) + " rotary=" + std::to_string(c.rotary_dim));
    }
  }
}

TEST_P(CudaDTypeTest, CacheWriteMatchesCpu) {
  const DType dt = dtype();
  for (int64_t n : kTokenCounts) {
    const int64_t row = 24, slots_total = 300, stride = 30;
    std::vector<int32_t> slots(n);
    for (int64_t i = 0; i < n; ++i)
      slots[i] = i % 5 == 3 ? -1 : static_cast<int32_t>((i * 7) % slots_total);
    // Distinct slots only (duplicates would race on both devices).
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < i; ++j) {
        if (slots[j] == slots[i]) slots[i] = -1;
      }
    }
    const auto src = RoundTo(dt, RandomVector(n * stride, 61));
    std::vector<float> want(slots_total * row, 0.5f);
    ASSERT_TRUE(
        CacheWrite(kCpu, DType::kF32, src.data(), stride, n, row, slots.data(), want.data()).ok());
    DeviceBuffer dsrc = Upload(dt, src), dslots = UploadRaw(slots);
    DeviceBuffer dcache = Upload(dt, std::vector<float>(slots_total * row, 0.5f));
    ASSERT_TRUE(
        CacheWrite(gpu(), dt, dsrc.data(), stride, n, row, dslots.as<int32_t>(), dcache.data())
            .ok());
    ExpectClose(Download(dt, dcache.data(), slots_total * row), want, 0.0, 0.0, Label(dt, n));
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaDTypeTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) {
                           return std::string(info.param == DType::kF32 ? "f32" : "bf16");
                         });

TEST_F(CudaTest, MemoryRoundTripsAndReportsTheDevice) {
  auto info = dc_->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(info->total_memory, 0);
  EXPECT_GT(info->multiprocessors, 0);
  const auto v = RandomVector(1000, 71);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    DeviceBuffer b = Upload(dt, v);
    ExpectClose(Download(dt, b.data(), 1000), RoundTo(dt, v), 0.0, 0.0, "round trip");
    DeviceBuffer c = Alloc(1000 * DTypeSize(dt));
    ASSERT_TRUE(CopyOnDevice(gpu(), c.data(), b.data(), 1000 * DTypeSize(dt)).ok());
    ExpectClose(Download(dt, c.data(), 1000), RoundTo(dt, v), 0.0, 0.0, "device copy");
    ASSERT_TRUE(Memset(gpu(), c.data(), 0, 1000 * DTypeSize(dt)).ok());
    ExpectClose(Download(dt, c.data(), 1000), std::vector<float>(1000, 0.0f), 0.0, 0.0, "memset");
  }
  // Reserve keeps a large enough buffer and grows a small one.
  DeviceBuffer r = Alloc(16);
  ASSERT_TRUE(r.Reserve(gpu(), 8).ok());
  EXPECT_EQ(r.bytes(), 16);
  ASSERT_TRUE(r.Reserve(gpu(), 4096).ok());
  EXPECT_GE(r.bytes(), 4096);
  // An impossible allocation is ResourceExhausted, not a crash.
  auto huge = DeviceBuffer::Allocate(gpu(), int64_t{1} << 50);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  ASSERT_TRUE(dc_->Synchronize().ok());
}

TEST_F(CudaTest, F16HasNoKernels) {
  float* none = nullptr;
  const absl::Status st = Add(gpu(), DType::kF16, none, none, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
}

// Runs everywhere: the reason a GPU is or is not usable is always reported.
TEST(CudaAvailabilityTest, ReportsWhy) {
  const absl::Status st = CudaAvailable();
  if (!st.ok()) {
    EXPECT_FALSE(st.message().empty());
    std::printf("CUDA not usable here: %s\n", std::string(st.message()).c_str());
  }
  auto dc = DeviceContext::Create(Device::kCuda);
  EXPECT_EQ(dc.ok(), st.ok()) << dc.status();
  auto cpu = DeviceContext::Create(Device::kCpu);
  ASSERT_TRUE(cpu.ok());
  EXPECT_TRUE((*cpu)->Synchronize().ok());
}

}  // namespace
}  // namespace sy::kernels
