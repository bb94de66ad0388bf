// The engine against Hugging Face transformers: for every golden case
// (tests/data/goldens, made by ../shared/tools/make_goldens.py) and prompt,
//  - teacher-forced logits within 1e-3 of transformers' at every step, both
//    through one prefill of prompt + continuation and through the decode path
//    (prefill, then one token per step through the paged KV cache);
//  - greedy generation equal to transformers' greedy tokens;
//  - all prompts batched in one engine, joining at different steps, give the
//    same tokens and logprobs as single runs.
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/loader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/golden_data.h"

namespace sy::engine {
namespace {

constexpr float kLogitTolerance = 1e-3f;

using ::sy::testing::GoldenPrompt;

struct GoldenCase {
  std::string dir;
  std::vector<GoldenPrompt> prompts;
};

std::string CaseDir(const std::string& name) { return ::sy::testing::GoldenDir(name); }

const GoldenCase& LoadCase(const std::string& name) {
  static std::map<std::string, GoldenCase> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  GoldenCase c;
  c.dir = CaseDir(name);
  c.prompts = ::sy::testing::LoadGoldenPrompts(name);
  return cache.emplace(name, std::move(c)).first->second;
}

std::unique_ptr<ModelRunner> LoadRunner(const std::string& name) {
  ModelSource src;
  src.dir = CaseDir(name);
  auto runner = LoadModelRunner(src, kernels::Context{});
  EXPECT_TRUE(runner.ok()) << runner.status();
  return runner.ok() ? *std::move(runner) : nullptr;
}

float MaxAbsDiff(const float* a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, TeacherForcedPrefillMatchesTransformers) {
  const GoldenCase& gc = LoadCase(GetParam());
  auto runner = LoadRunner(GetParam());
  ASSERT_NE(runner, nullptr);
  const int64_t V = runner->config().vocab_size;
  float worst = 0;
  for (size_t p = 0; p < gc.prompts.size(); ++p) {
    const GoldenPrompt& g = gc.prompts[p];
    std::vector<int32_t> seq = g.prompt;
    seq.insert(seq.end(), g.greedy.begin(), g.greedy.end() - 1);
    KvCacheOptions kv;
    kv.block_size = 16;
    kv.max_tokens = static_cast<int64_t>(seq.size());
    auto cache = KvCache::Create(runner->config(), kv);
    ASSERT_TRUE(cache.ok());
    auto blocks = (*cache)->allocator().Allocate((*cache)->num_blocks());
    ASSERT_TRUE(blocks.ok());
    std::vector<float> logits;
    ASSERT_TRUE(runner->Forward(SingleSequenceBatch(seq, 0, *blocks, 16), **cache, &logits).ok());
    for (size_t s = 0; s < g.logits.size(); ++s) {
      const float* row = logits.data() + (g.prompt.size() - 1 + s) * V;
      const float diff = MaxAbsDiff(row, g.logits[s]);
      worst = std::max(worst, diff);
      EXPECT_LT(diff, kLogitTolerance) << GetParam() << " prompt " << p << " step " << s;
    }
  }
  std::cout << GetParam() << ": max |logit - transformers| over all steps = " << worst << "\n";
}

TEST_P(GoldenTest, TeacherForcedDecodeMatchesTransformers) {
  const GoldenCase& gc = LoadCase(GetParam());
  auto runner = LoadRunner(GetParam());
  ASSERT_NE(runner, nullptr);
  const int64_t V = runner->config().vocab_size;
  constexpr int64_t kBlock = 4;  // small blocks: every sequence spans many
  for (size_t p = 0; p < gc.prompts.size(); ++p) {
    const GoldenPrompt& g = gc.prompts[p];
    KvCacheOptions kv;
    kv.block_size = kBlock;
    kv.max_tokens = static_cast<int64_t>(g.prompt.size() + g.greedy.size()) + 2 * kBlock;
    auto cache = KvCache::Create(runner->config(), kv);
    ASSERT_TRUE(cache.ok());
    // Reverse the block order so the table is not the identity.
    auto blocks = (*cache)->allocator().Allocate((*cache)->num_blocks());
    ASSERT_TRUE(blocks.ok());
    std::vector<int32_t> table(blocks->rbegin(), blocks->rend());
    std::vector<float> logits;
    ASSERT_TRUE(
        runner->Forward(SingleSequenceBatch(g.prompt, 0, table, kBlock), **cache, &logits).ok());
    EXPECT_LT(MaxAbsDiff(logits.data() + (g.prompt.size() - 1) * V, g.logits[0]), kLogitTolerance)
        << GetParam() << " prompt " << p << " step 0";
    for (size_t s = 1; s < g.logits.size(); ++s) {
      const int64_t pos = static_cast<int64_t>(g.prompt.size() + s - 1);
      ASSERT_TRUE(runner
                      ->Forward(SingleSequenceBatch({g.greedy[s - 1]}, pos, table, kBlock), **cache,
                                &logits)
                      .ok());
      EXPECT_LT(MaxAbsDiff(logits.data(), g.logits[s]), kLogitTolerance)
          << GetParam() << " prompt " << p << " step " << s;
    }
  }
}

GenerationRequest GreedyRequest(const GoldenPrompt& g, const std::string& id) {
  GenerationRequest r;
  r.id = id;
  r.prompt = g.prompt;
  r.stopping.max_new_tokens = static_cast<int32_t>(g.greedy.size());
  r.stopping.ignore_eos = true;
  r.logprobs = 5;
  return r;
}

struct Collected {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  FinishReason finish = FinishReason::kNone;
};

void Collect(const std::vector<RequestUpdate>& updates, std::map<std::string, Collected>* out) {
  for (const auto& u : updates) {
    Collected& c = (*out)[u.id];
    c.tokens.insert(c.tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
    c.logprobs.insert(c.logprobs.end(), u.new_logprobs.begin(), u.new_logprobs.end());
    if (u.finish != FinishReason::kNone) c.finish = u.finish;
  }
}

std::unique_ptr<Engine> MakeEngine(const std::string& name) {
  auto runner = LoadRunner(name);
  EngineOptions opts;
  opts.kv.block_size = 16;
  opts.kv.max_tokens = 2048;
  auto engine = Engine::Create(std::move(runner), opts);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

TEST_P(GoldenTest, GreedyGenerationSingleAndBatchedMatch) {
  const GoldenCase& gc = LoadCase(GetParam());
  auto engine = MakeEngine(GetParam());
  ASSERT_NE(engine, nullptr);
  // Single runs.
  std::map<std::string, Collected> single;
  for (size_t p = 0; p < gc.prompts.size(); ++p) {
    ASSERT_TRUE(engine->Add(GreedyRequest(gc.prompts[p], "s" + std::to_string(p))).ok());
    while (engine->HasWork()) {
      auto updates = engine->Step();
      ASSERT_TRUE(updates.ok()) << updates.status();
      Collect(*updates, &single);
    }
  }
  for (size_t p = 0; p < gc.prompts.size(); ++p) {
    const Collected& c = single["s" + std::to_string(p)];
    EXPECT_EQ(c.finish, FinishReason::kLength);
    EXPECT_THAT(c.tokens, ::testing::ElementsAreArray(gc.prompts[p].greedy))
        << GetParam() << " prompt " << p;
  }
  EXPECT_EQ(engine->stats().kv_blocks_free, engine->stats().kv_blocks_total);

  // Batched: prompt p joins at step 3 * p, while earlier ones are decoding.
  std::map<std::string, Collected> batched;
  size_t next = 0;
  for (int step = 0; next < gc.prompts.size() || engine->HasWork(); ++step) {
    while (next < gc.prompts.size() && static_cast<int>(3 * next) <= step) {
      ASSERT_TRUE(engine->Add(GreedyRequest(gc.prompts[next], "b" + std::to_string(next))).ok());
      ++next;
    }
    auto updates = engine->Step();
    ASSERT_TRUE(updates.ok()) << updates.status();
    Collect(*updates, &batched);
  }
  for (size_t p = 0; p < gc.prompts.size(); ++p) {
    const Collected& s = single["s" + std::to_string(p)];
    const Collected& b = batched["b" + std::to_string(p)];
    EXPECT_EQ(b.tokens, s.tokens) << GetParam() << " prompt " << p;
    ASSERT_EQ(b.logprobs.size(), s.logprobs.size());
    for (size_t i = 0; i < s.logprobs.size(); ++i) {
      EXPECT_NEAR(b.logprobs[i].logprob, s.logprobs[i].logprob, 1e-4)
          << GetParam() << " prompt " << p << " token " << i;
      ASSERT_EQ(b.logprobs[i].top.size(), 5u);
      for (size_t k = 0; k < 5; ++k) {
        EXPECT_NEAR(b.logprobs[i].top[k].logprob, s.logprobs[i].top[k].logprob, 1e-4);
      }
    }
  }
  EXPECT_EQ(engine->stats().kv_blocks_free, engine->stats().kv_blocks_total);
}

// Prompt logprobs through the engine API are transformers' log-softmax of the
// teacher-forced logits.
TEST_P(GoldenTest, PromptLogprobsMatchTransformers) {
  const GoldenCase& gc = LoadCase(GetParam());
  auto engine = MakeEngine(GetParam());
  ASSERT_NE(engine, nullptr);
  const GoldenPrompt& g = gc.prompts[1];
  GenerationRequest r;
  r.id = "pl";
  r.prompt = g.prompt;
  r.prompt.insert(r.prompt.end(), g.greedy.begin(), g.greedy.end());
  r.stopping.max_new_tokens = 1;
  r.prompt_logprobs = 3;
  ASSERT_TRUE(engine->Add(r).ok());
  auto updates = engine->Step();
  ASSERT_TRUE(updates.ok());
  ASSERT_EQ(updates->size(), 1u);
  const auto& pl = (*updates)[0].prompt_logprobs;
  ASSERT_TRUE(pl.has_value());
  ASSERT_EQ(pl->size(), r.prompt.size());
  EXPECT_FALSE((*pl)[0].has_value());
  for (size_t s = 0; s < g.greedy.size(); ++s) {
    const std::vector<float>& lg = g.logits[s];
    double mx = *std::max_element(lg.begin(), lg.end());
    double z = 0;
    for (float v : lg) z += std::exp(v - mx);
    const double expected = lg[g.greedy[s]] - mx - std::log(z);
    const auto& got = (*pl)[g.prompt.size() + s];
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->token, g.greedy[s]);
    EXPECT_NEAR(got->logprob, expected, kLogitTolerance) << GetParam() << " step " << s;
    ASSERT_EQ(got->top.size(), 3u);
    EXPECT_EQ(got->top[0].token, g.greedy[s]);  // greedy token is the argmax
  }
}

INSTANTIATE_TEST_SUITE_P(Goldens, GoldenTest,
                         ::testing::Values("deepseek_v3", "deepseek_v3_noqlora", "deepseek_v2",
                                           "qwen3_moe", "qwen2_moe", "glm4_moe", "mixtral",
                                           "param2moe"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace sy::engine
