// The engine on a GPU against Hugging Face transformers' goldens
// (tests/data/goldens), for every model family:
//  - fp32 on CUDA: teacher-forced logits within 1e-3 of transformers' at
//    every step, through one prefill and through the paged decode path, and
//    greedy generation through the Engine (device sampling, CUDA graphs)
//    equal to transformers' greedy tokens;
//  - bf16 on CUDA: teacher-forced logits within the tolerance derived below,
//    and the teacher-forced argmax equal to transformers' token at every step
//    whose golden margin (top-1 minus top-2 logit) exceeds twice it.
//
// The bf16 tolerance. Every bf16 store rounds to 8 significant bits, a
// relative error of at most 2^-9; along the residual stream a decoder layer
// stores about four roundings that reach the output (attention output, the
// residual after it, the expert/MLP output, the residual after that), and the
// final norm, its output and the lm_head input add three. Summing the
// first-order contributions, each bounded by 2^-8 of the logit scale (2^-9
// doubled for the amplification of normalisation and SiLU), gives
//   tol = (4 L + 3) * 2^-8 * max_j |golden logit_j|   per step,
// about 4.3% of the largest logit for the 2-layer test models. The bound
// holds where the routing is stable; where bf16 rounding moves a token's
// top-k expert choice across a tie (an O(1) change of that layer's output)
// it does not, and no elementwise bound does. Measured on an H200: the
// stable steps stay within 0.3-0.5 tol, 24 of the 1536 checked steps over
// all families (at most 6 of a family's 192) exceed it. The test therefore requires every step's
// argmax to equal transformers' where the margin exceeds 2 tol, and at most
// 15% of a family's steps above tol.
//
// Without a GPU every case skips with the reason.
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/loader.h"
#include "gtest/gtest.h"
#include "kernels/device.h"
#include "nlohmann/json.hpp"
#include "tests/golden_data.h"

namespace sy::engine {
namespace {

using ::sy::testing::GoldenPrompt;

std::string CaseDir(const std::string& name) { return ::sy::testing::GoldenDir(name); }

struct Param {
  std::string model;
  kernels::DType dtype;
};

class GpuGoldenTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    const absl::Status st = kernels::CudaAvailable();
    if (!st.ok()) GTEST_SKIP() << "CUDA not usable here: " << st.message();
    auto dc = kernels::DeviceContext::Create(kernels::Device::kCuda);
    ASSERT_TRUE(dc.ok()) << dc.status();
    dc_ = *std::move(dc);
    prompts_ = ::sy::testing::LoadGoldenPrompts(GetParam().model);
  }

  std::unique_ptr<ModelRunner> Runner() {
    ModelSource src;
    src.dir = CaseDir(GetParam().model);
    RunnerOptions options;
    options.ctx = dc_->ctx();
    options.dtype = GetParam().dtype;
    auto runner = LoadModelRunner(src, options);
    EXPECT_TRUE(runner.ok()) << runner.status();
    return runner.ok() ? *std::move(runner) : nullptr;
  }

  std::unique_ptr<KvCache> Cache(const ModelRunner& runner, int64_t block, int64_t tokens) {
    KvCacheOptions kv;
    kv.block_size = block;
    kv.max_tokens = tokens;
    kv.ctx = runner.ctx();
    kv.dtype = runner.dtype();
    auto cache = KvCache::Create(runner.config(), kv);
    EXPECT_TRUE(cache.ok()) << cache.status();
    return cache.ok() ? *std::move(cache) : nullptr;
  }

  bool fp32() const { return GetParam().dtype == kernels::DType::kF32; }

  float Tolerance(const ModelRunner& runner, const std::vector<float>& golden) const {
    if (fp32()) return 1e-3f;
    float scale = 0;
    for (float v : golden) scale = std::max(scale, std::fabs(v));
    const double layers = static_cast<double>(runner.config().num_layers);
    return static_cast<float>((4 * layers + 3) * std::ldexp(1.0, -8) * scale);
  }

  // Checks one step's logits against the golden step `s`.
  void CheckStep(const ModelRunner& runner, const float* got, const GoldenPrompt& g, size_t s,
                 const std::string& where, float* worst_ratio) {
    const std::vector<float>& want = g.logits[s];
    const float tol = Tolerance(runner, want);
    float diff = 0;
    size_t argmax = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      diff = std::max(diff, std::fabs(got[i] - want[i]));
      if (got[i] > got[argmax]) argmax = i;
    }
    *worst_ratio = std::max(*worst_ratio, diff / tol);
    ++steps_checked_;
    if (fp32()) {
      EXPECT_LE(diff, tol) << where << " step " << s;
    } else if (diff > tol) {
      ++steps_over_;
      std::cout << where << " step " << s << ": |diff| " << diff << " > tol " << tol
                << " (a routing flip)\n";
    }
    if (g.margins[s] > 2 * tol) {
      EXPECT_EQ(static_cast<int32_t>(argmax), g.greedy[s])
          << where << " step " << s << " (margin " << g.margins[s] << ", tol " << tol << ")";
    }
  }

  std::unique_ptr<kernels::DeviceContext> dc_;
  std::vector<GoldenPrompt> prompts_;
  int steps_checked_ = 0;
  int steps_over_ = 0;
};

TEST_P(GpuGoldenTest, TeacherForcedPrefillAndDecode) {
  auto runner = Runner();
  ASSERT_NE(runner, nullptr);
  const int64_t V = runner->config().vocab_size;
  float worst_prefill = 0, worst_decode = 0;
  for (size_t p = 0; p < prompts_.size(); ++p) {
    const GoldenPrompt& g = prompts_[p];
    const std::string where = GetParam().model + " prompt " + std::to_string(p);
    // One prefill over prompt + continuation.
    std::vector<int32_t> seq = g.prompt;
    seq.insert(seq.end(), g.greedy.begin(), g.greedy.end() - 1);
    auto cache = Cache(*runner, 16, static_cast<int64_t>(seq.size()));
    ASSERT_NE(cache, nullptr);
    auto blocks = cache->allocator().Allocate(cache->num_blocks());
    ASSERT_TRUE(blocks.ok());
    std::vector<float> logits;
    ASSERT_TRUE(runner->Forward(SingleSequenceBatch(seq, 0, *blocks, 16), *cache, &logits).ok());
    for (size_t s = 0; s < g.logits.size(); ++s) {
      CheckStep(*runner, logits.data() + (g.prompt.size() - 1 + s) * V, g, s, where + " prefill",
                &worst_prefill);
    }
    // Prefill the prompt, then one token per step through small blocks in
    // reverse order.
    constexpr int64_t kBlock = 4;
    auto dcache = Cache(*runner, kBlock,
                        static_cast<int64_t>(g.prompt.size() + g.greedy.size()) + 2 * kBlock);
    ASSERT_NE(dcache, nullptr);
    auto dblocks = dcache->allocator().Allocate(dcache->num_blocks());
    ASSERT_TRUE(dblocks.ok());
    std::vector<int32_t> table(dblocks->rbegin(), dblocks->rend());
    ASSERT_TRUE(
        runner->Forward(SingleSequenceBatch(g.prompt, 0, table, kBlock), *dcache, &logits).ok());
    CheckStep(*runner, logits.data() + (g.prompt.size() - 1) * V, g, 0, where + " decode",
              &worst_decode);
    for (size_t s = 1; s < g.logits.size(); ++s) {
      const auto pos = static_cast<int64_t>(g.prompt.size() + s - 1);
      ASSERT_TRUE(runner
                      ->Forward(SingleSequenceBatch({g.greedy[s - 1]}, pos, table, kBlock), *dcache,
                                &logits)
                      .ok());
      CheckStep(*runner, logits.data(), g, s, where + " decode", &worst_decode);
    }
  }
  std::cout << GetParam().model << " " << kernels::DTypeName(GetParam().dtype)
            << ": worst |logit - transformers| / tolerance: prefill " << worst_prefill
            << ", decode " << worst_decode << "; " << steps_over_ << " of " << steps_checked_
            << " steps above it\n";
  EXPECT_LE(steps_over_, 0.15 * steps_checked_);
}

// Greedy generation through the Engine: device sampling, and every decode
// step after the first replays a captured CUDA graph. All prompts run in one
// batch. fp32: every token equals transformers'; bf16: tokens equal up to the
// first step whose golden margin is within twice the tolerance.
TEST_P(GpuGoldenTest, EngineGreedyGeneration) {
  auto runner = Runner();
  ASSERT_NE(runner, nullptr);
  ModelRunner* raw = runner.get();
  EngineOptions opts;
  opts.max_num_seqs = 8;
  opts.kv.block_size = 16;
  opts.kv.max_tokens = 4096;
  opts.max_model_len = 256;
  auto engine = Engine::Create(std::move(runner), opts);
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (size_t p = 0; p < prompts_.size(); ++p) {
    GenerationRequest r;
    r.id = std::to_string(p);
    r.prompt = prompts_[p].prompt;
    r.stopping.max_new_tokens = static_cast<int32_t>(prompts_[p].greedy.size());
    r.stopping.ignore_eos = true;
    r.logprobs = 0;
    ASSERT_TRUE((*engine)->Add(r).ok());
  }
  std::map<std::string, std::vector<int32_t>> got;
  while ((*engine)->HasWork()) {
    auto updates = (*engine)->Step();
    ASSERT_TRUE(updates.ok()) << updates.status();
    for (const RequestUpdate& u : *updates) {
      EXPECT_NE(u.finish, FinishReason::kError) << u.error;
      got[u.id].insert(got[u.id].end(), u.new_tokens.begin(), u.new_tokens.end());
    }
  }
  for (size_t p = 0; p < prompts_.size(); ++p) {
    const GoldenPrompt& g = prompts_[p];
    const std::vector<int32_t>& tokens = got[std::to_string(p)];
    ASSERT_EQ(tokens.size(), g.greedy.size()) << "prompt " << p;
    for (size_t s = 0; s < g.greedy.size(); ++s) {
      if (!fp32() && !(g.margins[s] > 2 * Tolerance(*raw, g.logits[s]))) break;
      ASSERT_EQ(tokens[s], g.greedy[s]) << GetParam().model << " prompt " << p << " step " << s;
    }
  }
  EXPECT_GT(raw->graphs_captured(), 0) << "decode steps should replay CUDA graphs";
}

std::vector<Param> AllParams() {
  std::vector<Param> out;
  for (const char* m : {"deepseek_v3", "deepseek_v3_noqlora", "deepseek_v2", "qwen3_moe",
                        "qwen2_moe", "glm4_moe", "mixtral", "param2moe"}) {
    out.push_back({m, kernels::DType::kF32});
    out.push_back({m, kernels::DType::kBF16});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Families, GpuGoldenTest, ::testing::ValuesIn(AllParams()),
                         [](const auto& info) {
                           return info.param.model + "_" + kernels::DTypeName(info.param.dtype);
                         });

}  // namespace
}  // namespace sy::engine
