// The coordinator's EPLB parts without processes: the load window (only
// chunks every worker reported, trimming, epochs), re-placement transitions
// in the core (begin, stage, commit, switch, abort), and the rebalancer
// driving them against simulated workers (planning, skips, rounds under a
// staging bound, aborts).
#include <atomic>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/coordinator/coordinator_core.h"
#include "services/coordinator/load_window.h"
#include "services/coordinator/rebalancer.h"

namespace sy::coordinator {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// 2 MoE layers, 4 experts, 2 expert workers with 2 slots each: worker 0
// holds experts 0 and 1, worker 1 experts 2 and 3 (contiguous).
eplb::Placement TwoByTwo() {
  eplb::PlacementOptions po;
  po.num_workers = 2;
  auto p = eplb::InitialPlacement({0, 1}, 4, po);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

LoadSample Sample(int64_t epoch, int64_t first_step, int64_t steps,
                  std::vector<std::vector<int64_t>> tokens) {
  LoadSample s;
  s.epoch = epoch;
  s.first_step = first_step;
  s.steps = steps;
  s.slot_tokens = std::move(tokens);
  return s;
}

TEST(LoadWindowTest, CountsOnlyChunksEveryWorkerReported) {
  const eplb::Placement p = TwoByTwo();
  LoadWindow w(2, 4, 2, LoadWindowOptions{1000, std::chrono::seconds(60)});
  const auto now = Clock::now();
  EXPECT_EQ(w.Get(1, now).steps, 0);
  EXPECT_FALSE(w.Get(1, now).layer_balancedness.has_value());
  // Chunk 0 from both workers; chunk 16 only from worker 0 (its heartbeat
  // came first): it must not count yet.
  w.Add(p, 0, Sample(1, 0, 16, {{32, 16}, {16, 16}}), now);
  w.Add(p, 1, Sample(1, 0, 16, {{0, 16}, {16, 16}}), now);
  w.Add(p, 0, Sample(1, 16, 16, {{1600, 0}, {0, 0}}), now);
  LoadSnapshot s = w.Get(1, now);
  EXPECT_EQ(s.steps, 16);
  EXPECT_EQ(s.serving_steps, 16);
  EXPECT_THAT(s.logical[0], ::testing::ElementsAre(2.0, 1.0, 0.0, 1.0));
  EXPECT_THAT(s.logical[1], ::testing::ElementsAre(1.0, 1.0, 1.0, 1.0));
  ASSERT_TRUE(s.layer_balancedness.has_value());
  // Layer 0: workers carry 48 and 16 tokens: mean 32 / max 48; layer 1 even.
  EXPECT_NEAR((*s.layer_balancedness)[0], 32.0 / 48.0, 1e-12);
  EXPECT_NEAR((*s.layer_balancedness)[1], 1.0, 1e-12);
  EXPECT_NEAR(s.balancedness, (32.0 / 48.0 + 1.0) / 2, 1e-12);
  // Worker 1's chunk 16 completes it.
  w.Add(p, 1, Sample(1, 16, 16, {{0, 0}, {0, 0}}), now);
  EXPECT_EQ(w.Get(1, now).steps, 32);
  // A report that disagrees with the chunk's shape, or repeats, is ignored.
  w.Add(p, 1, Sample(1, 16, 8, {{5, 5}, {5, 5}}), now);
  w.Add(p, 1, Sample(1, 16, 16, {{5, 5}, {5, 5}}), now);
  EXPECT_EQ(w.Get(1, now).steps, 32);
  EXPECT_DOUBLE_EQ(w.Get(1, now).logical[0][0], (32.0 + 1600.0) / 32);
}

TEST(LoadWindowTest, TrimsByStepsAndAgeAndMeasuresTheServingEpochOnly) {
  eplb::Placement p1 = TwoByTwo();
  LoadWindow w(2, 4, 2, LoadWindowOptions{32, std::chrono::seconds(10)});
  const auto t0 = Clock::now();
  for (int64_t c = 0; c < 3; ++c) {
    for (int32_t worker = 0; worker < 2; ++worker) {
      w.Add(p1, worker, Sample(1, 16 * c, 16, {{c, c}, {c, c}}), t0);
    }
  }
  EXPECT_EQ(w.Get(1, t0).steps, 32);  // chunks 16 and 32 of 0, 16, 32
  // Epoch 2 swaps experts 1 and 2 between the workers.
  eplb::Placement p2 = p1;
  p2.epoch = 2;
  for (auto& row : p2.phy2log) std::swap(row[1], row[2]);
  eplb::RebuildLog2Phy(&p2);
  const auto t1 = t0 + std::chrono::seconds(1);
  w.Add(p2, 0, Sample(2, 48, 16, {{16, 16}, {0, 0}}), t1);  // experts 0, 2
  w.Add(p2, 1, Sample(2, 48, 16, {{16, 16}, {0, 0}}), t1);  // experts 1, 3
  LoadSnapshot s = w.Get(2, t1);
  EXPECT_EQ(s.steps, 32);  // chunks 32 (epoch 1) and 48 (epoch 2)
  EXPECT_EQ(s.serving_steps, 16);
  // Logical load spans both epochs, each chunk mapped with its placement.
  EXPECT_THAT(s.logical[0], ::testing::ElementsAre((2 + 16) / 32.0, (2 + 16) / 32.0,
                                                   (2 + 16) / 32.0, (2 + 16) / 32.0));
  ASSERT_TRUE(s.layer_balancedness.has_value());
  EXPECT_NEAR((*s.layer_balancedness)[0], 1.0, 1e-12);
  // Past the age limit everything goes.
  EXPECT_EQ(w.Get(2, t1 + std::chrono::seconds(11)).steps, 0);
}

// A core with one attention and two expert workers, all ready and serving
// epoch 1.
class TransitionTest : public ::testing::Test {
 protected:
  TransitionTest() : core_(Options(), TwoByTwo()) {
    EXPECT_TRUE(core_.Register(Role::kAttention, 0, "a0:1", "t", "a0").ok());
    EXPECT_TRUE(core_.Register(Role::kExpert, 0, "e0:1", "t", "e0").ok());
    EXPECT_TRUE(core_.Register(Role::kExpert, 1, "e1:1", "t", "e1").ok());
    for (int32_t r = 0; r < 3; ++r) Beat(r, 1, 0);
  }
  static CoordinatorOptions Options() {
    CoordinatorOptions o;
    o.attention_workers = 1;
    o.expert_workers = 2;
    return o;
  }
  void Beat(int32_t rank, int64_t serving, int64_t staged, int64_t failed = 0,
            const std::string& why = "") {
    HeartbeatInfo h;
    h.ready = true;
    h.serving_epoch = serving;
    h.staged_epoch = staged;
    h.failed_epoch = failed;
    h.failure = why;
    ASSERT_TRUE(core_.Heartbeat(rank, h).ok());
  }
  eplb::Placement Swapped() {
    eplb::Placement p = TwoByTwo();
    for (auto& row : p.phy2log) std::swap(row[1], row[2]);
    return p;
  }
  CoordinatorCore core_;
};

TEST_F(TransitionTest, StageCommitSwitch) {
  const int64_t v0 = core_.version();
  auto e = core_.BeginTransition(Swapped());
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(*e, 2);
  EXPECT_GT(core_.version(), v0);
  MeshView m = core_.GetMesh();
  ASSERT_TRUE(m.next.has_value());
  EXPECT_EQ(m.next->state, TransitionState::kStaging);
  EXPECT_EQ(m.epoch, 1);
  EXPECT_EQ(core_.BeginTransition(Swapped()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Not staged everywhere yet.
  Beat(1, 1, 2);
  EXPECT_EQ(core_.Progress(2)->staged, 1);
  const absl::Status early = core_.CommitTransition(2);
  EXPECT_EQ(early.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(early.message(), HasSubstr("staged on 1 of 2 expert workers"));
  Beat(2, 1, 2);
  ASSERT_TRUE(core_.CommitTransition(2).ok());
  EXPECT_EQ(core_.GetMesh().next->state, TransitionState::kCommitted);
  EXPECT_EQ(core_.AbortTransition(2, "late").code(), absl::StatusCode::kFailedPrecondition);
  // Workers report the switch; the last one completes it.
  Beat(0, 2, 0);
  Beat(1, 2, 0);
  EXPECT_FALSE(core_.Progress(2)->done);
  EXPECT_EQ(core_.epoch(), 1);
  Beat(2, 2, 0);
  ASSERT_TRUE(core_.Progress(2).has_value());
  EXPECT_TRUE(core_.Progress(2)->done);
  m = core_.GetMesh();
  EXPECT_EQ(m.epoch, 2);
  EXPECT_EQ(m.placement.epoch, 2);
  EXPECT_EQ(m.placement.phy2log, Swapped().phy2log);
  EXPECT_FALSE(m.next.has_value());
}

TEST_F(TransitionTest, StagingFailureIsReportedAndAbortKeepsTheEpoch) {
  ASSERT_TRUE(core_.BeginTransition(Swapped()).ok());
  Beat(2, 1, 0, 2, "RESOURCE_EXHAUSTED: no room");
  const auto p = core_.Progress(2);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->failure, "expert worker 1: RESOURCE_EXHAUSTED: no room");
  EXPECT_EQ(core_.CommitTransition(2).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(core_.AbortTransition(2, p->failure).ok());
  EXPECT_FALSE(core_.GetMesh().next.has_value());
  EXPECT_FALSE(core_.Progress(2).has_value());
  EXPECT_EQ(core_.epoch(), 1);
  // The next re-placement gets epoch 2 again: nothing ever served it.
  EXPECT_EQ(*core_.BeginTransition(Swapped()), 2);
}

TEST_F(TransitionTest, PlacementsThatDoNotFitTheMeshAreRefused) {
  eplb::PlacementOptions po;
  po.num_workers = 4;
  auto four = eplb::InitialPlacement({0, 1}, 4, po);
  ASSERT_TRUE(four.ok());
  const absl::Status st = core_.BeginTransition(*four).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("4 expert workers; the mesh has 2"));
  eplb::Placement broken = TwoByTwo();
  broken.phy2log[0][0] = 1;  // expert 0 has no slot left
  EXPECT_EQ(core_.BeginTransition(broken).status().code(), absl::StatusCode::kInvalidArgument);
}

// Simulated workers: they stage whatever the mesh asks (or fail), and switch
// once committed, reporting both in heartbeats.
class FakeWorkers {
 public:
  // `switch_on_commit` false: workers stage but never switch to a
  // committed epoch (as when one dies mid-switch).
  FakeWorkers(CoordinatorCore* core, int32_t fail_expert_worker = -1, bool switch_on_commit = true)
      : core_(core), fail_(fail_expert_worker), switch_(switch_on_commit) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~FakeWorkers() {
    stop_.store(true);
    thread_.join();
  }

 private:
  void Loop() {
    while (!stop_.load()) {
      const MeshView m = core_->GetMesh();
      for (const MemberInfo& mem : m.members) {
        HeartbeatInfo h;
        h.ready = true;
        h.serving_epoch = m.epoch;
        if (m.next.has_value()) {
          const int64_t e = m.next->placement.epoch;
          const bool expert = mem.role == Role::kExpert;
          if (m.next->state == TransitionState::kStaging && expert) {
            if (mem.rank - 1 == fail_) {
              h.failed_epoch = e;
              h.failure = "RESOURCE_EXHAUSTED: forced";
            } else {
              h.staged_epoch = e;
            }
          } else if (m.next->state == TransitionState::kCommitted) {
            if (switch_) {
              h.serving_epoch = e;
            } else if (expert) {
              h.staged_epoch = e;
            }
          }
        }
        (void)core_->Heartbeat(mem.rank, h);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  CoordinatorCore* core_;
  const int32_t fail_;
  const bool switch_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class RebalancerTest : public TransitionTest {
 protected:
  // Experts 0 and 1 (both on worker 0) carry all the load in both layers.
  void SkewedLoad(LoadWindow* w) {
    const eplb::Placement p = TwoByTwo();
    w->Add(p, 0, Sample(1, 0, 16, {{160, 160}, {160, 160}}), Clock::now());
    w->Add(p, 1, Sample(1, 0, 16, {{0, 0}, {0, 0}}), Clock::now());
  }
  cluster::EplbOptions Eplb() {
    cluster::EplbOptions o;
    o.stage_timeout_ms = 5000;
    return o;
  }
  LoadWindow window_{2, 4, 2, LoadWindowOptions{1000, std::chrono::seconds(60)}};
};

TEST_F(RebalancerTest, OperatorRebalanceCommitsABetterPlacement) {
  FakeWorkers workers(&core_);
  Rebalancer r(&core_, &window_, Eplb(), 100);
  // No load yet: skipped.
  auto none = r.RunOnce("operator", "");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->outcome, "skipped");
  EXPECT_THAT(none->reason, HasSubstr("no load"));
  SkewedLoad(&window_);
  auto rec = r.RunOnce("operator", "");
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->outcome, "committed") << rec->reason;
  EXPECT_EQ(rec->epoch_before, 1);
  EXPECT_EQ(rec->epoch_after, 2);
  EXPECT_NEAR(rec->balancedness_before, 0.5, 1e-9);
  EXPECT_NEAR(rec->balancedness_after, 1.0, 1e-9);
  EXPECT_EQ(rec->moved_experts, 4);  // one expert each way, per layer
  EXPECT_EQ(rec->moved_bytes, 400);
  EXPECT_EQ(rec->rounds, 1);
  EXPECT_EQ(core_.epoch(), 2);
  // Already balanced for this load: nothing to move.
  auto again = r.RunOnce("operator", "");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->outcome, "skipped");
  EXPECT_THAT(again->reason, HasSubstr("the plan is the serving placement"));
  // Forcing does not move what the plan leaves in place.
  auto forced = r.RunOnce("operator", "", /*force=*/true);
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ(forced->outcome, "skipped");
  EXPECT_EQ(r.History().size(), 4u);
  EXPECT_EQ(r.RunOnce("operator", "local").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RebalancerTest, AutomaticTriggersSkipSmallGains) {
  FakeWorkers workers(&core_);
  cluster::EplbOptions o = Eplb();
  o.min_gain = 0.6;  // more than the 0.5 this plan gains
  Rebalancer r(&core_, &window_, o, 100);
  SkewedLoad(&window_);
  auto rec = r.RunOnce("threshold", "");
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->outcome, "skipped");
  EXPECT_THAT(rec->reason, HasSubstr("below eplb.min_gain"));
  EXPECT_EQ(core_.epoch(), 1);
}

TEST_F(RebalancerTest, StagingBoundSplitsLayersIntoRounds) {
  FakeWorkers workers(&core_);
  cluster::EplbOptions o = Eplb();
  o.max_staging_bytes = 100;  // one expert copy per worker at a time: one layer per round
  Rebalancer r(&core_, &window_, o, 100);
  SkewedLoad(&window_);
  auto rec = r.RunOnce("operator", "");
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->outcome, "committed") << rec->reason;
  EXPECT_EQ(rec->rounds, 2);
  EXPECT_EQ(core_.epoch(), 3);
}

TEST_F(RebalancerTest, StagingBoundBelowOneLayerAborts) {
  FakeWorkers workers(&core_);
  cluster::EplbOptions o = Eplb();
  o.max_staging_bytes = 99;
  Rebalancer r(&core_, &window_, o, 100);
  SkewedLoad(&window_);
  auto rec = r.RunOnce("operator", "");
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->outcome, "aborted");
  EXPECT_THAT(rec->reason, HasSubstr("more than eplb.max_staging_bytes (99)"));
  EXPECT_EQ(core_.epoch(), 1);
}

TEST_F(RebalancerTest, AStagingFailureAbortsAndTheEpochStays) {
  FakeWorkers workers(&core_, /*fail_expert_worker=*/1);
  Rebalancer r(&core_, &window_, Eplb(), 100);
  SkewedLoad(&window_);
  auto rec = r.RunOnce("operator", "");
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->outcome, "aborted");
  EXPECT_THAT(rec->reason, HasSubstr("staging epoch 2 failed on expert worker 1: "
                                     "RESOURCE_EXHAUSTED: forced"));
  EXPECT_EQ(core_.epoch(), 1);
  EXPECT_FALSE(core_.GetMesh().next.has_value());
}

// Stop (the coordinator shutting down) ends a rebalance waiting for workers
// that never stage: aborted at once, the transition dropped; later runs are
// refused.
TEST_F(RebalancerTest, StopEndsARebalanceWaitingForStaging) {
  cluster::EplbOptions o = Eplb();
  o.stage_timeout_ms = 600000;
  Rebalancer r(&core_, &window_, o, 100);
  SkewedLoad(&window_);
  absl::StatusOr<RebalanceRecord> rec = absl::UnknownError("not run");
  std::thread run([&] { rec = r.RunOnce("operator", ""); });
  while (!core_.GetMesh().next.has_value())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto t0 = Clock::now();
  r.Stop();
  run.join();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->outcome, "aborted");
  EXPECT_THAT(rec->reason, HasSubstr("shutting down"));
  EXPECT_FALSE(core_.GetMesh().next.has_value());
  EXPECT_EQ(r.RunOnce("operator", "").status().code(), absl::StatusCode::kUnavailable);
}

// A re-formation (a worker died before every worker switched) drops a
// committed re-placement: the rebalance ends aborted at once, not after
// waiting stage_timeout_ms for a switch that cannot come, and the
// re-formed epoch serves.
TEST_F(RebalancerTest, ACommittedPlacementDroppedByAReformationAbortsAtOnce) {
  FakeWorkers workers(&core_, /*fail_expert_worker=*/-1, /*switch_on_commit=*/false);
  cluster::EplbOptions o = Eplb();
  o.stage_timeout_ms = 600000;
  Rebalancer r(&core_, &window_, o, 100);
  SkewedLoad(&window_);
  absl::StatusOr<RebalanceRecord> rec = absl::UnknownError("not run");
  std::thread run([&] { rec = r.RunOnce("operator", ""); });
  auto committed = [&] {
    const MeshView m = core_.GetMesh();
    return m.next.has_value() && m.next->state == TransitionState::kCommitted;
  };
  const auto wait_until = Clock::now() + std::chrono::seconds(10);
  while (!committed() && Clock::now() < wait_until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(committed());
  auto reformed = core_.Reform({}, 0, "a failed step");
  ASSERT_TRUE(reformed.ok()) << reformed.status();
  const auto t0 = Clock::now();
  run.join();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->outcome, "aborted");
  EXPECT_THAT(rec->reason, HasSubstr("dropped by a mesh re-formation"));
  EXPECT_FALSE(core_.GetMesh().next.has_value());
  EXPECT_EQ(core_.epoch(), *reformed);
}

}  // namespace
}  // namespace sy::coordinator
