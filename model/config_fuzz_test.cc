// Randomized robustness test for config.json: mutations of every golden
// case's config (all supported families) fed to ParseModelConfig must parse
// or fail with a message naming the source; never crash, hang or trip a
// sanitizer. A parse that succeeds must give the shapes the engine sizes its
// buffers from (positive, heads dividing, top-k within the experts), since a
// config that parses is trusted from then on. Budget: common/fuzz.h.
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/fuzz.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config.h"

namespace sy::model {
namespace {

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds;
  const std::filesystem::path root = std::filesystem::path(SY_SOURCE_DIR) / "tests/data/goldens";
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    const auto path = entry.path() / "config.json";
    if (!std::filesystem::exists(path)) continue;
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    seeds.push_back(s.str());
  }
  return seeds;
}

const fuzz::Dictionary& Dict() {
  static const fuzz::Dictionary* d = new fuzz::Dictionary{
      "{}[],:\"0123456789-. \\e",
      {"null",
       "true",
       "false",
       "[]",
       "{}",
       "\"\"",
       "-1",
       "0",
       "1e999",
       "\"num_experts\": 0,",
       "\"hidden_size\": -4,",
       "\"num_attention_heads\": 3,",
       "\"num_key_value_heads\": 0,",
       "\"head_dim\": 1,",
       "\"num_experts_per_tok\": 99,",
       "\"rope_scaling\": {\"type\": \"yarn\"},",
       "\"architectures\": [\"Nope\"],",
       "\"eos_token_id\": [1, -2],",
       "\\u0000",
       "\xff",
       "\"max_position_embeddings\": 9223372036854775807,",
       "\"n_group\": 0,"},
      {"0", "-1", "1", "3", "65536", "2147483647", "2147483648", "4294967296",
       "9223372036854775807", "9223372036854775808", "18446744073709551616", "1e308", "0.5", "-0"}};
  return *d;
}

TEST(ModelConfigFuzzTest, MutatedConfigsParseOrFailCleanly) {
  const fuzz::Config& config = fuzz::GetConfig(0xc0ff16ull);
  std::mt19937_64 rng(config.seed);
  const std::vector<std::string> seeds = Seeds();
  ASSERT_GE(seeds.size(), 8u);
  for (const std::string& s : seeds) ASSERT_TRUE(ParseModelConfig(s, "seed").ok()) << s;
  fuzz::Tally tally;
  fuzz::RunBounded(
      config, "config.json mutations", 1.0,
      [&](uint64_t) {
        std::string text = seeds[fuzz::Pick(rng, seeds.size())];
        fuzz::Mutate(text, rng, Dict(), 1 << 15);
        absl::StatusOr<ModelConfig> c = ParseModelConfig(text, "fuzz/config.json");
        tally.Count(c.ok());
        if (!c.ok()) {
          EXPECT_THAT(c.status().message(), ::testing::HasSubstr("fuzz/config.json")) << text;
          return;
        }
        EXPECT_GT(c->vocab_size, 0) << text;
        EXPECT_GT(c->hidden_size, 0) << text;
        EXPECT_GT(c->num_layers, 0) << text;
        EXPECT_GT(c->num_heads, 0) << text;
        EXPECT_GT(c->head_dim, 0) << text;
        if (c->num_kv_heads > 0) {
          EXPECT_EQ(c->num_heads % c->num_kv_heads, 0) << text;
        }
        EXPECT_EQ(c->layer_is_moe.size(), static_cast<size_t>(c->num_layers)) << text;
        if (c->num_moe_layers() > 0) {
          EXPECT_GT(c->num_experts, 0) << text;
          EXPECT_GE(c->top_k, 1) << text;
          EXPECT_LE(c->top_k, c->num_experts) << text;
          EXPECT_GT(c->moe_intermediate_size, 0) << text;
        }
      },
      [] { return ::testing::Test::HasFailure(); });
  tally.Print("config.json");
  EXPECT_GT(tally.accepted, 0u);
  EXPECT_GT(tally.refused, 0u);
}

}  // namespace
}  // namespace sy::model
