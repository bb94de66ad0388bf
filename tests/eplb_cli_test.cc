// switchyard-eplb as a user runs it: the JSON summary on stdout, the
// placement file, exit codes and the errors on stderr.
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using ::testing::HasSubstr;

using Result = ::sy::testing::CliResult;

Result RunEplb(const std::string& args) { return ::sy::testing::RunTool("switchyard-eplb", args); }

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

const std::string kCase = std::string(SY_SOURCE_DIR) + "/eplb/testdata/dsv3_288_zipf11.json";
const std::string kShape = "--experts 256 --gpus 32 --nodes 4 --groups 8 --physical 288";

TEST(EplbCliTest, PlansLikeDeepSeekAndCountsMovement) {
  const nlohmann::json ref = ReadJson(kCase);
  const std::string out = ::testing::TempDir() + "/eplb_out.json";
  for (const std::string policy : {"global", "hierarchical"}) {
    SCOPED_TRACE(policy);
    Result r = RunEplb(kShape + " --planner deepseek --policy " + policy + " --load " + kCase +
                       " --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j.at("policy"), policy);
    EXPECT_EQ(j.at("layers"), 58);
    EXPECT_NEAR(j.at("balancedness").get<double>(), ref.at(policy + "_balancedness").get<double>(),
                1e-12);
    EXPECT_LE(j.at("worst_layer_balancedness").get<double>(), j.at("balancedness").get<double>());
    EXPECT_GE(j.at("planning_ms").get<double>(), 0.0);
    EXPECT_EQ(ReadJson(out).at("phy2log"), ref.at(policy));
  }
  // Against itself as the current placement nothing moves; against the
  // other policy's placement something does.
  WriteFile(::testing::TempDir() + "/eplb_cur.json",
            nlohmann::json{{"phy2log", ref.at("global")}}.dump());
  Result same = RunEplb(kShape + " --planner deepseek --policy global --load " + kCase +
                        " --current " + ::testing::TempDir() + "/eplb_cur.json");
  ASSERT_EQ(same.exit_code, 0) << same.err;
  EXPECT_EQ(nlohmann::json::parse(same.out).at("moved_expert_loads"), 0);
  Result other = RunEplb(kShape + " --planner deepseek --policy hierarchical --load " + kCase +
                         " --current " + ::testing::TempDir() + "/eplb_cur.json");
  ASSERT_EQ(other.exit_code, 0) << other.err;
  const nlohmann::json o = nlohmann::json::parse(other.out);
  EXPECT_GT(o.at("moved_expert_loads").get<int64_t>(), 0);
  EXPECT_NEAR(o.at("current_balancedness").get<double>(),
              ref.at("global_balancedness").get<double>(), 1e-12);
}

TEST(EplbCliTest, DefaultPlannerBeatsDeepSeekAndMovesLess) {
  const nlohmann::json ref = ReadJson(kCase);
  Result r = RunEplb(kShape + " --policy global --load " + kCase);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("planner"), "switchyard");
  EXPECT_GT(j.at("balancedness").get<double>(),
            ref.at("global_balancedness").get<double>() + 0.005);
  // From DeepSeek's hierarchical placement: the global plan keeps what it
  // can instead of re-dealing every slot.
  WriteFile(::testing::TempDir() + "/eplb_cur_h.json",
            nlohmann::json{{"phy2log", ref.at("hierarchical")}}.dump());
  Result ours = RunEplb(kShape + " --policy global --load " + kCase + " --current " +
                        ::testing::TempDir() + "/eplb_cur_h.json");
  Result ds = RunEplb(kShape + " --planner deepseek --policy global --load " + kCase +
                      " --current " + ::testing::TempDir() + "/eplb_cur_h.json");
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  ASSERT_EQ(ds.exit_code, 0) << ds.err;
  const nlohmann::json o = nlohmann::json::parse(ours.out), d = nlohmann::json::parse(ds.out);
  EXPECT_LT(o.at("moved_expert_loads").get<int64_t>(), d.at("moved_expert_loads").get<int64_t>());
  EXPECT_GE(o.at("balancedness").get<double>(), d.at("balancedness").get<double>() - 0.005);
}

TEST(EplbCliTest, BadInputIsExit2NamingTheProblem) {
  const std::string dir = ::testing::TempDir();
  WriteFile(dir + "/eplb_bad.json", "{\"load\": [[1, 2], [3]]");
  WriteFile(dir + "/eplb_short.json", "{\"load\": [[1, 2, 3]]}");
  WriteFile(dir + "/eplb_neg.json", "{\"load\": [[1, 2, -3, 4]]}");
  WriteFile(dir + "/eplb_str.json", "{\"load\": [[1, 2, \"x\", 4]]}");
  WriteFile(dir + "/eplb_ok.json", "{\"load\": [[1, 2, 3, 4]]}");
  WriteFile(dir + "/eplb_cur_bad.json", "{\"phy2log\": [[0, 1, 2, 2]]}");
  const std::string small = "--experts 4 --gpus 2 ";
  const struct {
    std::string args, message;
  } cases[] = {
      {small, "--load is required"},
      {small + "--load " + dir + "/missing.json", "cannot open"},
      {small + "--load " + dir + "/eplb_bad.json", "not valid JSON"},
      {small + "--load " + dir + "/eplb_short.json", "load layer 0 has 3 experts, expected 4"},
      {small + "--load " + dir + "/eplb_neg.json", "load layer 0 expert 2 is -3"},
      {small + "--load " + dir + "/eplb_str.json", "\"load\"[0][2] is not a number"},
      {small + "--physical 5 --load " + dir + "/eplb_ok.json",
       "physical slots (5) not divisible by gpus (2)"},
      {small + "--policy hierarchical --groups 3 --load " + dir + "/eplb_ok.json",
       "experts (4) not divisible by groups (3)"},
      {small + "--policy best --load " + dir + "/eplb_ok.json", "unknown policy \"best\""},
      {small + "--planner magic --load " + dir + "/eplb_ok.json",
       "--planner must be switchyard or deepseek"},
      {small + "--load " + dir + "/eplb_ok.json --current " + dir + "/eplb_cur_bad.json",
       "not a valid placement: placement layer 0 has no slot for expert 3"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    Result r = RunEplb(c.args);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_THAT(r.err, HasSubstr(c.message));
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

}  // namespace
