// PagedAttention against a naive causal attention over per-sequence K/V
// arrays: decode and (chunked) prefill batches, GQA, MHA, the MLA layout
// (one latent row serving as key and value) and random block tables.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "kernels/kernels_test_util.h"

namespace sy::kernels {
namespace {

using ::sy::kernels::testing::ExpectAllNear;
using ::sy::kernels::testing::RandomVector;

struct SeqSpec {
  int32_t q_len;
  int32_t context_len;
};

struct AttentionCase {
  const char* name;
  int64_t num_heads, num_kv_heads, head_dim, v_dim, block_size;
  std::vector<SeqSpec> seqs;
  bool mla = false;         // v reads the first v_dim elements of the key row
  int32_t first_token = 0;  // q_start[0]; earlier rows of q/out are not ours
};

// Builds the cache through random, non-contiguous block tables, runs the
// kernel and compares with a double-precision loop over the logical K/V.
void RunCase(const AttentionCase& c, uint32_t seed) {
  SCOPED_TRACE(c.name);
  const auto num_seqs = static_cast<int64_t>(c.seqs.size());
  const int64_t bs = c.block_size;
  int64_t max_blocks = 0;
  int64_t total_blocks = 0;
  for (const SeqSpec& s : c.seqs) {
    const int64_t blocks = (s.context_len + bs - 1) / bs;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
  }
  const int64_t pool_blocks = total_blocks + 5;  // spare blocks stay garbage
  std::vector<int32_t> pool(static_cast<size_t>(pool_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs * max_blocks), -1);
  size_t next = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t blocks = (c.seqs[s].context_len + bs - 1) / bs;
    for (int64_t b = 0; b < blocks; ++b) tables[s * max_blocks + b] = pool[next++];
  }

  // Cache rows: MLA uses one latent row of head_dim (v = its prefix); other
  // layouts get separate K and V rows with a little padding per slot.
  const int64_t num_slots = pool_blocks * bs;
  const int64_t k_slot_stride = c.mla ? c.head_dim : c.num_kv_heads * c.head_dim + 3;
  const int64_t v_slot_stride = c.mla ? c.head_dim : c.num_kv_heads * c.v_dim + 1;
  const auto k_cache = RandomVector(static_cast<size_t>(num_slots * k_slot_stride), seed + 1);
  const auto v_store = RandomVector(static_cast<size_t>(num_slots * v_slot_stride), seed + 2);
  const std::vector<float>& v_cache = c.mla ? k_cache : v_store;

  std::vector<int32_t> q_start(1, c.first_token);
  std::vector<int32_t> context_lens;
  for (const SeqSpec& s : c.seqs) {
    q_start.push_back(q_start.back() + s.q_len);
    context_lens.push_back(s.context_len);
  }
  const int64_t num_q_rows = q_start.back();
  const int64_t q_stride = c.num_heads * c.head_dim + 2;
  const int64_t out_stride = c.num_heads * c.v_dim + 3;
  const auto q = RandomVector(static_cast<size_t>(num_q_rows * q_stride), seed + 3);
  std::vector<float> out(static_cast<size_t>(num_q_rows * out_stride), 7.0f);

  AttentionBatch batch{num_seqs,      q_start.data(), context_lens.data(),
                       tables.data(), max_blocks,     bs};
  AttentionShape shape;
  shape.num_heads = c.num_heads;
  shape.num_kv_heads = c.num_kv_heads;
  shape.head_dim = c.head_dim;
  shape.v_dim = c.v_dim;
  shape.q_stride = q_stride;
  shape.out_stride = out_stride;
  shape.k_slot_stride = k_slot_stride;
  shape.v_slot_stride = v_slot_stride;
  shape.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  ASSERT_TRUE(PagedAttention(Context{}, DType::kF32, q.data(), k_cache.data(), v_cache.data(),
                             out.data(), batch, shape)
                  .ok());

  std::vector<float> got;
  std::vector<double> want;
  const int64_t group = c.num_heads / c.num_kv_heads;
  for (int64_t s = 0; s < num_seqs; ++s) {
    auto slot = [&](int64_t p) { return tables[s * max_blocks + p / bs] * bs + p % bs; };
    const SeqSpec& spec = c.seqs[s];
    for (int32_t i = 0; i < spec.q_len; ++i) {
      const int64_t token = q_start[s] + i;
      const int64_t last = spec.context_len - spec.q_len + i;
      for (int64_t h = 0; h < c.num_heads; ++h) {
        const int64_t g = h / group;
        std::vector<double> scores(static_cast<size_t>(last + 1));
        for (int64_t p = 0; p <= last; ++p) {
          double dot = 0.0;
          for (int64_t d = 0; d < c.head_dim; ++d) {
            dot += static_cast<double>(q[token * q_stride + h * c.head_dim + d]) *
                   k_cache[slot(p) * k_slot_stride + g * c.head_dim + d];
          }
          scores[static_cast<size_t>(p)] = dot * shape.scale;
        }
        const double max_score = *std::max_element(scores.begin(), scores.end());
        double denom = 0.0;
        for (double& x : scores) denom += (x = std::exp(x - max_score));
        for (int64_t j = 0; j < c.v_dim; ++j) {
          double acc = 0.0;
          for (int64_t p = 0; p <= last; ++p) {
            acc +=
                scores[static_cast<size_t>(p)] * v_cache[slot(p) * v_slot_stride + g * c.v_dim + j];
          }
          want.push_back(acc / denom);
          got.push_back(out[token * out_stride + h * c.v_dim + j]);
        }
      }
      for (int64_t j = c.num_heads * c.v_dim; j < out_stride; ++j) {
        ASSERT_EQ(out[token * out_stride + j], 7.0f) << "out padding written";
      }
    }
  }
  for (int64_t r = 0; r < c.first_token * out_stride; ++r) {
    ASSERT_EQ(out[r], 7.0f) << "rows before q_start[0] written";
  }
  ExpectAllNear(got, want, 1e-5);
}

TEST(PagedAttentionTest, Decode) {
  RunCase({"decode gqa", 4, 2, 16, 16, 4, {{1, 1}, {1, 17}, {1, 40}}}, 100);
}

TEST(PagedAttentionTest, PrefillAndChunkedPrefill) {
  RunCase({"prefill gqa", 4, 2, 12, 8, 3, {{5, 5}, {3, 10}, {1, 9}, {7, 7}}}, 200);
  RunCase({"prefill mha", 3, 3, 9, 9, 8, {{6, 6}, {2, 30}}}, 300);
}

TEST(PagedAttentionTest, MixedBatchWithOffsetQueries) {
  AttentionCase c{"mixed", 4, 2, 16, 16, 5, {{4, 4}, {1, 23}, {2, 11}}};
  c.first_token = 2;
  RunCase(c, 400);
}

TEST(PagedAttentionTest, MlaSharedLatentRows) {
  // Absorbed MLA: one kv head; the key is the whole latent row (kv_lora + rope
  // part), the value its first v_dim elements.
  AttentionCase c{"mla", 4, 1, 24, 16, 4, {{1, 13}, {3, 3}, {2, 18}}};
  c.mla = true;
  RunCase(c, 500);
}

TEST(PagedAttentionTest, LargeBatchTakesTheParallelPath) {
  RunCase({"large", 8, 2, 64, 64, 16, {{64, 64}, {1, 300}, {20, 150}}}, 600);
  AttentionCase mla{"large mla", 16, 1, 96, 64, 16, {{32, 32}, {1, 200}}};
  mla.mla = true;
  RunCase(mla, 700);
}

}  // namespace
}  // namespace sy::kernels
