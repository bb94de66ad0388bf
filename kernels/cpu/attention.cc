// fp32 paged attention of the CPU backend.
//
// One work item is a (query token, query head) pair: it scores the query
// against every cache position it may see, takes a max-subtracted softmax and
// sums the value rows with those weights. Items are independent, so they are
// spread over an OpenMP team once the batch is big enough.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace sy::kernels::cpu {
namespace {

// Below this many multiply-adds (over the whole batch) one thread does it all.
constexpr int64_t kParallelWork = int64_t{1} << 16;

inline float Dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

}  // namespace

void PagedAttention(const float* q, const float* k_cache, const float* v_cache, float* out,
                    const AttentionBatch& batch, const AttentionShape& shape) {
  const int64_t num_seqs = batch.num_seqs;
  if (num_seqs <= 0 || shape.num_heads <= 0) return;
  const int32_t* q_start = batch.q_start;
  const int64_t first_token = q_start[0];
  const int64_t num_tokens = q_start[num_seqs] - first_token;
  if (num_tokens <= 0) return;

  // Owner sequence of every query token, the longest context (scratch size)
  // and a rough cost estimate for the parallel threshold.
  std::vector<int32_t> token_seq(static_cast<size_t>(num_tokens));
  int64_t max_context = 0;
  int64_t cost = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t context = batch.context_lens[s];
    max_context = std::max(max_context, context);
    for (int64_t t = q_start[s]; t < q_start[s + 1]; ++t) {
      token_seq[static_cast<size_t>(t - first_token)] = static_cast<int32_t>(s);
    }
    cost += (q_start[s + 1] - q_start[s]) * context;
  }
  cost *= shape.num_heads * (shape.head_dim + shape.v_dim);

  const int64_t heads_per_kv = shape.num_heads / shape.num_kv_heads;
  const int64_t num_items = num_tokens * shape.num_heads;
  const int64_t block_size = batch.block_size;

#pragma omp parallel if (cost >= kParallelWork)
  {
    std::vector<float> probs(static_cast<size_t>(std::max<int64_t>(max_context, 1)));
    std::vector<float> acc(static_cast<size_t>(std::max<int64_t>(shape.v_dim, 1)));
#pragma omp for schedule(dynamic, 4)
    for (int64_t item = 0; item < num_items; ++item) {
      const int64_t token = first_token + item / shape.num_heads;
      const int64_t head = item % shape.num_heads;
      const int64_t s = token_seq[static_cast<size_t>(token - first_token)];
      const int64_t q_len = q_start[s + 1] - q_start[s];
      const int64_t context = batch.context_lens[s];
      // Causal: the query at position `last` sees cache positions 0..last.
      const int64_t last = context - q_len + (token - q_start[s]);
      float* o = out + token * shape.out_stride + head * shape.v_dim;
      if (last < 0) {  // inconsistent context length: nothing to attend to
        std::fill(o, o + shape.v_dim, 0.0f);
        continue;
      }
      const int64_t visible = last + 1;
      const float* qh = q + token * shape.q_stride + head * shape.head_dim;
      const int64_t kv_head = head / heads_per_kv;
      const float* k_base = k_cache + kv_head * shape.head_dim;
      const float* v_base = v_cache + kv_head * shape.v_dim;
      const int32_t* table = batch.block_tables + s * batch.max_blocks_per_seq;
      auto slot_of = [&](int64_t p) {
        return static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size;
      };

      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < visible; ++p) {
        const float score =
            Dot(qh, k_base + slot_of(p) * shape.k_slot_stride, shape.head_dim) * shape.scale;
        probs[static_cast<size_t>(p)] = score;
        max_score = std::max(max_score, score);
      }
      float denom = 0.0f;
      for (int64_t p = 0; p < visible; ++p) {
        const float e = std::exp(probs[static_cast<size_t>(p)] - max_score);
        probs[static_cast<size_t>(p)] = e;
        denom += e;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      float* a = acc.data();
      for (int64_t p = 0; p < visible; ++p) {
        const float weight = probs[static_cast<size_t>(p)];
        const float* v = v_base + slot_of(p) * shape.v_slot_stride;
#pragma omp simd
        for (int64_t j = 0; j < shape.v_dim; ++j) a[j] += weight * v[j];
      }
      const float inv_denom = 1.0f / denom;
      for (int64_t j = 0; j < shape.v_dim; ++j) o[j] = a[j] * inv_denom;
    }
  }
}

}  // namespace sy::kernels::cpu
