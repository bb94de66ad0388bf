// The lockstep MoE step over the inproc transport: 2 attention workers and 3
// expert workers (threads) with redundant slots give the same logits as the
// single-process engine, whatever the placement, including steps where one
// attention worker has no tokens.
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/loader.h"
#include "engine/model_runner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/safetensors_writer.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "services/moe/expert_copy.h"
#include "services/moe/remote_experts.h"
#include "transport/registry.h"

namespace sy::moe {
namespace {

const std::string kDir = std::string(SY_SOURCE_DIR) + "/tests/data/goldens/";

std::vector<std::vector<int32_t>> Prompts(const std::string& name) {
  std::ifstream in(kDir + name + "/golden.json");
  nlohmann::json j = nlohmann::json::parse(in);
  std::vector<std::vector<int32_t>> out;
  for (const auto& p : j["prompts"]) out.push_back(p["prompt"].get<std::vector<int32_t>>());
  return out;
}

// A golden model's config and checkpoint.
std::pair<absl::StatusOr<model::ModelConfig>, absl::StatusOr<std::unique_ptr<model::Checkpoint>>>
OpenGolden(const std::string& name) {
  auto cfg = model::LoadModelConfig(kDir + name);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  auto ckpt = model::Checkpoint::Open(kDir + name);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  return {std::move(cfg), std::move(ckpt)};
}

// Logits of prompt p (all rows) then of one decode token, from a runner.
struct Trace {
  std::vector<float> prefill;
  std::vector<float> decode;
};

Trace RunTrace(engine::ModelRunner& runner, const std::vector<int32_t>& prompt) {
  engine::KvCacheOptions kv;
  kv.block_size = 8;
  kv.max_tokens = 512;
  auto cache = engine::KvCache::Create(runner.config(), kv);
  EXPECT_TRUE(cache.ok());
  auto blocks = (*cache)->allocator().Allocate(8 + prompt.size() / 8);
  EXPECT_TRUE(blocks.ok());
  Trace t;
  EXPECT_TRUE(
      runner.Forward(engine::SingleSequenceBatch(prompt, 0, *blocks, 8), **cache, &t.prefill).ok());
  EXPECT_TRUE(runner
                  .Forward(engine::SingleSequenceBatch({prompt[0]}, prompt.size(), *blocks, 8),
                           **cache, &t.decode)
                  .ok());
  return t;
}

float MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// `n` connected inproc transports, ranks 0..n-1 (empty on failure).
std::vector<std::unique_ptr<transport::Transport>> InprocMesh(int32_t n) {
  auto transports = transport::CreateInprocTransports(n);
  if (!transports.ok()) {
    ADD_FAILURE() << transports.status();
    return {};
  }
  std::vector<transport::PeerAddress> peers;
  for (int32_t r = 0; r < n; ++r) peers.push_back({r, (*transports)[r]->local_address()});
  for (auto& t : *transports) {
    if (absl::Status st = t->Connect(peers); !st.ok()) {
      ADD_FAILURE() << st;
      return {};
    }
  }
  return *std::move(transports);
}

// Attention workers on ranks 0..num_aw-1, expert workers after them.
MeshRanks RanksOf(int32_t num_aw, int32_t num_ew) {
  MeshRanks ranks;
  for (int32_t i = 0; i < num_aw; ++i) ranks.attention.push_back(i);
  for (int32_t i = 0; i < num_ew; ++i) ranks.experts.push_back(num_aw + i);
  return ranks;
}

// The initial placement of the model's MoE layers.
absl::StatusOr<eplb::Placement> InitialPlacementOf(const model::ModelConfig& cfg,
                                                   const eplb::PlacementOptions& po) {
  std::vector<int32_t> moe_layers;
  for (int32_t l = 0; l < cfg.num_layers; ++l) {
    if (cfg.layer_is_moe[l]) moe_layers.push_back(l);
  }
  return eplb::InitialPlacement(moe_layers, static_cast<int32_t>(cfg.num_experts), po);
}

// An attention worker's side of the mesh: a model runner whose experts run
// through a RemoteExpertExecutor on `transport`, and a KV cache for it
// (null runner on failure).
struct AttentionSide {
  std::unique_ptr<engine::ModelRunner> runner;
  RemoteExpertExecutor* exec = nullptr;
  std::unique_ptr<engine::KvCache> cache;
};
AttentionSide MakeAttentionSide(const model::ModelConfig& cfg, const model::Checkpoint& ckpt,
                                const eplb::Placement& placement, const MeshRanks& ranks,
                                transport::Transport* transport, absl::Duration timeout,
                                int64_t generation = 0) {
  AttentionSide side;
  auto dense = model::LoadDenseWeights(cfg, ckpt);
  EXPECT_TRUE(dense.ok()) << dense.status();
  if (!dense.ok()) return side;
  auto exec =
      std::make_unique<RemoteExpertExecutor>(cfg, placement, ranks, transport, timeout, generation);
  side.exec = exec.get();
  auto runner =
      engine::ModelRunner::Create(cfg, *std::move(dense), std::move(exec), kernels::Context{});
  EXPECT_TRUE(runner.ok()) << runner.status();
  engine::KvCacheOptions kv;
  kv.block_size = 8;
  kv.max_tokens = 512;
  auto cache = engine::KvCache::Create(cfg, kv);
  EXPECT_TRUE(cache.ok()) << cache.status();
  if (!runner.ok() || !cache.ok()) return side;
  side.runner = *std::move(runner);
  side.cache = *std::move(cache);
  return side;
}

struct MeshCase {
  std::string model;
  int32_t expert_workers;
  int32_t redundant;
  eplb::PlacementOrder order;
  // Non-empty: the workers' slot ranges instead of equal ones (same slots).
  std::vector<int32_t> worker_begin = {};
};

class MoeMeshTest : public ::testing::TestWithParam<MeshCase> {};

TEST_P(MoeMeshTest, MatchesSingleProcessEngine) {
  const MeshCase mc = GetParam();
  const std::string dir = kDir + mc.model;
  auto prompts = Prompts(mc.model);
  // Reference: the single-process engine.
  engine::ModelSource src;
  src.dir = dir;
  auto local = engine::LoadModelRunner(src, kernels::Context{});
  ASSERT_TRUE(local.ok());
  Trace ref0 = RunTrace(**local, prompts[0]);
  Trace ref1 = RunTrace(**local, prompts[1]);

  auto cfg = model::LoadModelConfig(dir);
  ASSERT_TRUE(cfg.ok());
  auto ckpt = model::Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  eplb::PlacementOptions po;
  po.num_workers = mc.expert_workers;
  po.redundant = mc.redundant;
  po.order = mc.order;
  auto placement = InitialPlacementOf(*cfg, po);
  ASSERT_TRUE(placement.ok()) << placement.status();
  if (!mc.worker_begin.empty()) {
    placement->worker_begin = mc.worker_begin;
    ASSERT_TRUE(placement->Validate().ok()) << placement->Validate();
  }

  const int32_t num_aw = 2, num_ew = mc.expert_workers;
  const MeshRanks ranks = RanksOf(num_aw, num_ew);
  std::vector<std::unique_ptr<transport::Transport>> transports = InprocMesh(num_aw + num_ew);
  ASSERT_EQ(transports.size(), static_cast<size_t>(num_aw + num_ew));
  const absl::Duration timeout = absl::Seconds(20);

  // Expert workers serve 2 steps each.
  std::vector<std::thread> ews;
  for (int32_t w = 0; w < num_ew; ++w) {
    ews.emplace_back([&, w] {
      auto server = ExpertServer::Create(*cfg, *placement, w, ranks, transports[num_aw + w].get(),
                                         ckpt->get(), 0, timeout, kernels::Context{});
      ASSERT_TRUE(server.ok()) << server.status();
      for (int s = 0; s < 2; ++s) ASSERT_TRUE((*server)->ServeStep().ok());
    });
  }
  // Attention worker 0 runs prefill + decode; worker 1 prefill, then an
  // empty step.
  Trace got0, got1;
  std::thread aw0([&] {
    auto dense = model::LoadDenseWeights(*cfg, **ckpt);
    ASSERT_TRUE(dense.ok());
    auto exec = std::make_unique<RemoteExpertExecutor>(*cfg, *placement, ranks, transports[0].get(),
                                                       timeout);
    auto runner =
        engine::ModelRunner::Create(*cfg, *std::move(dense), std::move(exec), kernels::Context{});
    ASSERT_TRUE(runner.ok());
    got0 = RunTrace(**runner, prompts[0]);
  });
  std::thread aw1([&] {
    AttentionSide side =
        MakeAttentionSide(*cfg, **ckpt, *placement, ranks, transports[1].get(), timeout);
    ASSERT_NE(side.runner, nullptr);
    RemoteExpertExecutor* raw = side.exec;
    auto blocks = side.cache->allocator().Allocate(8);
    ASSERT_TRUE(blocks.ok());
    ASSERT_TRUE(side.runner
                    ->Forward(engine::SingleSequenceBatch(prompts[1], 0, *blocks, 8), *side.cache,
                              &got1.prefill)
                    .ok());
    ASSERT_TRUE(raw->RunEmptyStep().ok());
  });
  aw0.join();
  aw1.join();
  for (auto& t : ews) t.join();
  EXPECT_LT(MaxDiff(got0.prefill, ref0.prefill), 1e-4);
  EXPECT_LT(MaxDiff(got0.decode, ref0.decode), 1e-4);
  EXPECT_LT(MaxDiff(got1.prefill, ref1.prefill), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Placements, MoeMeshTest,
    ::testing::Values(MeshCase{"qwen3_moe", 3, 2, eplb::PlacementOrder::kContiguous},
                      MeshCase{"qwen3_moe", 1, 0, eplb::PlacementOrder::kContiguous},
                      MeshCase{"qwen3_moe", 2, 4, eplb::PlacementOrder::kStrided},
                      MeshCase{"deepseek_v3", 3, 4, eplb::PlacementOrder::kStrided},
                      MeshCase{"mixtral", 2, 2, eplb::PlacementOrder::kContiguous},
                      // Uneven slot counts: 2 / 5 / 11 of qwen3_moe's 18 slots.
                      MeshCase{
                          "qwen3_moe", 3, 2, eplb::PlacementOrder::kContiguous, {0, 2, 7, 18}}),
    [](const auto& info) {
      return info.param.model + "_ew" + std::to_string(info.param.expert_workers) + "_r" +
             std::to_string(info.param.redundant) +
             (info.param.order == eplb::PlacementOrder::kStrided ? "_strided" : "_contiguous") +
             (info.param.worker_begin.empty() ? "" : "_uneven");
    });

// Logits of a prompt's prefill and then `decode` teacher-forced decode steps
// (the prompt's tokens again), one mesh step each; `after_step(i)` runs
// after step i.
std::vector<std::vector<float>> RunSteps(engine::ModelRunner& runner,
                                         const std::vector<int32_t>& prompt, int decode,
                                         const std::function<void(int)>& after_step = {}) {
  engine::KvCacheOptions kv;
  kv.block_size = 8;
  kv.max_tokens = 512;
  auto cache = engine::KvCache::Create(runner.config(), kv);
  EXPECT_TRUE(cache.ok());
  auto blocks = (*cache)->allocator().Allocate(8 + (prompt.size() + decode) / 8);
  EXPECT_TRUE(blocks.ok());
  std::vector<std::vector<float>> out(decode + 1);
  EXPECT_TRUE(
      runner.Forward(engine::SingleSequenceBatch(prompt, 0, *blocks, 8), **cache, &out[0]).ok());
  if (after_step) after_step(0);
  for (int i = 1; i <= decode; ++i) {
    const int32_t tok = prompt[static_cast<size_t>(i) % prompt.size()];
    EXPECT_TRUE(runner
                    .Forward(engine::SingleSequenceBatch({tok}, prompt.size() + i - 1, *blocks, 8),
                             **cache, &out[i])
                    .ok());
    if (after_step) after_step(i);
  }
  return out;
}

// RunSteps of each prompt on the single-process engine of golden `model`.
std::vector<std::vector<std::vector<float>>> ReferenceSteps(
    const std::string& model, const std::vector<std::vector<int32_t>>& prompts, int decode) {
  engine::ModelSource src;
  src.dir = kDir + model;
  auto local = engine::LoadModelRunner(src, kernels::Context{});
  EXPECT_TRUE(local.ok()) << local.status();
  std::vector<std::vector<std::vector<float>>> out;
  for (const auto& p : prompts) {
    out.push_back(local.ok() ? RunSteps(**local, p, decode) : std::vector<std::vector<float>>{});
  }
  return out;
}

// An expert worker dies mid-run (its transport leaves the fabric after two
// steps). The attention worker's next step fails; the "coordinator" (the
// test) re-forms the mesh over the survivor (eplb::SurvivorPlacement: every
// expert has a replica there) at a new generation; the surviving expert
// worker is interrupted out of its wait and adopts it, the attention worker
// adopts it and retries the failed step. Every step's logits still equal the
// single-process engine's.
TEST(MoeMeshReformTest, SurvivorsServeOnAfterAnExpertWorkerDies) {
  auto prompts = Prompts("qwen3_moe");
  const int kDecode = 5;
  const auto ref = ReferenceSteps("qwen3_moe", {prompts[0]}, kDecode)[0];

  auto [cfg, ckpt] = OpenGolden("qwen3_moe");
  ASSERT_TRUE(cfg.ok() && ckpt.ok());
  // Each of the two expert workers holds every expert.
  eplb::PlacementOptions po;
  po.num_workers = 2;
  po.redundant = static_cast<int32_t>(cfg->num_experts);
  auto placement = InitialPlacementOf(*cfg, po);
  ASSERT_TRUE(placement.ok()) << placement.status();
  auto survivors = eplb::SurvivorPlacement(*placement, {true, false}, placement->epoch + 1);
  ASSERT_TRUE(survivors.ok()) << survivors.status();

  const MeshRanks ranks = RanksOf(1, 2);
  std::vector<std::unique_ptr<transport::Transport>> transports = InprocMesh(3);
  ASSERT_EQ(transports.size(), 3u);
  const absl::Duration timeout = absl::Seconds(20);
  std::vector<std::unique_ptr<ExpertServer>> servers(2);
  for (int32_t w = 0; w < 2; ++w) {
    auto server = ExpertServer::Create(*cfg, *placement, w, ranks, transports[1 + w].get(),
                                       ckpt->get(), 0, timeout, kernels::Context{}, 1);
    ASSERT_TRUE(server.ok()) << server.status();
    servers[w] = *std::move(server);
  }
  std::atomic<bool> done{false};
  std::atomic<int> survivor_reforms{0};
  std::thread survivor([&] {
    while (!done.load()) {
      if (servers[0]->ServeStep().ok()) continue;
      if (done.load()) break;
      absl::StatusOr<bool> adopted = servers[0]->AwaitReform(absl::Seconds(10));
      ASSERT_TRUE(adopted.ok()) << adopted.status();
      ASSERT_TRUE(*adopted) << "no reform came";
      ++survivor_reforms;
    }
  });
  std::thread dying([&] {
    for (int s = 0; s < 2; ++s) ASSERT_TRUE(servers[1]->ServeStep().ok());
    ASSERT_TRUE(transports[2]->Close().ok());  // gone, like a killed process
  });

  AttentionSide side =
      MakeAttentionSide(*cfg, **ckpt, *placement, ranks, transports[0].get(), timeout, 1);
  ASSERT_NE(side.runner, nullptr);
  RemoteExpertExecutor* aw = side.exec;
  const auto& prompt = prompts[0];
  auto blocks = side.cache->allocator().Allocate(8 + (prompt.size() + kDecode) / 8);
  ASSERT_TRUE(blocks.ok());
  int failures = 0;
  std::vector<std::vector<float>> got(kDecode + 1);
  for (int i = 0; i <= kDecode; ++i) {
    const engine::ForwardBatch b =
        i == 0 ? engine::SingleSequenceBatch(prompt, 0, *blocks, 8)
               : engine::SingleSequenceBatch({prompt[static_cast<size_t>(i) % prompt.size()]},
                                             prompt.size() + i - 1, *blocks, 8);
    absl::Status st = side.runner->Forward(b, *side.cache, &got[i]);
    if (!st.ok()) {
      ++failures;
      ASSERT_LE(failures, 1) << st;
      EXPECT_TRUE(engine::IsMeshFailure(st)) << st;
      // The coordinator re-forms the mesh over the survivor (the dead
      // worker's rank out of the mesh).
      MeshRanks survivor_ranks = ranks;
      survivor_ranks.experts[1] = -1;
      const MeshReform reform{2, *survivors, survivor_ranks, {}};
      servers[0]->RequestReform(reform);
      aw->RequestReform(reform);
      ASSERT_TRUE(aw->AwaitReform(absl::Seconds(5)));
      EXPECT_EQ(aw->serving_epoch(), survivors->epoch);
      st = side.runner->Forward(b, *side.cache, &got[i]);
      ASSERT_TRUE(st.ok()) << "retry of step " << i << ": " << st;
    }
    EXPECT_LT(MaxDiff(got[i], ref[i]), 1e-4) << "step " << i;
  }
  EXPECT_EQ(failures, 1);
  done.store(true);
  transports[1]->Interrupt();
  survivor.join();
  dying.join();
  EXPECT_EQ(survivor_reforms.load(), 1);
  EXPECT_EQ(servers[0]->serving_epoch(), survivors->epoch);
  EXPECT_EQ(servers[0]->generation(), 2);
}

// A re-placement while the mesh serves: the expert workers stage a new
// placement (other experts on each worker, other slot counts) on their own
// threads while their step loops run, the attention workers are offered it,
// and the whole mesh switches at the step after the leader's announcement.
// Every step's logits equal the single-process engine's, before, across and
// after the switch, and every worker ends on the new epoch with nothing left
// staged.
TEST(MoeMeshSwitchTest, SwitchesPlacementBetweenStepsWithoutChangingResults) {
  auto prompts = Prompts("qwen3_moe");
  const int kDecode = 6;
  const auto refs = ReferenceSteps("qwen3_moe", {prompts[0], prompts[1]}, kDecode);

  auto [cfg, ckpt] = OpenGolden("qwen3_moe");
  ASSERT_TRUE(cfg.ok() && ckpt.ok());
  eplb::PlacementOptions po;
  po.num_workers = 3;
  po.redundant = 2;
  auto before = InitialPlacementOf(*cfg, po);
  ASSERT_TRUE(before.ok()) << before.status();
  po.order = eplb::PlacementOrder::kStrided;
  po.replicate = {5, 9};
  auto after = InitialPlacementOf(*cfg, po);
  ASSERT_TRUE(after.ok()) << after.status();
  after->epoch = before->epoch + 1;
  after->worker_begin = {0, 4, 9, after->num_slots};
  ASSERT_TRUE(after->Validate().ok()) << after->Validate();
  ASSERT_NE(after->phy2log, before->phy2log);

  const int32_t num_aw = 2, num_ew = 3;
  const MeshRanks ranks = RanksOf(num_aw, num_ew);
  std::vector<std::unique_ptr<transport::Transport>> transports = InprocMesh(num_aw + num_ew);
  ASSERT_EQ(transports.size(), static_cast<size_t>(num_aw + num_ew));
  const absl::Duration timeout = absl::Seconds(20);

  std::vector<std::unique_ptr<ExpertServer>> servers(num_ew);
  for (int32_t w = 0; w < num_ew; ++w) {
    auto server = ExpertServer::Create(*cfg, *before, w, ranks, transports[num_aw + w].get(),
                                       ckpt->get(), 0, timeout, kernels::Context{});
    ASSERT_TRUE(server.ok()) << server.status();
    servers[w] = *std::move(server);
  }
  std::vector<std::thread> ews;
  for (int32_t w = 0; w < num_ew; ++w) {
    ews.emplace_back([&, w] {
      for (int s = 0; s <= kDecode; ++s) ASSERT_TRUE(servers[w]->ServeStep().ok()) << "step " << s;
    });
  }
  // The attention workers pause after step 1 until the placement has been
  // staged everywhere and offered to them: the leader announces the switch in
  // step 2 and the mesh serves the new placement from step 3.
  std::mutex mu;
  std::condition_variable cv;
  bool offered = false;
  int paused = 0;
  std::vector<RemoteExpertExecutor*> execs(num_aw, nullptr);
  std::vector<std::vector<std::vector<float>>> got(num_aw);
  std::vector<std::thread> aws;
  for (int32_t a = 0; a < num_aw; ++a) {
    aws.emplace_back([&, a] {
      auto dense = model::LoadDenseWeights(*cfg, **ckpt);
      ASSERT_TRUE(dense.ok());
      auto exec = std::make_unique<RemoteExpertExecutor>(*cfg, *before, ranks, transports[a].get(),
                                                         timeout);
      {
        std::lock_guard<std::mutex> lock(mu);
        execs[a] = exec.get();
        cv.notify_all();
      }
      auto runner =
          engine::ModelRunner::Create(*cfg, *std::move(dense), std::move(exec), kernels::Context{});
      ASSERT_TRUE(runner.ok());
      got[a] = RunSteps(**runner, prompts[a], kDecode, [&](int step) {
        if (step != 1) return;
        std::unique_lock<std::mutex> lock(mu);
        ++paused;
        cv.notify_all();
        cv.wait(lock, [&] { return offered; });
      });
    });
  }
  // Stage on threads of their own while the expert workers' loops run. The
  // experts a worker does not serve yet are copied from the workers that do,
  // over the expert workers' own staging transport; nothing is read from the
  // checkpoint (the fetch fails for anything not copied).
  std::vector<std::unique_ptr<transport::Transport>> staging = InprocMesh(num_ew);
  ASSERT_EQ(staging.size(), static_cast<size_t>(num_ew));
  std::vector<std::thread> stagers;
  std::vector<absl::StatusOr<StageStats>> staged(num_ew, absl::UnknownError("not run"));
  std::vector<size_t> copied_count(num_ew, 0);
  for (int32_t w = 0; w < num_ew; ++w) {
    stagers.emplace_back([&, w] {
      const CopyPlan plan = PlanExpertCopies(servers[w]->serving_placement(), *after, w);
      auto copied = CopyExperts(
          plan, after->epoch, *cfg,
          [&](const ExpertKey& k) { return servers[w]->Held(k.first, k.second); }, *staging[w],
          timeout);
      if (!copied.ok()) {
        staged[w] = copied.status();
        return;
      }
      copied_count[w] = copied->size();
      staged[w] = servers[w]->Stage(
          *after, [&](int32_t layer, int32_t expert) -> absl::StatusOr<model::MlpWeights> {
            auto it = copied->find({layer, expert});
            if (it == copied->end()) {
              return absl::NotFoundError("expert " + std::to_string(expert) + " of layer " +
                                         std::to_string(layer) + " was not copied");
            }
            return std::move(it->second);
          });
    });
  }
  for (auto& t : stagers) t.join();
  for (int32_t w = 0; w < num_ew; ++w) {
    ASSERT_TRUE(staged[w].ok()) << staged[w].status();
    EXPECT_EQ(servers[w]->staged_epoch(), after->epoch);
    EXPECT_EQ(servers[w]->serving_epoch(), before->epoch);
  }
  // Some experts stay where they are (shared, not reloaded), others move.
  int64_t kept = 0, fetched = 0;
  for (const auto& st : staged) {
    kept += st->kept_experts;
    fetched += st->fetched_experts;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(fetched, 0);
  size_t copied_total = 0;
  for (size_t c : copied_count) copied_total += c;
  EXPECT_EQ(copied_total, static_cast<size_t>(fetched));
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return paused == num_aw; });
    for (RemoteExpertExecutor* e : execs) {
      EXPECT_EQ(e->serving_epoch(), before->epoch);
      e->OfferPlacement(*after);
    }
    offered = true;
    cv.notify_all();
  }
  for (auto& t : aws) t.join();
  for (auto& t : ews) t.join();
  for (int32_t a = 0; a < num_aw; ++a) {
    ASSERT_EQ(got[a].size(), refs[a].size());
    for (size_t i = 0; i < got[a].size(); ++i) {
      EXPECT_LT(MaxDiff(got[a][i], refs[a][i]), 1e-4) << "attention worker " << a << " step " << i;
    }
  }
  for (const auto& s : servers) {
    EXPECT_EQ(s->serving_epoch(), after->epoch);
    EXPECT_EQ(s->staged_epoch(), 0);
  }
}

// Two placements of the model's MoE layers on 2 expert workers: contiguous
// (epoch 1), then strided (epoch 2).
std::pair<absl::StatusOr<eplb::Placement>, absl::StatusOr<eplb::Placement>> ContiguousThenStrided(
    const model::ModelConfig& cfg) {
  eplb::PlacementOptions po;
  po.num_workers = 2;
  auto before = InitialPlacementOf(cfg, po);
  po.order = eplb::PlacementOrder::kStrided;
  auto after = InitialPlacementOf(cfg, po);
  if (after.ok()) after->epoch = 2;
  return {std::move(before), std::move(after)};
}

// Copying from a peer that never answers fails within the timeout, naming
// the epoch (the expert worker then loads the experts from its checkpoint).
TEST(ExpertCopyTest, APeerThatNeverAnswersFailsWithinTheTimeout) {
  auto [cfg, ckpt] = OpenGolden("qwen3_moe");
  ASSERT_TRUE(cfg.ok() && ckpt.ok());
  auto [before, after] = ContiguousThenStrided(*cfg);
  ASSERT_TRUE(before.ok() && after.ok());
  const CopyPlan plan = PlanExpertCopies(*before, *after, 0);
  ASSERT_FALSE(plan.receive.empty());
  ASSERT_FALSE(plan.send.empty());
  std::vector<std::unique_ptr<transport::Transport>> staging = InprocMesh(2);
  ASSERT_EQ(staging.size(), 2u);
  auto server = ExpertServer::Create(*cfg, *before, 0, MeshRanks{}, nullptr, ckpt->get(), 0,
                                     absl::Seconds(5), kernels::Context{});
  ASSERT_TRUE(server.ok());
  const absl::Time start = absl::Now();
  auto copied = CopyExperts(
      plan, 2, *cfg, [&](const ExpertKey& k) { return (*server)->Held(k.first, k.second); },
      *staging[0], absl::Milliseconds(300));
  ASSERT_FALSE(copied.ok());
  EXPECT_EQ(copied.status().code(), absl::StatusCode::kDeadlineExceeded) << copied.status();
  EXPECT_THAT(std::string(copied.status().message()),
              ::testing::HasSubstr("copying experts for placement epoch 2"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

// Staging that would exceed the memory limit fails with ResourceExhausted
// and keeps nothing; one that fits is kept until dropped.
TEST(MoeMeshSwitchTest, StagingRespectsTheMemoryLimit) {
  auto [cfg, ckpt] = OpenGolden("qwen3_moe");
  ASSERT_TRUE(cfg.ok() && ckpt.ok());
  auto [before, after] = ContiguousThenStrided(*cfg);
  ASSERT_TRUE(before.ok() && after.ok());
  auto server = ExpertServer::Create(*cfg, *before, 0, MeshRanks{}, nullptr, ckpt->get(), 0,
                                     absl::Seconds(5), kernels::Context{});
  ASSERT_TRUE(server.ok()) << server.status();
  const int64_t serving = (*server)->expert_bytes();
  ASSERT_GT(serving, 0);
  (*server)->set_memory_limit(serving + 1);
  auto refused = (*server)->Stage(*after);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::HasSubstr("staging placement epoch 2 needs"));
  EXPECT_EQ((*server)->staged_epoch(), 0);
  EXPECT_EQ((*server)->expert_bytes(), serving);
  (*server)->set_memory_limit(0);
  auto ok = (*server)->Stage(*after);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*server)->staged_epoch(), 2);
  EXPECT_EQ((*server)->expert_bytes(), serving + ok->fetched_bytes);
  // Staging an epoch that is not newer than the serving one is refused.
  EXPECT_EQ((*server)->Stage(*before).status().code(), absl::StatusCode::kInvalidArgument);
  (*server)->DropStaged(2);
  EXPECT_EQ((*server)->staged_epoch(), 0);
  EXPECT_EQ((*server)->expert_bytes(), serving);
}

// An attention worker and an expert worker that serve different placement
// epochs fail the step on both sides with FailedPrecondition naming the
// epochs (the expert worker computes nothing and answers at once, so the
// attention worker does not wait out its timeout).
TEST(MoeMeshEpochTest, MismatchedEpochsFailCleanly) {
  auto [cfg, ckpt] = OpenGolden("qwen3_moe");
  ASSERT_TRUE(cfg.ok() && ckpt.ok());
  eplb::PlacementOptions po;
  po.num_workers = 1;
  auto placement = InitialPlacementOf(*cfg, po);
  ASSERT_TRUE(placement.ok()) << placement.status();
  eplb::Placement newer = *placement;
  newer.epoch = placement->epoch + 1;

  MeshRanks ranks{{0}, {1}};
  std::vector<std::unique_ptr<transport::Transport>> transports = InprocMesh(2);
  ASSERT_EQ(transports.size(), 2u);
  const absl::Duration timeout = absl::Seconds(60);
  absl::Status served;
  std::thread ew([&] {
    auto server = ExpertServer::Create(*cfg, *placement, 0, ranks, transports[1].get(), ckpt->get(),
                                       0, timeout, kernels::Context{});
    ASSERT_TRUE(server.ok()) << server.status();
    served = (*server)->ServeStep();
  });
  RemoteExpertExecutor exec(*cfg, newer, ranks, transports[0].get(), timeout);
  const absl::Time start = absl::Now();
  const absl::Status ran = exec.RunEmptyStep();
  const absl::Duration took = absl::Now() - start;
  ew.join();
  EXPECT_EQ(served.code(), absl::StatusCode::kFailedPrecondition) << served;
  EXPECT_THAT(
      std::string(served.message()),
      ::testing::HasSubstr("dispatch for placement epoch " + std::to_string(newer.epoch) +
                           ", this worker serves epoch " + std::to_string(placement->epoch)));
  EXPECT_EQ(ran.code(), absl::StatusCode::kFailedPrecondition) << ran;
  EXPECT_THAT(std::string(ran.message()), ::testing::HasSubstr("combine for placement epoch " +
                                                               std::to_string(placement->epoch)));
  EXPECT_LT(took, absl::Seconds(30));  // answered, not timed out
}

// Expert workers read only the experts of their own slots and attention
// workers no expert at all: a copy of the checkpoint holding just the dense
// tensors and worker 0's experts still loads for them, while worker 1, which
// needs an expert that was left out, fails naming the missing tensor.
TEST(ExpertLoadingTest, WorkersReadOnlyTheirOwnWeights) {
  const std::string src = kDir + "qwen3_moe";
  auto cfg = model::LoadModelConfig(src);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto full = model::Checkpoint::Open(src);
  ASSERT_TRUE(full.ok()) << full.status();
  eplb::PlacementOptions po;
  po.num_workers = 2;
  auto placement = InitialPlacementOf(*cfg, po);
  ASSERT_TRUE(placement.ok()) << placement.status();
  std::map<int64_t, std::set<int64_t>> worker0;  // layer -> experts
  for (size_t l = 0; l < placement->layers.size(); ++l) {
    for (int32_t i = placement->SlotBegin(0); i < placement->SlotEnd(0); ++i) {
      worker0[placement->layers[l]].insert(placement->phy2log[l][i]);
    }
  }

  const std::regex expert_name(R"(layers\.(\d+)\.mlp\.experts\.(\d+)\.)");
  std::vector<model::WriterTensor> dense_only, dense_and_worker0;
  int dropped = 0;
  for (const std::string& name : (*full)->TensorNames()) {
    auto shape = (*full)->Shape(name);
    ASSERT_TRUE(shape.ok()) << shape.status();
    model::WriterTensor t{name, model::StDType::kF32, *shape, {}};
    int64_t numel = 1;
    for (int64_t d : *shape) numel *= d;
    t.values.resize(static_cast<size_t>(numel));
    ASSERT_TRUE((*full)->ReadF32(name, *shape, t.values.data()).ok()) << name;
    std::smatch m;
    if (!std::regex_search(name, m, expert_name)) {
      dense_only.push_back(t);
      dense_and_worker0.push_back(std::move(t));
    } else if (worker0[std::stoll(m[1])].count(std::stoll(m[2])) > 0) {
      dense_and_worker0.push_back(std::move(t));
    } else {
      ++dropped;
    }
  }
  ASSERT_GT(dropped, 0) << "worker 0 holds every expert; the test proves nothing";

  const std::string root =
      ::testing::TempDir() + "/sy_expert_loading_" + std::to_string(::getpid());
  const auto write = [&](const std::string& dir, const std::vector<model::WriterTensor>& ts) {
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(src + "/config.json", dir + "/config.json",
                               std::filesystem::copy_options::overwrite_existing);
    ASSERT_TRUE(model::WriteSafetensors(dir + "/model.safetensors", ts).ok()) << dir;
  };
  write(root + "/dense", dense_only);
  write(root + "/worker0", dense_and_worker0);

  // The attention worker's part: the dense weights, from a checkpoint without experts.
  auto dense_ckpt = model::Checkpoint::Open(root + "/dense");
  ASSERT_TRUE(dense_ckpt.ok()) << dense_ckpt.status();
  EXPECT_TRUE(model::LoadDenseWeights(*cfg, **dense_ckpt).ok());

  auto ckpt = model::Checkpoint::Open(root + "/worker0");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const absl::Duration timeout = absl::Seconds(5);
  auto w0 = ExpertServer::Create(*cfg, *placement, 0, MeshRanks{}, nullptr, ckpt->get(), 0, timeout,
                                 kernels::Context{});
  EXPECT_TRUE(w0.ok()) << w0.status();
  auto w1 = ExpertServer::Create(*cfg, *placement, 1, MeshRanks{}, nullptr, ckpt->get(), 0, timeout,
                                 kernels::Context{});
  ASSERT_FALSE(w1.ok());
  EXPECT_EQ(w1.status().code(), absl::StatusCode::kNotFound) << w1.status();
  EXPECT_THAT(std::string(w1.status().message()), ::testing::HasSubstr(".mlp.experts."));
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace sy::moe
