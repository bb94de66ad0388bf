// Helpers shared by the kernel tests: seeded random data and an element-wise
// comparison against double-precision references.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace sy::kernels::testing {

inline std::vector<float> RandomVector(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Expects |got[i] - want[i]| <= tol * max(1, |want[i]|) for every i; reports
// at most a handful of mismatches.
inline void ExpectAllNear(const std::vector<float>& got, const std::vector<double>& want,
                          double tol) {
  ASSERT_EQ(got.size(), want.size());
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = tol * std::max(1.0, std::fabs(want[i]));
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= bound)) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", want " << want[i];
      if (++reported == 5) return;
    }
  }
}

}  // namespace sy::kernels::testing
