// CPU reference of kernels::SampleTokens: the filters as a sort would state
// them, over the shared arithmetic of kernels/sampling_math.h (which the CUDA
// kernel, cuda/sampling.cu, reaches without sorting).
//
// Per row, after every row's parameters were checked (nothing is written when
// one is out of range):
//   1. l = sanitised logits (NaN -> -inf, +inf -> FLT_MAX), m = max l. A row
//      with no logit above -inf gives token 0 and logprob -inf.
//   2. temperature == 0: token = argmax l, ties to the lower id.
//   3. else e_i = exp((l_i - m) / T), w_i its fixed-point weight; tokens in
//      (e desc, id asc) order; keep the first top_k (0: all); then the
//      shortest prefix whose weight reaches ceil(top_p * weight of the top-k
//      set); then only tokens with e >= min_p (e_max == 1, so this is
//      p >= min_p * p_max); draw the first kept token whose cumulative weight
//      exceeds floor(u * kept weight), u = CounterUniform(seed, step).
//   4. logprobs[r] = l[token] - m - log(sum_i exp(l_i - m)), of the raw
//      (sanitised) logits whatever the settings.
// Tokens of weight 0 (e < 2^-S) can never be drawn, so only tokens of
// positive weight are sorted: the prefixes above differ only by tokens that
// could not be drawn anyway.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/sampling_math.h"

namespace sy::kernels::cpu {
namespace {

using sampling::BadField;

absl::Status ParamError(int64_t row, const SampleParams& p, BadField field) {
  auto err = [&](const char* name, auto value, const char* range) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleTokens: row ", row, ": ", name, " = ", value, " must be ", range));
  };
  switch (field) {
    case BadField::kTemperature:
      return err("temperature", p.temperature, "finite and >= 0");
    case BadField::kTopK:
      return err("top_k", p.top_k, ">= 0 (0: off)");
    case BadField::kTopP:
      return err("top_p", p.top_p, "in (0, 1]");
    case BadField::kMinP:
      return err("min_p", p.min_p, "in [0, 1]");
    case BadField::kNone:
      break;
  }
  return absl::OkStatus();
}

struct RowResult {
  int32_t token = 0;
  float logprob = 0.0f;
};

RowResult SampleRow(const float* logits, int64_t vocab, const SampleParams& p) {
  std::vector<float> l(static_cast<size_t>(vocab));
  float m = -std::numeric_limits<float>::infinity();
  int64_t argmax = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    l[i] = sampling::Sanitize(logits[i]);
    if (l[i] > m) {
      m = l[i];
      argmax = i;
    }
  }
  RowResult out;
  if (m == -std::numeric_limits<float>::infinity()) {
    out.token = 0;
    out.logprob = -std::numeric_limits<float>::infinity();
    return out;
  }
  double raw_sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) raw_sum += static_cast<double>(std::exp(l[i] - m));
  auto logprob = [&](int64_t token) {
    return static_cast<float>(static_cast<double>(l[token] - m) - std::log(raw_sum));
  };
  if (p.temperature == 0.0f) {
    out.token = static_cast<int32_t>(argmax);
    out.logprob = logprob(argmax);
    return out;
  }

  const double scale = sampling::MassScale(vocab);
  std::vector<float> e(static_cast<size_t>(vocab));
  std::vector<uint64_t> w(static_cast<size_t>(vocab));
  std::vector<int32_t> order;
  for (int64_t i = 0; i < vocab; ++i) {
    e[i] = sampling::Weight(l[i], m, p.temperature);
    w[i] = sampling::Quantize(e[i], scale);
    if (w[i] > 0) order.push_back(static_cast<int32_t>(i));
  }
  // The most likely token has e == 1, so `order` is never empty.
  const auto before = [&](int32_t a, int32_t b) { return e[a] > e[b] || (e[a] == e[b] && a < b); };
  auto n = static_cast<int64_t>(order.size());
  if (p.top_k > 0 && p.top_k < n) {
    n = p.top_k;
    std::partial_sort(order.begin(), order.begin() + n, order.end(), before);
  } else {
    std::sort(order.begin(), order.end(), before);
  }
  if (p.top_p < 1.0f) {
    uint64_t mass = 0;
    for (int64_t i = 0; i < n; ++i) mass += w[order[i]];
    const uint64_t target = sampling::TopPTarget(p.top_p, mass);
    uint64_t cum = 0;
    for (int64_t i = 0; i < n; ++i) {
      cum += w[order[i]];
      if (cum >= target) {
        n = i + 1;
        break;
      }
    }
  }
  if (p.min_p > 0.0f) {
    while (n > 1 && e[order[n - 1]] < p.min_p) --n;
  }
  uint64_t mass = 0;
  for (int64_t i = 0; i < n; ++i) mass += w[order[i]];
  const uint64_t target = sampling::DrawTarget(CounterUniform(p.seed, p.step), mass);
  int64_t pick = n - 1;  // not reached: target < mass
  uint64_t cum = 0;
  for (int64_t i = 0; i < n; ++i) {
    cum += w[order[i]];
    if (cum > target) {
      pick = i;
      break;
    }
  }
  out.token = order[pick];
  out.logprob = logprob(order[pick]);
  return out;
}

}  // namespace

absl::Status SampleTokens(const float* logits, int64_t rows, int64_t vocab,
                          const SampleParams* params, int32_t* tokens, float* logprobs) {
  for (int64_t r = 0; r < rows; ++r) {
    const BadField bad = sampling::CheckParams(params[r]);
    if (bad != BadField::kNone) return ParamError(r, params[r], bad);
  }
#pragma omp parallel for schedule(dynamic, 1) if (rows > 1 && vocab >= 4096)
  for (int64_t r = 0; r < rows; ++r) {
    const RowResult res = SampleRow(logits + r * vocab, vocab, params[r]);
    tokens[r] = res.token;
    if (logprobs != nullptr) logprobs[r] = res.logprob;
  }
  return absl::OkStatus();
}

}  // namespace sy::kernels::cpu
