#include "eplb/placement.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sy::eplb {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(PlacementTest, ContiguousWithRedundantSlots) {
  PlacementOptions o;
  o.num_workers = 3;
  o.redundant = 2;  // 16 + 2 = 18 slots, 6 per worker
  auto p = InitialPlacement({0, 1, 2, 3}, 16, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_slots, 18);
  EXPECT_EQ(p->NumSlotsOf(0), 6);
  EXPECT_EQ(p->SlotBegin(2), 12);
  // Experts 0-5 | 6-10 + replica | 11-15 + replica.
  EXPECT_THAT(p->phy2log[0],
              ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 11, 12, 13, 14, 15, 1));
  EXPECT_THAT(p->log2phy[0][0], ElementsAre(0, 11));
  EXPECT_THAT(p->log2phy[0][1], ElementsAre(1, 17));
  EXPECT_THAT(p->log2phy[0][2], ElementsAre(2));
  EXPECT_EQ(p->WorkerOfSlot(11), 1);
  EXPECT_EQ(p->MoeIndex(2), 2);
  EXPECT_TRUE(p->Validate().ok());
}

TEST(PlacementTest, StridedAndChosenReplicas) {
  PlacementOptions o;
  o.num_workers = 2;
  o.redundant = 2;
  o.order = PlacementOrder::kStrided;
  o.replicate = {5};
  auto p = InitialPlacement({1, 3}, 8, o);
  ASSERT_TRUE(p.ok()) << p.status();
  // Worker 0: 0 2 4 6 + 5; worker 1: 1 3 5 7 + 5 (both hold 5 then).
  EXPECT_THAT(p->phy2log[1], ElementsAre(0, 2, 4, 6, 5, 1, 3, 5, 7, 5));
  EXPECT_EQ(p->log2phy[1][5].size(), 3u);
  EXPECT_EQ(p->MoeIndex(3), 1);
  EXPECT_EQ(p->MoeIndex(2), -1);
}

TEST(PlacementTest, SingleWorkerHoldsEverything) {
  PlacementOptions o;
  auto p = InitialPlacement({0}, 4, o);
  ASSERT_TRUE(p.ok());
  EXPECT_THAT(p->phy2log[0], ElementsAre(0, 1, 2, 3));
}

TEST(PlacementTest, Errors) {
  PlacementOptions o;
  o.num_workers = 3;
  EXPECT_THAT(InitialPlacement({0}, 16, o).status().message(), HasSubstr("multiple of the expert"));
  o.num_workers = 0;
  EXPECT_FALSE(InitialPlacement({0}, 16, o).ok());
  o.num_workers = 2;
  o.redundant = 2;
  o.replicate = {99};
  EXPECT_THAT(InitialPlacement({0}, 16, o).status().message(), HasSubstr("replicate"));
}

TEST(PlacementTest, ValidateCatchesBrokenMaps) {
  PlacementOptions o;
  o.num_workers = 2;
  auto p = InitialPlacement({0}, 4, o);
  ASSERT_TRUE(p.ok());
  Placement bad = *p;
  bad.phy2log[0][1] = 0;  // expert 1 lost; log2phy now stale too
  EXPECT_FALSE(bad.Validate().ok());
  RebuildLog2Phy(&bad);
  EXPECT_THAT(bad.Validate().message(), HasSubstr("no replica of expert 1"));
}

TEST(PlacementTest, WorkersMayHoldDifferentSlotCounts) {
  PlacementOptions o;
  o.num_workers = 3;
  o.redundant = 2;
  auto p = InitialPlacement({0}, 16, o);
  ASSERT_TRUE(p.ok()) << p.status();
  // The same 18 slots, split 4 / 6 / 8 (a worker with more memory).
  p->worker_begin = {0, 4, 10, 18};
  ASSERT_TRUE(p->Validate().ok()) << p->Validate();
  EXPECT_EQ(p->NumSlotsOf(0), 4);
  EXPECT_EQ(p->NumSlotsOf(2), 8);
  EXPECT_EQ(p->WorkerOfSlot(3), 0);
  EXPECT_EQ(p->WorkerOfSlot(4), 1);
  EXPECT_EQ(p->WorkerOfSlot(17), 2);
  // A worker may hold none (it died): the others own every slot.
  p->worker_begin = {0, 4, 4, 18};
  EXPECT_TRUE(p->Validate().ok()) << p->Validate();
  EXPECT_EQ(p->FirstEmptyWorker(), 1);
  EXPECT_EQ(p->WorkerOfSlot(4), 2);
  p->worker_begin = {0, 4, 3, 18};
  EXPECT_THAT(p->Validate().message(), HasSubstr("slot range ends before it begins"));
  p->worker_begin = {0, 4, 10, 17};
  EXPECT_THAT(p->Validate().message(), HasSubstr("worker slot ranges must run from 0 to 18"));
}

// Four workers, 8 experts, 8 redundant slots (each expert twice, on two
// different workers): a dead worker's slots go, the survivors keep theirs.
TEST(SurvivorPlacementTest, EveryExpertKeepsAReplica) {
  PlacementOptions o;
  o.num_workers = 4;
  o.redundant = 8;
  auto p = InitialPlacement({1, 3}, 8, o);
  ASSERT_TRUE(p.ok()) << p.status();
  SurvivorStats st;
  auto s = SurvivorPlacement(*p, {true, false, true, true}, 7, &st);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->epoch, 7);
  EXPECT_EQ(s->num_slots, 12);
  EXPECT_EQ(s->NumSlotsOf(1), 0);
  EXPECT_EQ(s->FirstEmptyWorker(), 1);
  EXPECT_EQ(st.dropped_slots, 4);
  EXPECT_EQ(st.reloaded_slots, 0);
  for (size_t l = 0; l < p->layers.size(); ++l) {
    for (int32_t w : {0, 2, 3}) {
      for (int32_t i = 0; i < p->NumSlotsOf(w); ++i) {
        EXPECT_EQ(s->phy2log[l][s->SlotBegin(w) + i], p->phy2log[l][p->SlotBegin(w) + i])
            << "layer " << l << " worker " << w << " slot " << i;
      }
    }
  }
  EXPECT_TRUE(s->Validate().ok());
}

// Without enough replicas, the lost experts take slots of replicated ones;
// with none to spare, a clear refusal naming the expert and the layer.
TEST(SurvivorPlacementTest, LostExpertsTakeReplicatedSlotsOrFail) {
  SurvivorStats st;
  // A hand-made case: survivor holds {0, 0, 1, 1}, the dead worker {2, 3}.
  Placement h;
  h.num_logical = 4;
  h.num_slots = 6;
  h.num_workers = 2;
  h.worker_begin = {0, 4, 6};
  h.layers = {0};
  h.phy2log = {{0, 0, 1, 1, 2, 3}};
  RebuildLog2Phy(&h);
  ASSERT_TRUE(h.Validate().ok());
  auto r = SurvivorPlacement(h, {true, false}, 3, &st);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(st.reloaded_slots, 2);
  EXPECT_EQ(r->num_slots, 4);
  EXPECT_EQ(r->phy2log[0], (std::vector<int32_t>{0, 3, 1, 2}));
  // Survivor {0, 1}, dead {2, 3}: nothing to give up.
  h.phy2log = {{0, 1, 2, 3, 0, 1}};
  h.worker_begin = {0, 2, 6};
  RebuildLog2Phy(&h);
  auto f = SurvivorPlacement(h, {true, false}, 3);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(f.status().message(), HasSubstr("expert 2 of layer 0"));
  EXPECT_EQ(SurvivorPlacement(h, {false, false}, 3).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(SurvivorPlacement(h, {true}, 3).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sy::eplb
