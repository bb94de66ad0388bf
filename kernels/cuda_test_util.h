// Shared by the CUDA-vs-CPU kernel tests: a fixture that owns a CUDA context
// (and skips, saying why, where no GPU is usable), uploads in either dtype,
// and comparisons with dtype-dependent tolerances.
//
// The pattern of every test: make fp32 inputs, round them to the dtype under
// test (RoundTo), run the CPU fp32 reference on the rounded inputs, run the
// CUDA kernel on the uploaded inputs, and compare. The tolerance then covers
// only the kernel's own arithmetic and its output rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/device.h"
#include "kernels/kernels.h"

namespace sy::kernels::testing {

inline const char* DTypeLabel(DType d) { return d == DType::kF32 ? "f32" : "bf16"; }

// fp32 values as the dtype stores them (bf16: round to nearest even).
inline std::vector<float> RoundTo(DType dtype, std::vector<float> v) {
  if (dtype == DType::kBF16) {
    for (float& x : v) x = Bf16ToF32(F32ToBf16(x));
  }
  return v;
}

// Relative tolerance of one output rounding plus fp32 accumulation-order noise.
inline double OutputTolerance(DType dtype) { return dtype == DType::kF32 ? 2e-5 : 1.6e-2; }

class CudaTestBase {
 protected:
  // Returns false (and the caller GTEST_SKIPs) when CUDA is not usable.
  bool InitCuda(std::string* why) {
    const absl::Status available = CudaAvailable();
    if (!available.ok()) {
      *why = std::string(available.message());
      return false;
    }
    auto dc = DeviceContext::Create(Device::kCuda);
    if (!dc.ok()) {
      *why = std::string(dc.status().message());
      return false;
    }
    dc_ = *std::move(dc);
    return true;
  }
  const Context& gpu() const { return dc_->ctx(); }

  DeviceBuffer Alloc(int64_t bytes) {
    auto b = DeviceBuffer::Allocate(gpu(), std::max<int64_t>(bytes, 1));
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *std::move(b) : DeviceBuffer();
  }
  // Uploads fp32 host values as `dtype`.
  DeviceBuffer Upload(DType dtype, const std::vector<float>& v) {
    DeviceBuffer b = Alloc(static_cast<int64_t>(v.size()) * DTypeSize(dtype));
    EXPECT_TRUE(UploadAs(gpu(), dtype, v.data(), b.data(), static_cast<int64_t>(v.size())).ok());
    return b;
  }
  // Uploads raw values (ids, offsets, fp32 parameters).
  template <typename T>
  DeviceBuffer UploadRaw(const std::vector<T>& v) {
    DeviceBuffer b = Alloc(static_cast<int64_t>(v.size() * sizeof(T)));
    EXPECT_TRUE(
        CopyToDevice(gpu(), b.data(), v.data(), static_cast<int64_t>(v.size() * sizeof(T))).ok());
    return b;
  }
  // Waits for the stream, then downloads n elements of `dtype` as fp32.
  std::vector<float> Download(DType dtype, const void* src, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n));
    const absl::Status st = DownloadAsF32(gpu(), dtype, src, out.data(), n);
    EXPECT_TRUE(st.ok()) << st;
    return out;
  }
  template <typename T>
  std::vector<T> DownloadRaw(const void* src, int64_t n) {
    std::vector<T> out(static_cast<size_t>(n));
    const absl::Status st = CopyToHost(gpu(), out.data(), src, n * static_cast<int64_t>(sizeof(T)));
    EXPECT_TRUE(st.ok()) << st;
    return out;
  }

  std::unique_ptr<DeviceContext> dc_;
};

// A gtest fixture over the dtype under test.
class CudaDTypeTest : public ::testing::TestWithParam<DType>, public CudaTestBase {
 protected:
  void SetUp() override {
    std::string why;
    if (!InitCuda(&why)) GTEST_SKIP() << "CUDA not usable here: " << why;
  }
  DType dtype() const { return GetParam(); }
};

class CudaTest : public ::testing::Test, public CudaTestBase {
 protected:
  void SetUp() override {
    std::string why;
    if (!InitCuda(&why)) GTEST_SKIP() << "CUDA not usable here: " << why;
  }
};

// Expects |got - want| <= atol + rtol * |want| element-wise (want from the
// CPU reference); reports the first few mismatches and the worst one.
inline void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double rtol,
                        double atol, const std::string& what = "") {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  double worst = 0.0;
  size_t worst_i = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double bound = atol + rtol * std::fabs(static_cast<double>(want[i]));
    if (!(err <= bound)) {
      if (reported++ < 5) {
        ADD_FAILURE() << what << " element " << i << ": got " << got[i] << ", want " << want[i];
      }
    }
    if (err > worst) {
      worst = err;
      worst_i = i;
    }
  }
  if (reported > 0) {
    ADD_FAILURE() << what << ": " << reported << " of " << got.size() << " elements off; worst at "
                  << worst_i << " (err " << worst << ")";
  }
}

}  // namespace sy::kernels::testing
