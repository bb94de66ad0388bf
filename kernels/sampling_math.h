// The arithmetic of kernels::SampleTokens that the CPU reference
// (cpu/sampling.cc) and the CUDA kernel (cuda/sampling.cu) share, so that
// both make the same decisions from the same numbers. Host and device code
// (no abseil; compiled by nvcc and the host compiler alike).
//
// The model of a row with temperature > 0:
//   l_i   = logits sanitised: NaN -> -inf, +inf -> the largest finite float;
//   m     = max_i l_i;
//   e_i   = (float) exp((l_i - m) / T), computed in double, so e_max == 1 and
//           the CPU and the GPU agree on e_i except in the rare case where
//           their double exp() round to different floats;
//   w_i   = floor(e_i * 2^S): the fixed-point weight (S = MassScaleBits), so
//           every sum of weights is an exact integer and no decision depends
//           on summation order.
// Tokens are ordered by (e desc, id asc); every filter keeps a prefix of that
// order and the draw is an inverse CDF over the integer weights of the kept
// prefix: the first token whose cumulative weight exceeds DrawTarget(u, mass).
// A token of weight 0 (e < 2^-S relative to the most likely one) is never
// drawn.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "kernels/types.h"

namespace sy::kernels::sampling {

// Which field of a SampleParams is out of range (kNone: all valid).
enum class BadField : int { kNone = 0, kTemperature, kTopK, kTopP, kMinP };

SY_HOST_DEVICE inline BadField CheckParams(const SampleParams& p) {
  // Written so that NaN fails every range check.
  if (!(p.temperature >= 0.0f && p.temperature <= FLT_MAX)) return BadField::kTemperature;
  if (p.top_k < 0) return BadField::kTopK;
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return BadField::kTopP;
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return BadField::kMinP;
  return BadField::kNone;
}

// NaN counts as -inf; +inf as the largest finite float, so that a row with
// +inf logits puts all its mass, evenly, on those tokens.
SY_HOST_DEVICE inline float Sanitize(float x) {
  if (x != x) return -INFINITY;
  return x > FLT_MAX ? FLT_MAX : x;
}

// e = exp((l - m) / T) in [0, 1]; `l` and `m` sanitised, m finite, T > 0.
SY_HOST_DEVICE inline float Weight(float l, float m, float temperature) {
  const double z =
      (static_cast<double>(l) - static_cast<double>(m)) / static_cast<double>(temperature);
  return static_cast<float>(exp(z));
}

// Bits of fixed-point weight: as many as keep vocab * 2^S below 2^63 (the sum
// of all weights fits in a uint64 with room to spare), at most 45.
SY_HOST_DEVICE inline int MassScaleBits(int64_t vocab) {
  int bits = 0;
  while (bits < 40 && (int64_t{1} << bits) < vocab) ++bits;  // ceil(log2(vocab))
  const int s = 62 - bits;
  return s < 45 ? s : 45;
}

// 2^MassScaleBits(vocab) as a double.
SY_HOST_DEVICE inline double MassScale(int64_t vocab) {
  return static_cast<double>(uint64_t{1} << MassScaleBits(vocab));
}

// floor(e * scale): exact (the product is a power-of-two scaling).
SY_HOST_DEVICE inline uint64_t Quantize(float e, double scale) {
  return static_cast<uint64_t>(static_cast<double>(e) * scale);
}

// The top-p prefix ends at the first token whose cumulative weight reaches
// ceil(top_p * mass) (mass: the weight of the top-k set).
SY_HOST_DEVICE inline uint64_t TopPTarget(float top_p, uint64_t mass) {
  return static_cast<uint64_t>(ceil(static_cast<double>(top_p) * static_cast<double>(mass)));
}

// The draw picks the first kept token whose cumulative weight exceeds
// floor(u * mass), which is < mass for every u < 1 (u <= 1 - 2^-24 and the
// two double roundings are far smaller than that gap).
SY_HOST_DEVICE inline uint64_t DrawTarget(float u, uint64_t mass) {
  return static_cast<uint64_t>(floor(static_cast<double>(u) * static_cast<double>(mass)));
}

}  // namespace sy::kernels::sampling
