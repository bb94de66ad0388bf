// Engine behaviour beyond numerics (those are in tests/golden_test.cc):
// validation, stopping, cancellation, admission, seeded sampling.
#include "engine/engine.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "engine/experts.h"
#include "engine/loader.h"
#include "engine/model_runner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace sy::engine {
namespace {

using ::testing::HasSubstr;

const char* kModel = "/tests/data/goldens/qwen3_moe";
std::unique_ptr<Engine> MakeEngine(EngineOptions opts = {}) {
  ModelSource src;
  src.dir = std::string(SY_SOURCE_DIR) + kModel;
  auto runner = LoadModelRunner(src, kernels::Context{});
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (opts.kv.num_blocks == 0 && opts.kv.max_tokens == 0) opts.kv.max_tokens = 1024;
  auto engine = Engine::Create(*std::move(runner), opts);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return *std::move(engine);
}

GenerationRequest Req(const std::string& id, int32_t max_new = 8) {
  GenerationRequest r;
  r.id = id;
  r.prompt = {1, 7, 42, 100, 3};
  r.stopping.max_new_tokens = max_new;
  return r;
}

struct Out {
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kNone;
  std::optional<RequestTimings> timings;
};

std::map<std::string, Out> RunAll(Engine& e) {
  std::map<std::string, Out> out;
  while (e.HasWork()) {
    auto updates = e.Step();
    EXPECT_TRUE(updates.ok()) << updates.status();
    if (!updates.ok()) break;
    for (const auto& u : *updates) {
      auto& o = out[u.id];
      o.tokens.insert(o.tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
      if (u.finish != FinishReason::kNone) {
        o.finish = u.finish;
        o.timings = u.timings;
      }
    }
  }
  return out;
}

TEST(EngineTest, InvalidRequestsNameTheField) {
  auto e = MakeEngine();
  struct Case {
    std::function<void(GenerationRequest&)> edit;
    const char* field;
  };
  const std::vector<Case> cases = {
      {[](auto& r) { r.prompt.clear(); }, "prompt must not be empty"},
      {[](auto& r) { r.prompt[2] = 512; }, "prompt[2]"},
      {[](auto& r) { r.prompt[0] = -1; }, "prompt[0]"},
      {[](auto& r) { r.stopping.max_new_tokens = 0; }, "stopping.max_new_tokens"},
      {[](auto& r) { r.stopping.max_new_tokens = 100000; }, "stopping.max_new_tokens"},
      {[](auto& r) { r.stopping.max_new_tokens = 510; }, "context limit"},
      {[](auto& r) { r.stopping.min_new_tokens = 9; }, "stopping.min_new_tokens"},
      {[](auto& r) { r.stopping.stop_token_ids = {600}; }, "stopping.stop_token_ids[0]"},
      {[](auto& r) { r.logprobs = 21; }, "logprobs"},
      {[](auto& r) { r.prompt_logprobs = -2; }, "prompt_logprobs"},
      {[](auto& r) { r.sampling.temperature = -1; }, "sampling.temperature"},
      {[](auto& r) { r.sampling.top_p = 0; }, "sampling.top_p"},
      {[](auto& r) { r.sampling.top_k = -1; }, "sampling.top_k"},
      {[](auto& r) { r.sampling.min_p = 2; }, "sampling.min_p"},
      {[](auto& r) { r.sampling.repetition_penalty = 0; }, "sampling.repetition_penalty"},
      {[](auto& r) { r.sampling.presence_penalty = 5; }, "sampling.presence_penalty"},
      {[](auto& r) { r.sampling.frequency_penalty = -3; }, "sampling.frequency_penalty"},
  };
  for (const auto& c : cases) {
    GenerationRequest r = Req("bad");
    c.edit(r);
    absl::Status st = e->Add(r);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(st.message(), HasSubstr(c.field));
  }
  // Nothing was queued, and a valid request still runs.
  EXPECT_FALSE(e->HasWork());
  ASSERT_TRUE(e->Add(Req("ok")).ok());
  EXPECT_EQ(RunAll(*e)["ok"].tokens.size(), 8u);
}

TEST(EngineTest, DuplicateIdAndFullQueueAreRefused) {
  EngineOptions opts;
  opts.max_waiting = 2;
  auto e = MakeEngine(opts);
  ASSERT_TRUE(e->Add(Req("a")).ok());
  EXPECT_EQ(e->Add(Req("a")).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(e->Add(Req("b")).ok());
  EXPECT_EQ(e->Add(Req("c")).code(), absl::StatusCode::kResourceExhausted);
  auto out = RunAll(*e);
  EXPECT_EQ(out["a"].finish, FinishReason::kLength);
  EXPECT_EQ(out["b"].finish, FinishReason::kLength);
}

TEST(EngineTest, StopTokenAndMinNewTokens) {
  auto e = MakeEngine();
  ASSERT_TRUE(e->Add(Req("ref", 12)).ok());
  const std::vector<int32_t> greedy = RunAll(*e)["ref"].tokens;
  ASSERT_EQ(greedy.size(), 12u);
  const int32_t stop = greedy[3];
  const size_t first = std::find(greedy.begin(), greedy.end(), stop) - greedy.begin();

  GenerationRequest r = Req("stop", 12);
  r.stopping.stop_token_ids = {stop};
  ASSERT_TRUE(e->Add(r).ok());
  auto out = RunAll(*e)["stop"];
  EXPECT_EQ(out.finish, FinishReason::kStop);
  ASSERT_EQ(out.tokens.size(), first + 1);
  EXPECT_EQ(out.tokens.back(), stop);

  // Below min_new_tokens the stop token is masked, so it cannot appear.
  r.id = "min";
  r.stopping.min_new_tokens = 12;
  ASSERT_TRUE(e->Add(r).ok());
  out = RunAll(*e)["min"];
  EXPECT_EQ(out.tokens.size(), 12u);
  EXPECT_EQ(std::count(out.tokens.begin(), out.tokens.end() - 1, stop), 0);
}

TEST(EngineTest, CancelFreesBlocksAndLeavesOthersIntact) {
  auto e = MakeEngine();
  ASSERT_TRUE(e->Add(Req("ref", 16)).ok());
  const std::vector<int32_t> ref = RunAll(*e)["ref"].tokens;
  const int64_t total = e->stats().kv_blocks_total;
  ASSERT_TRUE(e->Add(Req("keep", 16)).ok());
  ASSERT_TRUE(e->Add(Req("drop", 16)).ok());
  std::map<std::string, Out> out;
  for (int i = 0; i < 3; ++i) {
    auto updates = e->Step();
    ASSERT_TRUE(updates.ok());
    for (const auto& u : *updates) {
      out[u.id].tokens.insert(out[u.id].tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
    }
  }
  const int64_t free_before = e->stats().kv_blocks_free;
  ASSERT_TRUE(e->Cancel("drop").ok());
  EXPECT_GT(e->stats().kv_blocks_free, free_before);
  EXPECT_EQ(e->Cancel("drop").code(), absl::StatusCode::kNotFound);
  auto rest = RunAll(*e);
  EXPECT_EQ(rest["drop"].finish, FinishReason::kCancelled);
  out["keep"].tokens.insert(out["keep"].tokens.end(), rest["keep"].tokens.begin(),
                            rest["keep"].tokens.end());
  EXPECT_EQ(out["keep"].tokens, ref);
  EXPECT_EQ(e->stats().kv_blocks_free, total);
  EXPECT_EQ(e->stats().running, 0);
}

TEST(EngineTest, WaitsForKvBlocksInsteadOfFailing) {
  EngineOptions opts;
  opts.kv.block_size = 4;
  opts.kv.num_blocks = 4;  // one request of 5 + 8 tokens at a time
  opts.kv_admission = KvAdmission::kReserve;
  auto e = MakeEngine(opts);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(e->Add(Req("r" + std::to_string(i))).ok());
  auto step = e->Step();
  ASSERT_TRUE(step.ok());
  EXPECT_EQ(e->stats().running, 1);
  EXPECT_EQ(e->stats().waiting, 2);
  auto out = RunAll(*e);
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(out["r" + std::to_string(i)].finish, FinishReason::kLength);
    EXPECT_EQ(out["r" + std::to_string(i)].tokens.size(), 8u);
  }
  // A request that could never fit is refused up front.
  GenerationRequest big = Req("big", 20);
  EXPECT_THAT(e->Add(big).message(), HasSubstr("KV blocks"));
}

// Four requests of 5 + 40 tokens (12 blocks of 4 each at the end) on a
// cache of 24 blocks. Reserving the worst case runs two at a time; on
// demand all four start at once, and as they grow the newest are preempted
// (blocks freed, back to the queue) and later recomputed from prompt +
// output. Either way every request gets the tokens it gets alone (greedy,
// and a seeded sampled one with logprobs), no step fails, and every block
// comes back.
TEST(EngineTest, OnDemandAdmissionPreemptsAndRecomputesUnderKvPressure) {
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r = Req("r" + std::to_string(i), 40);
    r.prompt[0] = 1 + 17 * i;
    r.stopping.ignore_eos = true;
    reqs.push_back(r);
  }
  reqs[3].sampling.temperature = 0.9f;
  reqs[3].sampling.has_seed = true;
  reqs[3].sampling.seed = 77;
  reqs[3].logprobs = 2;
  reqs[2].prompt_logprobs = 1;
  std::map<std::string, std::vector<int32_t>> alone;
  {
    auto e = MakeEngine();
    for (const auto& r : reqs) {
      ASSERT_TRUE(e->Add(r).ok());
      alone[r.id] = RunAll(*e)[r.id].tokens;
      ASSERT_EQ(alone[r.id].size(), 40u);
    }
  }
  for (const KvAdmission mode : {KvAdmission::kOnDemand, KvAdmission::kReserve}) {
    SCOPED_TRACE(mode == KvAdmission::kOnDemand ? "on demand" : "reserve");
    EngineOptions opts;
    opts.kv.block_size = 4;
    opts.kv.num_blocks = 24;
    opts.kv_admission = mode;
    auto e = MakeEngine(opts);
    for (const auto& r : reqs) ASSERT_TRUE(e->Add(r).ok());
    std::map<std::string, Out> out;
    std::map<std::string, int> logprobs, prompt_logprob_updates;
    int64_t most_running = 0;
    while (e->HasWork()) {
      auto updates = e->Step();
      ASSERT_TRUE(updates.ok()) << updates.status();
      most_running = std::max(most_running, e->stats().running);
      for (const auto& u : *updates) {
        auto& o = out[u.id];
        o.tokens.insert(o.tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
        logprobs[u.id] += static_cast<int>(u.new_logprobs.size());
        prompt_logprob_updates[u.id] += u.prompt_logprobs.has_value() ? 1 : 0;
        if (u.finish != FinishReason::kNone) o.finish = u.finish;
      }
    }
    for (const auto& r : reqs) {
      EXPECT_EQ(out[r.id].finish, FinishReason::kLength) << r.id;
      EXPECT_EQ(out[r.id].tokens, alone[r.id]) << r.id;
    }
    EXPECT_EQ(logprobs["r3"], 40);  // one per token, none repeated by a recompute
    EXPECT_EQ(prompt_logprob_updates["r2"], 1);
    const EngineStats st = e->stats();
    EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
    if (mode == KvAdmission::kOnDemand) {
      EXPECT_EQ(most_running, 4);
      EXPECT_GT(st.preemptions, 0);
    } else {
      EXPECT_EQ(most_running, 2);
      EXPECT_EQ(st.preemptions, 0);
    }
  }
}

// A lone request that needs the whole cache runs on demand too (the
// admission reserve is kept only while others run), and a cancel of a
// preempted request frees nothing twice.
TEST(EngineTest, OnDemandEdgeCases) {
  EngineOptions opts;
  opts.kv.block_size = 4;
  opts.kv.num_blocks = 4;
  auto e = MakeEngine(opts);
  GenerationRequest whole = Req("whole", 11);  // 5 + 11 = 16 tokens: every block
  whole.stopping.ignore_eos = true;
  ASSERT_TRUE(e->Add(whole).ok());
  auto out = RunAll(*e);
  EXPECT_EQ(out["whole"].tokens.size(), 11u);
  EXPECT_EQ(e->stats().kv_blocks_free, 4);
  // Two that cannot both finish: the newer is preempted, then cancelled
  // while it waits.
  GenerationRequest a = Req("a", 11), b = Req("b", 11);
  a.stopping.ignore_eos = b.stopping.ignore_eos = true;
  b.prompt[0] = 2;
  opts.kv_admission_reserve_blocks = 0;  // b starts at once beside a
  e = MakeEngine(opts);
  ASSERT_TRUE(e->Add(a).ok());
  ASSERT_TRUE(e->Add(b).ok());
  while (e->stats().preemptions == 0 && e->HasWork()) ASSERT_TRUE(e->Step().ok());
  ASSERT_GT(e->stats().preemptions, 0);
  EXPECT_EQ(e->stats().waiting, 1);
  ASSERT_TRUE(e->Cancel("b").ok());
  out = RunAll(*e);
  EXPECT_EQ(out["a"].finish, FinishReason::kLength);
  EXPECT_EQ(out["b"].finish, FinishReason::kCancelled);
  EXPECT_EQ(e->stats().kv_blocks_free, 4);
}

TEST(EngineTest, SeededSamplingIsReproducibleWhateverTheBatch) {
  auto e = MakeEngine();
  GenerationRequest r = Req("seeded", 16);
  r.sampling.temperature = 1.0f;
  r.sampling.top_p = 0.9f;
  r.sampling.seed = 1234;
  r.sampling.has_seed = true;
  ASSERT_TRUE(e->Add(r).ok());
  const auto alone = RunAll(*e)["seeded"].tokens;
  // Same request again, now sharing every step with other sampled requests.
  for (int i = 0; i < 3; ++i) {
    GenerationRequest other = Req("other" + std::to_string(i), 16);
    other.prompt = {9, 8, static_cast<int32_t>(7 + i)};
    other.sampling.temperature = 0.8f;
    ASSERT_TRUE(e->Add(other).ok());
  }
  ASSERT_TRUE(e->Add(r).ok());
  auto batched = RunAll(*e);
  EXPECT_EQ(batched["seeded"].tokens, alone);
  // A different seed gives a different sample (16 tokens at temperature 1).
  r.sampling.seed = 99;
  ASSERT_TRUE(e->Add(r).ok());
  EXPECT_NE(RunAll(*e)["seeded"].tokens, alone);
}

TEST(EngineTest, TimingsReported) {
  auto e = MakeEngine();
  ASSERT_TRUE(e->Add(Req("t", 4)).ok());
  auto out = RunAll(*e)["t"];
  ASSERT_TRUE(out.timings.has_value());
  EXPECT_EQ(out.timings->prompt_tokens, 5);
  EXPECT_EQ(out.timings->output_tokens, 4);
  EXPECT_GE(out.timings->total_ms, out.timings->ttft_ms);
  EXPECT_GT(out.timings->ttft_ms, 0.0);
}

TEST(EngineTest, DummyLoadFormatRunsWithoutCheckpoint) {
  ModelSource src;
  src.dir = std::string(SY_SOURCE_DIR) + "/tests/data/goldens/deepseek_v3";
  src.load_format = "dummy";
  auto runner = LoadModelRunner(src, kernels::Context{});
  ASSERT_TRUE(runner.ok()) << runner.status();
  EngineOptions opts;
  opts.kv.max_tokens = 256;
  auto e = Engine::Create(*std::move(runner), opts);
  ASSERT_TRUE(e.ok());
  GenerationRequest r = Req("d", 6);
  r.stopping.ignore_eos = true;
  ASSERT_TRUE((*e)->Add(r).ok());
  EXPECT_EQ(RunAll(**e)["d"].tokens.size(), 6u);
  src.load_format = "pickle";
  EXPECT_THAT(LoadModelRunner(src, kernels::Context{}).status().message(),
              HasSubstr("load_format"));
}

// The model's EOS: stops generation (included as the last token), is ignored
// with ignore_eos, and is masked below min_new_tokens. The shipped qwen3_moe
// config has no EOS, so a copy of the model names one of its greedy tokens.
TEST(EngineTest, ModelEosStopsUnlessIgnored) {
  auto ref = MakeEngine();
  ASSERT_TRUE(ref->Add(Req("ref", 12)).ok());
  const std::vector<int32_t> greedy = RunAll(*ref)["ref"].tokens;
  const int32_t eos = greedy[4];
  const size_t first = std::find(greedy.begin(), greedy.end(), eos) - greedy.begin();

  const std::string dir = ::testing::TempDir() + "/eos_model";
  std::filesystem::create_directories(dir);
  const std::string src = std::string(SY_SOURCE_DIR) + kModel;
  std::filesystem::copy_file(src + "/model.safetensors", dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  std::ifstream in(src + "/config.json");
  nlohmann::json cfg = nlohmann::json::parse(in);
  cfg["eos_token_id"] = {eos, 511};
  std::ofstream(dir + "/config.json") << cfg.dump();

  ModelSource ms;
  ms.dir = dir;
  auto runner = LoadModelRunner(ms, kernels::Context{});
  ASSERT_TRUE(runner.ok()) << runner.status();
  EngineOptions opts;
  opts.kv.max_tokens = 1024;
  auto e = Engine::Create(*std::move(runner), opts);
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE((*e)->Add(Req("eos", 12)).ok());
  auto out = RunAll(**e)["eos"];
  EXPECT_EQ(out.finish, FinishReason::kStop);
  ASSERT_EQ(out.tokens.size(), first + 1);
  EXPECT_EQ(out.tokens.back(), eos);

  GenerationRequest r = Req("ignore", 12);
  r.stopping.ignore_eos = true;
  ASSERT_TRUE((*e)->Add(r).ok());
  out = RunAll(**e)["ignore"];
  EXPECT_EQ(out.finish, FinishReason::kLength);
  EXPECT_EQ(out.tokens, greedy);

  r = Req("min", 12);
  r.stopping.min_new_tokens = 12;
  ASSERT_TRUE((*e)->Add(r).ok());
  out = RunAll(**e)["min"];
  EXPECT_EQ(out.tokens.size(), 12u);
  EXPECT_EQ(std::count(out.tokens.begin(), out.tokens.end(), eos), 0);
}

TEST(EngineTest, PromptLogprobsOfHugePromptsAreRefused) {
  // A dummy model with a 4M-token vocabulary: prompt logprobs need
  // prompt_len x vocab logits at once, capped at 2^27.
  const std::string dir = ::testing::TempDir() + "/big_vocab";
  std::filesystem::create_directories(dir);
  nlohmann::json cfg = {{"architectures", {"Qwen3MoeForCausalLM"}},
                        {"vocab_size", 1 << 22},
                        {"hidden_size", 8},
                        {"num_hidden_layers", 1},
                        {"num_attention_heads", 2},
                        {"num_key_value_heads", 1},
                        {"head_dim", 4},
                        {"max_position_embeddings", 64},
                        {"intermediate_size", 8},
                        {"moe_intermediate_size", 4},
                        {"num_experts", 2},
                        {"num_experts_per_tok", 1}};
  std::ofstream(dir + "/config.json") << cfg.dump();
  ModelSource src;
  src.dir = dir;
  src.load_format = "dummy";
  auto runner = LoadModelRunner(src, kernels::Context{});
  ASSERT_TRUE(runner.ok()) << runner.status();
  EngineOptions opts;
  opts.kv.max_tokens = 64;
  auto e = Engine::Create(*std::move(runner), opts);
  ASSERT_TRUE(e.ok());
  GenerationRequest r = Req("pl", 1);
  r.prompt.assign(40, 7);  // 40 x 2^22 > 2^27
  r.prompt_logprobs = 0;
  absl::Status st = (*e)->Add(r);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("prompt_logprobs"));
  r.prompt.assign(20, 7);  // 20 x 2^22 < 2^27
  EXPECT_TRUE((*e)->Add(r).ok());
}

TEST(EngineTest, TinyTemperatureIsGreedy) {
  auto e = MakeEngine();
  ASSERT_TRUE(e->Add(Req("greedy", 8)).ok());
  const auto greedy = RunAll(*e)["greedy"].tokens;
  GenerationRequest r = Req("tiny", 8);
  r.sampling.temperature = 1e-30f;
  r.sampling.has_seed = true;
  r.sampling.seed = 3;
  ASSERT_TRUE(e->Add(r).ok());
  EXPECT_EQ(RunAll(*e)["tiny"].tokens, greedy);
}

TEST(EngineTest, OversizedKvCacheIsAnError) {
  ModelSource src;
  src.dir = std::string(SY_SOURCE_DIR) + kModel;
  auto runner = LoadModelRunner(src, kernels::Context{});
  ASSERT_TRUE(runner.ok());
  EngineOptions opts;
  opts.kv.num_blocks = 60000000;
  auto e = Engine::Create(*std::move(runner), opts);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("kv"));
}

// The local experts, failing calls `fail_from` .. `fail_from + fail_count - 1`
// with `code` (a mesh that loses a worker, then comes back).
class FlakyExperts : public ExpertExecutor {
 public:
  FlakyExperts(std::unique_ptr<ExpertExecutor> inner, int fail_from, int fail_count,
               absl::StatusCode code)
      : inner_(std::move(inner)),
        fail_from_(fail_from),
        fail_to_(fail_from + fail_count),
        code_(code) {}
  absl::Status Run(int64_t layer, const void* hidden, int64_t num_tokens, const int32_t* topk_ids,
                   const float* topk_weights, int64_t top_k, void* out) override {
    const int call = calls_++;
    if (call >= fail_from_ && call < fail_to_)
      return absl::Status(code_, "expert worker 1 is gone");
    return inner_->Run(layer, hidden, num_tokens, topk_ids, topk_weights, top_k, out);
  }

 private:
  std::unique_ptr<ExpertExecutor> inner_;
  int calls_ = 0;
  const int fail_from_, fail_to_;
  const absl::StatusCode code_;
};

std::unique_ptr<Engine> MakeFlakyEngine(int fail_from, int fail_count, absl::StatusCode code,
                                        bool keep) {
  const std::string dir = std::string(SY_SOURCE_DIR) + kModel;
  auto cfg = model::LoadModelConfig(dir);
  auto ckpt = model::Checkpoint::Open(dir);
  EXPECT_TRUE(cfg.ok() && ckpt.ok());
  auto dense = model::LoadDenseWeights(*cfg, **ckpt);
  auto local = LocalExpertExecutor::Load(*cfg, **ckpt, kernels::Context{});
  EXPECT_TRUE(dense.ok() && local.ok());
  auto runner = ModelRunner::Create(
      *cfg, *std::move(dense),
      std::make_unique<FlakyExperts>(*std::move(local), fail_from, fail_count, code),
      kernels::Context{});
  EXPECT_TRUE(runner.ok()) << runner.status();
  EngineOptions opts;
  opts.kv.max_tokens = 1024;
  opts.keep_batch_on_mesh_failure = keep;
  auto engine = Engine::Create(*std::move(runner), opts);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return *std::move(engine);
}

// keep_batch_on_mesh_failure: a step whose experts fail with a mesh error
// (here at the second MoE layer of the third forward pass) leaves
// every sequence as it was: Step() returns the error, the next Step() runs
// the same batch again, and every request ends with the tokens of a run
// without failures.
TEST(EngineTest, AMeshFailureKeepsTheBatchForTheRetry) {
  auto clean = MakeEngine();
  ASSERT_TRUE(clean->Add(Req("a", 12)).ok());
  ASSERT_TRUE(clean->Add(Req("b", 12)).ok());
  const auto want = RunAll(*clean);
  // qwen3_moe has 4 MoE layers: call 9 is the second of the third pass, after
  // the first layer's KV rows and experts already ran.
  auto e = MakeFlakyEngine(9, 1, absl::StatusCode::kUnavailable, true);
  ASSERT_TRUE(e->Add(Req("a", 12)).ok());
  ASSERT_TRUE(e->Add(Req("b", 12)).ok());
  std::map<std::string, Out> got;
  int failed_steps = 0;
  while (e->HasWork()) {
    auto updates = e->Step();
    if (!updates.ok()) {
      EXPECT_TRUE(IsMeshFailure(updates.status())) << updates.status();
      ASSERT_LT(++failed_steps, 5);
      continue;
    }
    for (const auto& u : *updates) {
      EXPECT_NE(u.finish, FinishReason::kError) << u.error;
      auto& o = got[u.id];
      o.tokens.insert(o.tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
      if (u.finish != FinishReason::kNone) o.finish = u.finish;
    }
  }
  EXPECT_EQ(failed_steps, 1);
  EXPECT_EQ(got["a"].tokens, want.at("a").tokens);
  EXPECT_EQ(got["b"].tokens, want.at("b").tokens);
  EXPECT_EQ(got["a"].finish, FinishReason::kLength);
  EXPECT_EQ(e->stats().kv_blocks_free, e->stats().kv_blocks_total);
}

// Without the option, or for an error that is not the mesh's, the step's
// sequences fail with the error's code, as before.
TEST(EngineTest, OtherFailuresStillFailTheBatch) {
  for (const bool keep : {false, true}) {
    SCOPED_TRACE(keep);
    const absl::StatusCode code =
        keep ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable;
    auto e = MakeFlakyEngine(0, 1, code, keep);
    ASSERT_TRUE(e->Add(Req("a", 4)).ok());
    auto updates = e->Step();
    ASSERT_TRUE(updates.ok()) << updates.status();
    ASSERT_EQ(updates->size(), 1u);
    EXPECT_EQ((*updates)[0].finish, FinishReason::kError);
    EXPECT_EQ((*updates)[0].error_code, code);
    EXPECT_FALSE(e->HasWork());
  }
}

}  // namespace
}  // namespace sy::engine
