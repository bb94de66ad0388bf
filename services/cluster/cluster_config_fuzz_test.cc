// Randomized robustness test for the cluster YAML: mutations of valid
// configurations (configs/local.yaml and one with every key) fed to
// ParseClusterConfig must parse or fail with InvalidArgument naming the
// source; never crash, hang or trip a sanitizer. A parse that succeeds must
// satisfy the invariants the processes rely on. Budget: common/fuzz.h.
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/fuzz.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/cluster/cluster_config.h"

namespace sy::cluster {
namespace {

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds = {ReadText(std::string(SY_SOURCE_DIR) + "/configs/local.yaml")};
  seeds.push_back(R"(model: {path: /m, load_format: dummy, dummy_seed: 3}
topology: {attention_workers: 2, expert_workers: 4}
transport: {backend: inproc, timeout_ms: 5000}
placement: {redundant_experts: 4, replicate: [1, 2, 3], order: strided}
coordinator: {listen: '[::1]:7000', heartbeat_ms: 100, worker_timeout_ms: 900}
router: {listen: 0.0.0.0:7001}
attention_worker: {base_port: 7100, max_num_seqs: 3, max_batched_tokens: 64, kv_block_size: 8,
                   kv_blocks: 100, idle_sleep_us: 5, max_idle_sleep_us: 900}
expert_worker: {base_port: 7200, memory_limit_bytes: 123456}
eplb: {enabled: true, window_steps: 50, window_seconds: 2.5, min_window_steps: 2,
       interval_seconds: 1, threshold: 0.5, min_gain: 0, check_ms: 10, policy: hierarchical,
       planner: deepseek, nodes: 2, groups: 2, stage_timeout_ms: 100, max_staging_bytes: 1}
limits: {max_queue: 1, max_new_tokens: 1, max_logprobs: 0, max_model_len: 16}
)");
  return seeds;
}

const fuzz::Dictionary& Dict() {
  static const fuzz::Dictionary* d = new fuzz::Dictionary{
      ":-[]{},#'\"&*!|>%@` \n\t0123456789.",
      {"\n  ",       ": ",      "- ",          "[",         "]",        "{",        "}",
       "&a ",        "*a",      "!!str ",      "!!int ",    "!!map ",   "? ",       "|\n",
       ">\n",        "'",       "\"",          "\\u0000",   "\xff",     "\xc3\xa9", "~",
       "null",       "true",    "yes",         "0x10",      ".inf",     "-.inf",    ".nan",
       "1e999",      "<<: *a",  "model:",      "security:", "api_tls:", "eplb:",    "topology:",
       "{path: /m}", "\n---\n", "%YAML 1.2\n", "\t"},
      {"0", "-1", "1", "65535", "65536", "2147483647", "2147483648", "-2147483649",
       "9223372036854775807", "9223372036854775808", "18446744073709551616", "1e308", "0.5"}};
  return *d;
}

TEST(ClusterConfigFuzzTest, MutatedConfigsParseOrFailCleanly) {
  const fuzz::Config& config = fuzz::GetConfig(0xc0f1937ull);
  std::mt19937_64 rng(config.seed);
  const std::vector<std::string> seeds = Seeds();
  ASSERT_FALSE(seeds[0].empty());
  fuzz::Tally tally;
  fuzz::RunBounded(
      config, "cluster YAML mutations", 1.0,
      [&](uint64_t) {
        std::string text = seeds[fuzz::Pick(rng, seeds.size())];
        fuzz::Mutate(text, rng, Dict(), 1 << 14);
        absl::StatusOr<ClusterConfig> c = ParseClusterConfig(text, "fuzz.yaml");
        tally.Count(c.ok());
        if (!c.ok()) {
          EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
          EXPECT_THAT(c.status().message(), ::testing::HasSubstr("fuzz.yaml")) << text;
          return;
        }
        // What the processes take for granted once a config parses.
        EXPECT_FALSE(c->model.path.empty()) << text;
        EXPECT_GE(c->topology.attention_workers, 1) << text;
        EXPECT_GE(c->topology.expert_workers, 1) << text;
        EXPECT_LE(c->topology.attention_workers + c->topology.expert_workers, 1024) << text;
        EXPECT_TRUE(c->transport.backend == "ucx" || c->transport.backend == "inproc") << text;
        EXPECT_GE(c->limits.max_queue, 1) << text;
        EXPECT_GE(c->eplb.nodes, 1) << text;
        EXPECT_EQ(c->topology.expert_workers % c->eplb.nodes, 0) << text;
      },
      [] { return ::testing::Test::HasFailure(); });
  tally.Print("cluster YAML");
  EXPECT_GT(tally.accepted, 0u);
  EXPECT_GT(tally.refused, 0u);
}

}  // namespace
}  // namespace sy::cluster
