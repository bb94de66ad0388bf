#include "eplb/planner.h"

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sy::eplb {
namespace {

using ::testing::HasSubstr;

// A case from scripts/make_eplb_cases.py: a load and the placements that the
// reference port of DeepSeek's EPLB made for it.
struct RefCase {
  PlanShape shape;
  LoadMatrix load;
  Phy2Log global, hierarchical;
  double global_balancedness = 0, hierarchical_balancedness = 0;
};

RefCase LoadCase(const std::string& name) {
  const std::string path = std::string(SY_SOURCE_DIR) + "/eplb/testdata/" + name + ".json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  const auto j = nlohmann::json::parse(ss.str());
  RefCase c;
  c.shape.num_logical = j.at("experts").get<int32_t>();
  c.shape.num_physical = j.at("physical").get<int32_t>();
  c.shape.num_groups = j.at("groups").get<int32_t>();
  c.shape.num_nodes = j.at("nodes").get<int32_t>();
  c.shape.num_workers = j.at("gpus").get<int32_t>();
  c.load = j.at("load").get<LoadMatrix>();
  c.global = j.at("global").get<Phy2Log>();
  c.hierarchical = j.at("hierarchical").get<Phy2Log>();
  c.global_balancedness = j.at("global_balancedness").get<double>();
  c.hierarchical_balancedness = j.at("hierarchical_balancedness").get<double>();
  return c;
}

class DeepSeekReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DeepSeekReferenceTest, SamePhy2LogAndScoreAsTheReference) {
  const RefCase c = LoadCase(GetParam());
  for (const Policy policy : {Policy::kGlobal, Policy::kHierarchical}) {
    SCOPED_TRACE(PolicyName(policy));
    const auto plan = DeepSeekPlan(c.load, c.shape, policy);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const Phy2Log& want = policy == Policy::kGlobal ? c.global : c.hierarchical;
    ASSERT_EQ(plan->size(), want.size());
    for (size_t l = 0; l < want.size(); ++l) EXPECT_EQ((*plan)[l], want[l]) << "layer " << l;
    ASSERT_TRUE(ValidatePhy2Log(*plan, static_cast<int32_t>(c.load.size()), c.shape).ok());
    const Score s = ScorePlacement(c.load, *plan, c.shape.num_workers);
    EXPECT_NEAR(s.balancedness,
                policy == Policy::kGlobal ? c.global_balancedness : c.hierarchical_balancedness,
                1e-12);
    EXPECT_LE(s.worst_layer, s.balancedness);
    EXPECT_GT(s.worst_layer, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, DeepSeekReferenceTest,
                         ::testing::Values("small", "ties", "dsv3_288_zipf11", "dsv3_320_zipf15",
                                           "dsv3_288_zipf08"));

TEST(DeepSeekPlanTest, HierarchicalKeepsEveryGroupOnOneNode) {
  const RefCase c = LoadCase("dsv3_288_zipf11");
  const auto plan = DeepSeekPlan(c.load, c.shape, Policy::kHierarchical);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const int32_t group_size = c.shape.num_logical / c.shape.num_groups;
  const int32_t slots_per_node = c.shape.num_physical / c.shape.num_nodes;
  for (const auto& layer : *plan) {
    std::vector<std::set<int32_t>> nodes_of_group(static_cast<size_t>(c.shape.num_groups));
    for (size_t s = 0; s < layer.size(); ++s) {
      nodes_of_group[static_cast<size_t>(layer[s] / group_size)].insert(static_cast<int32_t>(s) /
                                                                        slots_per_node);
    }
    std::vector<int32_t> groups_on_node(static_cast<size_t>(c.shape.num_nodes), 0);
    for (const auto& nodes : nodes_of_group) {
      ASSERT_EQ(nodes.size(), 1u);
      ++groups_on_node[static_cast<size_t>(*nodes.begin())];
    }
    for (const int32_t n : groups_on_node) EXPECT_EQ(n, c.shape.num_groups / c.shape.num_nodes);
  }
}

TEST(DeepSeekPlanTest, ReplicasGoToTheHeaviestExperts) {
  // One layer, 4 experts on 2 workers with 2 spare slots: expert 0 carries
  // most of the load and takes both spare slots.
  const PlanShape shape{4, 6, 1, 1, 2};
  const auto plan = DeepSeekPlan({{900, 30, 20, 10}}, shape, Policy::kGlobal);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(std::count((*plan)[0].begin(), (*plan)[0].end(), 0), 3);
  const Score s = ScorePlacement({{900, 30, 20, 10}}, *plan, 2);
  // Worker loads: 300 + 300 + 10 | 300 + 30 + 20 (or the mirror) -> 480 / 610.
  EXPECT_NEAR(s.balancedness, 480.0 / 610.0, 1e-12);
}

TEST(DeepSeekPlanTest, NoLoadIsBalanced) {
  const PlanShape shape{8, 8, 2, 2, 4};
  const LoadMatrix zero(2, std::vector<double>(8, 0.0));
  for (const Policy p : {Policy::kGlobal, Policy::kHierarchical}) {
    const auto plan = DeepSeekPlan(zero, shape, p);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_TRUE(ValidatePhy2Log(*plan, 2, shape).ok());
    EXPECT_EQ(ScorePlacement(zero, *plan, 4).balancedness, 1.0);
  }
}

TEST(DeepSeekPlanTest, BadShapesNameTheProblem) {
  const LoadMatrix load(1, std::vector<double>(16, 1.0));
  auto err = [&](PlanShape s, Policy p) { return DeepSeekPlan(load, s, p).status(); };
  EXPECT_THAT(err({16, 24, 5, 1, 4}, Policy::kHierarchical).message(),
              HasSubstr("experts (16) not divisible by groups (5)"));
  EXPECT_THAT(err({16, 24, 4, 3, 6}, Policy::kHierarchical).message(),
              HasSubstr("groups (4) not divisible by nodes (3)"));
  EXPECT_THAT(err({16, 26, 4, 2, 4}, Policy::kGlobal).message(),
              HasSubstr("physical slots (26) not divisible by gpus (4)"));
  EXPECT_THAT(err({16, 12, 4, 2, 4}, Policy::kGlobal).message(),
              HasSubstr("physical slots (12) fewer than experts (16)"));
  EXPECT_THAT(err({16, 24, 4, 3, 4}, Policy::kGlobal).message(),
              HasSubstr("gpus (4) not divisible by nodes (3)"));
  // Groups that do not divide only matter to the hierarchical policy.
  EXPECT_TRUE(DeepSeekPlan(load, {16, 24, 5, 1, 4}, Policy::kGlobal).ok());
}

TEST(DeepSeekPlanTest, BadLoadsNameLayerAndExpert) {
  const PlanShape shape{4, 4, 1, 1, 2};
  EXPECT_THAT(DeepSeekPlan({{1, 2, 3}}, shape, Policy::kGlobal).status().message(),
              HasSubstr("load layer 0 has 3 experts, expected 4"));
  EXPECT_THAT(
      DeepSeekPlan({{1, 2, 3, 4}, {1, -2, 3, 4}}, shape, Policy::kGlobal).status().message(),
      HasSubstr("load layer 1 expert 1 is -2"));
  EXPECT_THAT(DeepSeekPlan({}, shape, Policy::kGlobal).status().message(), HasSubstr("no layers"));
  EXPECT_THAT(ParsePolicy("greedy").status().message(), HasSubstr("unknown policy \"greedy\""));
}

TEST(ValidatePhy2LogTest, NamesTheFirstProblem) {
  const PlanShape shape{4, 6, 1, 1, 2};
  EXPECT_TRUE(ValidatePhy2Log({{0, 1, 2, 3, 0, 1}}, 1, shape).ok());
  EXPECT_THAT(ValidatePhy2Log({{0, 1, 2, 3, 0, 1}}, 2, shape).message(),
              HasSubstr("placement has 1 layers, expected 2"));
  EXPECT_THAT(ValidatePhy2Log({{0, 1, 2, 3, 0}}, 1, shape).message(),
              HasSubstr("layer 0 has 5 slots, expected 6"));
  EXPECT_THAT(ValidatePhy2Log({{0, 1, 2, 7, 0, 1}}, 1, shape).message(),
              HasSubstr("slot 3 holds expert 7"));
  EXPECT_THAT(ValidatePhy2Log({{0, 1, 2, 0, 0, 1}}, 1, shape).message(),
              HasSubstr("no slot for expert 3"));
}

TEST(CountMovementTest, CountsExpertCopiesOntoWorkers) {
  // 2 workers x 3 slots.
  const Phy2Log current = {{0, 1, 2, 3, 0, 1}};
  EXPECT_EQ(CountMovement(current, current, 2).expert_loads, 0);
  // Same experts per worker, other slots: nothing to copy.
  EXPECT_EQ(CountMovement(current, {{2, 0, 1, 1, 3, 0}}, 2).expert_loads, 0);
  // Worker 0 gains expert 3, worker 1 gains 2 (twice on it: one copy).
  const Movement m = CountMovement(current, {{0, 1, 3, 2, 2, 0}}, 2);
  EXPECT_EQ(m.expert_loads, 2);
  EXPECT_EQ(m.total_slots, 6);
}

}  // namespace
}  // namespace sy::eplb
