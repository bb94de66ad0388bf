// Dense and elementwise fp32 kernels of the CPU backend: GEMMs (OpenBLAS),
// embedding lookup, RMSNorm, residual add, SwiGLU, rotary embedding, paged
// cache writes and the grouped expert FFN.
#include "kernels/cpu/cpu_kernels.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sy::kernels::cpu {
namespace {

// Below this many scalar operations a loop runs on the calling thread: the
// fork/join of an OpenMP team costs a few microseconds.
constexpr int64_t kParallelWork = int64_t{1} << 16;

// c[m, n] = a[m, k] . b[n, k]^T; c is fully overwritten.
void GemmNT(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    std::fill(c, c + m * n, 0.0f);
    return;
  }
  const auto bm = static_cast<blasint>(m);
  const auto bn = static_cast<blasint>(n);
  const auto bk = static_cast<blasint>(k);
  if (m == 1) {
    // c[n] = b[n, k] . a[k]. Zero first: beta = 0 must not let stale NaNs in c through.
    std::fill(c, c + n, 0.0f);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, bn, bk, 1.0f, b, bk, a, 1, 0.0f, c, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bm, bn, bk, 1.0f, a, bk, b, bk, 0.0f, c, bn);
}

inline float Silu(float g) { return g / (1.0f + std::exp(-g)); }

void SiluMulRow(const float* in, float* out, int64_t inter) {
  const float* up = in + inter;
  for (int64_t i = 0; i < inter; ++i) out[i] = Silu(in[i]) * up[i];
}

}  // namespace

void Linear(const float* x, const float* w, const float* bias, float* y, int64_t m, int64_t n,
            int64_t k) {
  GemmNT(x, w, y, m, n, k);
  if (bias == nullptr) return;
#pragma omp parallel for if (m * n >= kParallelWork)
  for (int64_t r = 0; r < m; ++r) {
    float* row = y + r * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] += bias[j];
  }
}

absl::Status Embedding(const int32_t* ids, int64_t num_tokens, const float* table, int64_t vocab,
                       int64_t hidden, float* out) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("Embedding: token ", t, " has id ", ids[t], " outside [0, ", vocab, ")"));
    }
  }
  const auto row_bytes = static_cast<size_t>(hidden) * sizeof(float);
#pragma omp parallel for if (num_tokens * hidden >= kParallelWork)
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::memcpy(out + t * hidden, table + static_cast<int64_t>(ids[t]) * hidden, row_bytes);
  }
  return absl::OkStatus();
}

void RmsNorm(const float* x, int64_t x_stride, const float* w, float* y, int64_t y_stride,
             int64_t rows, int64_t dim, float eps) {
  if (dim <= 0) return;
#pragma omp parallel for if (rows * dim >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride;
    float* yr = y + r * y_stride;
    // Sum of squares in double, then the rest in fp32 as PyTorch does:
    // variance = mean(x^2); y = (x * rsqrt(variance + eps)) * w.
    double sum_sq = 0.0;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const auto variance = static_cast<float>(sum_sq / static_cast<double>(dim));
    const float inv_rms = 1.0f / std::sqrt(variance + eps);
    // In place (x == y) is fine: each element is read before it is written.
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] * inv_rms) * w[i];
  }
}

void Add(float* y, const float* x, int64_t n) {
#pragma omp parallel for simd if (n >= 4 * kParallelWork)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void SiluMul(const float* in, float* out, int64_t rows, int64_t inter) {
#pragma omp parallel for if (rows * inter >= kParallelWork / 4)
  for (int64_t r = 0; r < rows; ++r) SiluMulRow(in + r * 2 * inter, out + r * inter, inter);
}

void Rope(float* x, int64_t num_tokens, int64_t num_heads, int64_t token_stride,
          int64_t head_stride, const int32_t* positions, const RopeParams& params) {
  const int64_t half = params.rotary_dim / 2;
  if (half <= 0 || num_tokens <= 0 || num_heads <= 0) return;
  const float* inv_freq = params.inv_freq;
  const float scaling = params.attention_scaling;
  const bool interleaved = params.interleaved;
#pragma omp parallel if (num_tokens * num_heads * half >= kParallelWork / 4)
  {
    std::vector<float> cos_t(half);
    std::vector<float> sin_t(half);
#pragma omp for
    for (int64_t t = 0; t < num_tokens; ++t) {
      // The angle and its cos/sin in fp32, as the reference rotary embedding
      // computes them (float(position) * inv_freq, then cos/sin, then scaling).
      const auto pos = static_cast<float>(positions[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv_freq[i];
        cos_t[i] = std::cos(angle) * scaling;
        sin_t[i] = std::sin(angle) * scaling;
      }
      for (int64_t h = 0; h < num_heads; ++h) {
        float* xh = x + t * token_stride + h * head_stride;
        // Pair (a, b) rotates to (a cos - b sin, b cos + a sin).
        const int64_t step = interleaved ? 2 : 1;
        const int64_t partner = interleaved ? 1 : half;
        for (int64_t i = 0; i < half; ++i) {
          float* a = xh + i * step;
          float* b = a + partner;
          const float a0 = *a;
          const float b0 = *b;
          *a = a0 * cos_t[i] - b0 * sin_t[i];
          *b = b0 * cos_t[i] + a0 * sin_t[i];
        }
      }
    }
  }
}

void CacheWrite(const float* src, int64_t src_stride, int64_t num_tokens, int64_t row_elems,
                const int32_t* slots, float* cache) {
  const auto row_bytes = static_cast<size_t>(row_elems) * sizeof(float);
#pragma omp parallel for if (num_tokens * row_elems >= kParallelWork)
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (slots[t] < 0) continue;
    std::memcpy(cache + static_cast<int64_t>(slots[t]) * row_elems, src + t * src_stride,
                row_bytes);
  }
}

void GroupedExpertFfn(const float* x, const int64_t* offsets, int64_t num_experts,
                      const float* const* gate_up, const float* const* down, int64_t hidden,
                      int64_t inter, float* out) {
  int64_t max_rows = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    max_rows = std::max(max_rows, offsets[e + 1] - offsets[e]);
  }
  if (max_rows == 0) return;
  std::vector<float> gate_up_out(static_cast<size_t>(max_rows * 2 * inter));
  std::vector<float> act(static_cast<size_t>(max_rows * inter));
  // Experts run one after another; OpenBLAS spreads each GEMM over its threads.
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t begin = offsets[e];
    const int64_t rows = offsets[e + 1] - begin;
    if (rows <= 0) continue;
    GemmNT(x + begin * hidden, gate_up[e], gate_up_out.data(), rows, 2 * inter, hidden);
    SiluMul(gate_up_out.data(), act.data(), rows, inter);
    GemmNT(act.data(), down[e], out + begin * hidden, rows, hidden, inter);
  }
}

void AddRmsNorm(float* residual, const float* x, const float* w, float* y, int64_t rows,
                int64_t dim, float eps) {
  Add(residual, x, rows * dim);
  RmsNorm(residual, dim, w, y, dim, rows, dim, eps);
}

absl::Status MoePermute(const float* x, int64_t num_tokens, int64_t hidden, const int32_t* topk_ids,
                        int64_t top_k, int64_t num_experts, int64_t* offsets, int32_t* row_pos,
                        float* gathered) {
  const int64_t pairs = num_tokens * top_k;
  for (int64_t i = 0; i < pairs; ++i) {
    if (topk_ids[i] < 0 || topk_ids[i] >= num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("MoePermute: pair ", i, " has expert id ",
                                                     topk_ids[i], " outside [0, ", num_experts,
                                                     ")"));
    }
  }
  std::fill(offsets, offsets + num_experts + 1, int64_t{0});
  for (int64_t i = 0; i < pairs; ++i) ++offsets[topk_ids[i] + 1];
  for (int64_t e = 0; e < num_experts; ++e) offsets[e + 1] += offsets[e];
  std::vector<int64_t> cursor(offsets, offsets + num_experts);
  for (int64_t i = 0; i < pairs; ++i) row_pos[i] = static_cast<int32_t>(cursor[topk_ids[i]]++);
  const auto row_bytes = static_cast<size_t>(hidden) * sizeof(float);
#pragma omp parallel for if (pairs * hidden >= kParallelWork)
  for (int64_t i = 0; i < pairs; ++i) {
    std::memcpy(gathered + static_cast<int64_t>(row_pos[i]) * hidden, x + (i / top_k) * hidden,
                row_bytes);
  }
  return absl::OkStatus();
}

void MoeCombine(const float* expert_out, const int32_t* row_pos, const float* topk_weights,
                int64_t num_tokens, int64_t top_k, int64_t hidden, float* out) {
#pragma omp parallel for if (num_tokens * top_k * hidden >= kParallelWork)
  for (int64_t t = 0; t < num_tokens; ++t) {
    float* dst = out + t * hidden;
    std::fill(dst, dst + hidden, 0.0f);
    for (int64_t k = 0; k < top_k; ++k) {
      const int32_t r = row_pos[t * top_k + k];
      if (r < 0) continue;
      const float wk = topk_weights[t * top_k + k];
      const float* src = expert_out + static_cast<int64_t>(r) * hidden;
      for (int64_t c = 0; c < hidden; ++c) dst[c] += wk * src[c];
    }
  }
}

}  // namespace sy::kernels::cpu
