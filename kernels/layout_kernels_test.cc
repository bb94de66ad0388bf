// The layout helpers of kernels.h against direct loops.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"

namespace sy::kernels {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(LayoutKernelsTest, BatchedLinearMatchesLoops) {
  // MLA-style: batch = heads, rows strided inside a wider token row.
  const int64_t batch = 3, m = 5, n = 7, k = 4;
  const int64_t x_row = batch * k + 2, y_row = batch * n + 1;
  auto x = Random(m * x_row, 1);
  auto w = Random(batch * n * k, 2);
  std::vector<float> y(m * y_row, 42.0f);
  ASSERT_TRUE(BatchedLinear(Context{}, DType::kF32, x.data(), x_row, k, w.data(), n * k, y.data(),
                            y_row, n, batch, m, n, k)
                  .ok());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < k; ++c) acc += x[i * x_row + b * k + c] * w[b * n * k + j * k + c];
        EXPECT_NEAR(y[i * y_row + b * n + j], acc, 1e-5) << b << " " << i << " " << j;
      }
    }
  }
  // The padding column of each y row is untouched.
  for (int64_t i = 0; i < m; ++i) EXPECT_EQ(y[i * y_row + batch * n], 42.0f);
}

TEST(LayoutKernelsTest, Copy2DAndSigmoidGateMul) {
  auto src = Random(4 * 9, 3);
  std::vector<float> dst(4 * 6, -1.0f);
  ASSERT_TRUE(Copy2D(Context{}, DType::kF32, src.data() + 2, 9, dst.data(), 6, 4, 5).ok());
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 5; ++c) EXPECT_EQ(dst[r * 6 + c], src[r * 9 + 2 + c]);
    EXPECT_EQ(dst[r * 6 + 5], -1.0f);
  }
  auto y = Random(3 * 4, 4);
  const std::vector<float> orig = y;
  const std::vector<float> gate = {0.5f, 9.0f, -2.0f, 1.0f, 3.0f, 0.0f};  // stride 2
  ASSERT_TRUE(SigmoidGateMul(Context{}, DType::kF32, y.data(), gate.data(), 2, 3, 4).ok());
  for (int r = 0; r < 3; ++r) {
    const double s = 1.0 / (1.0 + std::exp(-gate[r * 2]));
    for (int c = 0; c < 4; ++c) EXPECT_NEAR(y[r * 4 + c], orig[r * 4 + c] * s, 1e-6);
  }
}

TEST(LayoutKernelsTest, OtherDevicesAndTypesAreRefused) {
  float a = 0, b = 0;
  // A CUDA context that did not come from DeviceContext: InvalidArgument in a
  // CUDA build, Unimplemented without CUDA; f16 has no kernels anywhere.
  Context gpu{Device::kCuda, nullptr};
  const auto refused = [](absl::StatusCode c) {
    return c == absl::StatusCode::kUnimplemented || c == absl::StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(refused(Copy2D(gpu, DType::kF32, &a, 1, &b, 1, 1, 1).code()));
  EXPECT_EQ(SigmoidGateMul(Context{}, DType::kBF16, &a, &b, 1, 1, 1).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(
      refused(BatchedLinear(gpu, DType::kF32, &a, 1, 1, &b, 1, &a, 1, 1, 1, 1, 1, 1).code()));
  EXPECT_EQ(Copy2D(gpu, DType::kF16, &a, 1, &b, 1, 1, 1).code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace sy::kernels
