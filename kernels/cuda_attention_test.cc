// CUDA PagedAttention against the CPU reference on the same (rounded)
// inputs: decode batches (split-K over the context), pure and chunked
// prefill, mixed batches, GQA group sizes, MLA's shared latent rows, block
// sizes, padded strides, shuffled block tables and the host hints
// (max_q_len / max_context_len / num_tokens) given or left 0.
//
// Cache slots no sequence may read (spare blocks, the tail of a last block)
// and the padding of q rows hold NaN, so a kernel that reads them fails.
//
// Tolerances: fp32 storage: rtol 1e-4, atol 1e-5 (fp32 accumulation order and
// exp2f only). bf16 storage: rtol OutputTolerance(bf16) (one output rounding)
// plus atol 3e-3: the tensor-core path rounds the softmax weights to bf16
// before P.V (relative error <= 2^-8 per weight, so at most ~4e-3 * max|v| in
// the worst case and a few 1e-4 typically, with |v| <= 1 here).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/kernels.h"

namespace sy::kernels {
namespace {

using ::sy::kernels::testing::ExpectClose;
using ::sy::kernels::testing::OutputTolerance;
using ::sy::kernels::testing::RoundTo;

struct SeqSpec {
  int32_t q_len;
  int32_t context_len;
};

enum class Hints { kExact, kZero, kLoose };

struct Case {
  std::string name;
  int64_t num_heads, num_kv_heads, head_dim, v_dim, block_size;
  std::vector<SeqSpec> seqs;
  bool mla = false;   // one latent row per slot: key = row, value = its first v_dim
  int64_t k_pad = 8;  // extra elements per cache slot (8 keeps 16-byte rows)
  int64_t v_pad = 8;
  int64_t q_pad = 0;        // extra elements per q row
  int64_t out_pad = 0;      // extra elements per out row
  int32_t first_token = 0;  // q_start[0]
  Hints hints = Hints::kExact;
  float scale_mul = 1.0f;  // > 1 sharpens the softmax
};

class CudaAttentionTest : public testing::CudaDTypeTest {
 protected:
  void Run(const Case& c, uint32_t seed) {
    SCOPED_TRACE(c.name + " (" + testing::DTypeLabel(dtype()) + ")");
    const auto num_seqs = static_cast<int64_t>(c.seqs.size());
    const int64_t bs = c.block_size;
    int64_t max_blocks = 0, total_blocks = 0, max_ctx = 0, max_q = 0;
    for (const SeqSpec& s : c.seqs) {
      const int64_t blocks = (s.context_len + bs - 1) / bs;
      max_blocks = std::max(max_blocks, blocks);
      total_blocks += blocks;
      max_ctx = std::max<int64_t>(max_ctx, s.context_len);
      max_q = std::max<int64_t>(max_q, s.q_len);
    }
    max_blocks = std::max<int64_t>(max_blocks, 1);
    const int64_t pool_blocks = total_blocks + 3;
    std::vector<int32_t> pool(static_cast<size_t>(pool_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(pool.begin(), pool.end(), rng);
    std::vector<int32_t> tables(static_cast<size_t>(num_seqs * max_blocks), -1);
    size_t next = 0;
    const int64_t num_slots = pool_blocks * bs;
    std::vector<char> used(static_cast<size_t>(num_slots), 0);
    for (int64_t s = 0; s < num_seqs; ++s) {
      const int64_t blocks = (c.seqs[s].context_len + bs - 1) / bs;
      for (int64_t b = 0; b < blocks; ++b) tables[s * max_blocks + b] = pool[next++];
      for (int64_t p = 0; p < c.seqs[s].context_len; ++p) {
        used[static_cast<size_t>(tables[s * max_blocks + p / bs] * bs + p % bs)] = 1;
      }
    }

    const int64_t k_stride = c.mla ? c.head_dim + c.k_pad : c.num_kv_heads * c.head_dim + c.k_pad;
    const int64_t v_stride = c.mla ? k_stride : c.num_kv_heads * c.v_dim + c.v_pad;
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    auto cache = [&](int64_t stride) {
      std::vector<float> v(static_cast<size_t>(num_slots * stride));
      for (int64_t x = 0; x < num_slots; ++x) {
        for (int64_t e = 0; e < stride; ++e) {
          v[static_cast<size_t>(x * stride + e)] = used[static_cast<size_t>(x)] ? uni(rng) : nan;
        }
      }
      return RoundTo(dtype(), std::move(v));
    };
    const std::vector<float> k_cache = cache(k_stride);
    const std::vector<float> v_store = c.mla ? std::vector<float>() : cache(v_stride);
    const std::vector<float>& v_cache = c.mla ? k_cache : v_store;

    std::vector<int32_t> q_start(1, c.first_token);
    std::vector<int32_t> context_lens;
    for (const SeqSpec& s : c.seqs) {
      q_start.push_back(q_start.back() + s.q_len);
      context_lens.push_back(s.context_len);
    }
    const int64_t num_rows = q_start.back();
    const int64_t q_stride = c.num_heads * c.head_dim + c.q_pad;
    const int64_t out_stride = c.num_heads * c.v_dim + c.out_pad;
    std::vector<float> q(static_cast<size_t>(num_rows * q_stride), nan);
    for (int64_t t = c.first_token; t < num_rows; ++t) {
      for (int64_t e = 0; e < c.num_heads * c.head_dim; ++e) {
        q[static_cast<size_t>(t * q_stride + e)] = uni(rng);
      }
    }
    q = RoundTo(dtype(), std::move(q));
    const std::vector<float> out_init(static_cast<size_t>(num_rows * out_stride), 7.0f);

    AttentionShape shape;
    shape.num_heads = c.num_heads;
    shape.num_kv_heads = c.num_kv_heads;
    shape.head_dim = c.head_dim;
    shape.v_dim = c.v_dim;
    shape.q_stride = q_stride;
    shape.out_stride = out_stride;
    shape.k_slot_stride = k_stride;
    shape.v_slot_stride = v_stride;
    shape.scale =
        c.scale_mul * static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));

    // CPU reference.
    std::vector<float> want = out_init;
    AttentionBatch cpu_batch{num_seqs,      q_start.data(), context_lens.data(),
                             tables.data(), max_blocks,     bs};
    ASSERT_TRUE(PagedAttention(Context{}, DType::kF32, q.data(), k_cache.data(), v_cache.data(),
                               want.data(), cpu_batch, shape)
                    .ok());

    // GPU.
    DeviceBuffer d_q = Upload(dtype(), q);
    DeviceBuffer d_k = Upload(dtype(), k_cache);
    DeviceBuffer d_v = c.mla ? DeviceBuffer() : Upload(dtype(), v_cache);
    DeviceBuffer d_out = Upload(dtype(), out_init);
    DeviceBuffer d_q_start = UploadRaw(q_start);
    DeviceBuffer d_ctx = UploadRaw(context_lens.empty() ? std::vector<int32_t>{0} : context_lens);
    DeviceBuffer d_tables = UploadRaw(tables);
    AttentionBatch batch{
        num_seqs, d_q_start.as<int32_t>(), d_ctx.as<int32_t>(), d_tables.as<int32_t>(), max_blocks,
        bs};
    if (c.hints == Hints::kExact) {
      batch.max_q_len = max_q;
      batch.max_context_len = max_ctx;
      batch.num_tokens = num_rows;
    } else if (c.hints == Hints::kLoose) {  // upper bounds, not exact values
      batch.max_q_len = max_q + 5;
      batch.max_context_len = max_blocks * bs;
      batch.num_tokens = num_rows;
    }
    const void* d_vp = c.mla ? d_k.data() : d_v.data();
    const absl::Status st =
        PagedAttention(gpu(), dtype(), d_q.data(), d_k.data(), d_vp, d_out.data(), batch, shape);
    ASSERT_TRUE(st.ok()) << st;
    const std::vector<float> got = Download(dtype(), d_out.data(), num_rows * out_stride);
    if (dtype() == DType::kF32) {
      ExpectClose(got, want, 1e-4, 1e-5, c.name);
    } else {
      ExpectClose(got, want, OutputTolerance(dtype()), 3e-3, c.name);
    }
  }
};

Case Gqa(std::string name, int64_t heads, int64_t kv, int64_t dim, int64_t bs,
         std::vector<SeqSpec> seqs) {
  Case c;
  c.name = std::move(name);
  c.num_heads = heads;
  c.num_kv_heads = kv;
  c.head_dim = dim;
  c.v_dim = dim;
  c.block_size = bs;
  c.seqs = std::move(seqs);
  return c;
}

Case Mla(std::string name, int64_t heads, int64_t dim, int64_t v_dim, int64_t bs,
         std::vector<SeqSpec> seqs) {
  Case c = Gqa(std::move(name), heads, 1, dim, bs, std::move(seqs));
  c.v_dim = v_dim;
  c.mla = true;
  return c;
}

TEST_P(CudaAttentionTest, EmptyBatchLeavesOutputAlone) {
  Run(Gqa("no sequences", 4, 2, 64, 16, {}), 1);
  Case c = Gqa("no sequences, rows before q_start[0]", 4, 2, 64, 16, {});
  c.first_token = 3;
  Run(c, 2);
}

TEST_P(CudaAttentionTest, SingleToken) {
  Run(Gqa("single token", 8, 2, 64, 16, {{1, 1}}), 3);
  Case c = Gqa("single token, no hints", 8, 2, 64, 16, {{1, 1}});
  c.hints = Hints::kZero;
  Run(c, 4);
}

TEST_P(CudaAttentionTest, DecodeVariedContexts) {
  // Qwen3-30B-A3B attention shape: 32 heads, 4 kv heads, head_dim 128.
  const std::vector<SeqSpec> seqs = {{1, 1}, {1, 3}, {1, 17}, {1, 1000}, {1, 5003}, {1, 64}};
  for (Hints h : {Hints::kExact, Hints::kZero, Hints::kLoose}) {
    Case c = Gqa("decode qwen3", 32, 4, 128, 16, seqs);
    c.hints = h;
    Run(c, 10 + static_cast<uint32_t>(h));
  }
}

TEST_P(CudaAttentionTest, DecodeLongContextManySplits) {
  Case c = Gqa("decode long", 8, 2, 128, 16, {{1, 6007}});
  Run(c, 20);
  c.name = "decode long, sharp softmax";
  c.scale_mul = 6.0f;
  Run(c, 21);
  c.name = "decode long, no hints";
  c.hints = Hints::kZero;
  Run(c, 22);
}

TEST_P(CudaAttentionTest, PurePrefill) {
  Run(Gqa("prefill bs16", 8, 2, 64, 16, {{64, 64}, {33, 33}, {1, 1}, {130, 130}}), 30);
  Run(Gqa("prefill bs7", 8, 2, 64, 7, {{64, 64}, {33, 33}, {1, 1}}), 31);
  Case c = Gqa("prefill no hints", 4, 4, 64, 16, {{70, 70}, {5, 5}});
  c.hints = Hints::kZero;
  Run(c, 32);
}

TEST_P(CudaAttentionTest, ChunkedPrefill) {
  Run(Gqa("chunked", 8, 2, 64, 16, {{16, 200}, {5, 37}, {40, 41}, {2, 900}}), 40);
  Case c = Gqa("chunked, loose hints", 32, 4, 128, 16, {{3, 700}, {20, 20}});
  c.hints = Hints::kLoose;
  Run(c, 41);
}

TEST_P(CudaAttentionTest, MixedBatchWithOffsetAndEmptySequences) {
  Case c = Gqa("mixed", 8, 2, 64, 16, {{4, 4}, {1, 23}, {0, 10}, {12, 50}, {1, 2000}, {1, 1}});
  c.first_token = 3;
  Run(c, 50);
  c.name = "mixed, no hints";
  c.hints = Hints::kZero;
  Run(c, 51);
}

TEST_P(CudaAttentionTest, InconsistentContextGivesZeros) {
  // q_len > context: the first query rows see no key (the reference writes 0).
  Run(Gqa("short context", 4, 2, 64, 16, {{4, 2}, {1, 5}}), 55);
}

TEST_P(CudaAttentionTest, GroupSizesAndBlockSizes) {
  uint32_t seed = 60;
  for (int64_t group : {1, 4, 8}) {
    for (int64_t bs : {1, 7, 16}) {
      const std::string name =
          "group " + std::to_string(group) + " block_size " + std::to_string(bs);
      Run(Gqa(name, 2 * group, 2, 64, bs, {{1, 300}, {9, 40}, {1, 1}, {1, 129}}), seed++);
    }
  }
}

TEST_P(CudaAttentionTest, HeadDims) {
  Run(Gqa("head_dim 256", 4, 1, 256, 16, {{1, 777}, {17, 60}}), 70);
  Run(Gqa("head_dim 80", 6, 3, 80, 16, {{1, 333}, {10, 10}}), 71);
  Run(Gqa("head_dim 96", 4, 2, 96, 16, {{1, 100}, {24, 24}}), 72);
  Run(Gqa("head_dim 72 (not a multiple of 16)", 4, 2, 72, 16, {{1, 100}, {8, 30}}), 73);
  Case c = Gqa("head_dim 48, v_dim 32", 4, 2, 48, 16, {{1, 400}, {12, 12}});
  c.v_dim = 32;
  Run(c, 74);
}

TEST_P(CudaAttentionTest, PaddedAndUnalignedStrides) {
  Case c = Gqa("aligned padding", 8, 2, 64, 16, {{1, 500}, {20, 50}});
  c.k_pad = 16;
  c.v_pad = 24;
  c.q_pad = 8;
  c.out_pad = 5;
  Run(c, 80);
  c.name = "odd padding";
  c.k_pad = 3;
  c.v_pad = 1;
  c.q_pad = 2;
  c.out_pad = 3;
  Run(c, 81);
}

TEST_P(CudaAttentionTest, MlaDeepSeekShape) {
  // DeepSeek-V3 absorbed MLA: latent 512 + rope 64 as one kv head, value =
  // the latent part of the same row; 16 heads keep the CPU reference quick.
  Case c = Mla("mla 576/512", 16, 576, 512, 16, {{1, 1}, {1, 37}, {1, 1500}, {6, 6}, {3, 90}});
  c.k_pad = 0;
  Run(c, 90);
  c.name = "mla 576/512, padded rows";
  c.k_pad = 8;
  c.hints = Hints::kZero;
  Run(c, 91);
  c.name = "mla 576/512, odd rows";
  c.k_pad = 1;
  c.hints = Hints::kExact;
  Run(c, 92);
  Case d = Mla("mla decode only", 16, 576, 512, 16, {{1, 2500}, {1, 100}});
  d.k_pad = 0;
  Run(d, 93);
}

TEST_P(CudaAttentionTest, MlaSmallOddShape) {
  Case c = Mla("mla 40/32", 4, 40, 32, 7, {{1, 13}, {3, 3}, {2, 18}, {1, 400}});
  c.k_pad = 0;
  Run(c, 95);
  c.name = "mla 40/32, bs 1";
  c.block_size = 1;
  Run(c, 96);
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaAttentionTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) {
                           return std::string(info.param == DType::kF32 ? "f32" : "bf16");
                         });

}  // namespace
}  // namespace sy::kernels
