#include "model/config.h"

#include <cmath>
#include <functional>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sy::model {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

json Qwen3() {
  return json{{"architectures", {"Qwen3MoeForCausalLM"}},
              {"vocab_size", 512},
              {"hidden_size", 128},
              {"num_hidden_layers", 4},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"head_dim", 32},
              {"max_position_embeddings", 512},
              {"intermediate_size", 256},
              {"moe_intermediate_size", 32},
              {"num_experts", 16},
              {"num_experts_per_tok", 4},
              {"norm_topk_prob", true},
              {"decoder_sparse_step", 1},
              {"mlp_only_layers", json::array()},
              {"rope_theta", 1000000.0}};
}

json DeepseekV3() {
  return json{{"model_type", "deepseek_v3"},
              {"vocab_size", 512},
              {"hidden_size", 128},
              {"num_hidden_layers", 4},
              {"num_attention_heads", 4},
              {"max_position_embeddings", 512},
              {"intermediate_size", 256},
              {"moe_intermediate_size", 32},
              {"n_routed_experts", 32},
              {"n_shared_experts", 1},
              {"num_experts_per_tok", 4},
              {"n_group", 4},
              {"topk_group", 2},
              {"routed_scaling_factor", 2.5},
              {"first_k_dense_replace", 1},
              {"q_lora_rank", 64},
              {"kv_lora_rank", 32},
              {"qk_nope_head_dim", 32},
              {"qk_rope_head_dim", 16},
              {"v_head_dim", 32},
              {"rope_parameters", {{"rope_theta", 10000.0}, {"rope_type", "default"}}}};
}

absl::StatusOr<ModelConfig> Parse(const json& j) { return ParseModelConfig(j.dump(), "test.json"); }

TEST(ModelConfigTest, ShippedGoldenConfigsParse) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"deepseek_v3", "deepseek_v3"}, {"deepseek_v3_noqlora", "deepseek_v3"},
      {"deepseek_v2", "deepseek_v2"}, {"qwen3_moe", "qwen3_moe"},
      {"qwen2_moe", "qwen2_moe"},     {"glm4_moe", "glm4_moe"},
      {"mixtral", "mixtral"},         {"param2moe", "param2moe"}};
  for (const auto& [dir, family] : cases) {
    auto cfg = LoadModelConfig(std::string(SY_SOURCE_DIR) + "/tests/data/goldens/" + dir);
    ASSERT_TRUE(cfg.ok()) << dir << ": " << cfg.status();
    EXPECT_EQ(FamilyName(cfg->family), family);
  }
}

TEST(ModelConfigTest, Qwen3MoeFields) {
  auto cfg = Parse(Qwen3());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->family, Family::kQwen3Moe);
  EXPECT_EQ(cfg->attention, AttentionKind::kGqa);
  EXPECT_TRUE(cfg->qk_norm);
  EXPECT_EQ(cfg->rope.rotary_dim, 32);
  EXPECT_FALSE(cfg->rope.interleaved);
  EXPECT_EQ(cfg->num_experts, 16);
  EXPECT_TRUE(cfg->norm_topk_prob);
  EXPECT_EQ(cfg->num_moe_layers(), 4);
  EXPECT_FLOAT_EQ(cfg->softmax_scale, 1.0f / std::sqrt(32.0f));
}

TEST(ModelConfigTest, SparseStepAndMlpOnlyLayers) {
  json j = Qwen3();
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  auto cfg = Parse(j);
  ASSERT_TRUE(cfg.ok());
  EXPECT_THAT(cfg->layer_is_moe, ::testing::ElementsAre(false, true, false, false));
}

TEST(ModelConfigTest, DeepseekV3FromModelTypeWithMla) {
  auto cfg = Parse(DeepseekV3());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->architecture, "DeepseekV3ForCausalLM");
  EXPECT_EQ(cfg->attention, AttentionKind::kMla);
  EXPECT_EQ(cfg->head_dim, 48);
  EXPECT_EQ(cfg->rope.rotary_dim, 16);
  EXPECT_TRUE(cfg->rope.interleaved);
  EXPECT_EQ(cfg->topk_method, kernels::TopkMethod::kNoAuxTc);
  EXPECT_EQ(cfg->score_function, kernels::ScoreFunction::kSigmoid);
  EXPECT_TRUE(cfg->has_correction_bias);
  EXPECT_EQ(cfg->shared_expert_intermediate_size, 32);
  EXPECT_THAT(cfg->layer_is_moe, ::testing::ElementsAre(false, true, true, true));
  EXPECT_FLOAT_EQ(cfg->routed_scaling_factor, 2.5f);
}

TEST(ModelConfigTest, DeepseekV2TopkMethods) {
  json j = DeepseekV3();
  j["model_type"] = "deepseek_v2";
  j["topk_method"] = "group_limited_greedy";
  auto cfg = Parse(j);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->topk_method, kernels::TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(cfg->score_function, kernels::ScoreFunction::kSoftmax);
  EXPECT_FALSE(cfg->has_correction_bias);
  j["topk_method"] = "noaux_tc";
  auto bad = Parse(j);
  EXPECT_THAT(bad.status().message(), HasSubstr("topk_method"));
}

TEST(ModelConfigTest, OldAndNewRopeSpellingsAgree) {
  json old_style = DeepseekV3();
  old_style.erase("rope_parameters");
  old_style["rope_theta"] = 10000.0;
  old_style["rope_scaling"] = {
      {"type", "yarn"},       {"factor", 40.0}, {"original_max_position_embeddings", 4096},
      {"beta_fast", 32},      {"beta_slow", 1}, {"mscale", 1.0},
      {"mscale_all_dim", 1.0}};
  json new_style = DeepseekV3();
  new_style["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0},
                                  {"factor", 40.0},      {"original_max_position_embeddings", 4096},
                                  {"beta_fast", 32},     {"beta_slow", 1},
                                  {"mscale", 1.0},       {"mscale_all_dim", 1.0}};
  auto a = Parse(old_style);
  auto b = Parse(new_style);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->rope.type, "yarn");
  EXPECT_EQ(b->rope.type, "yarn");
  EXPECT_DOUBLE_EQ(a->rope.factor, b->rope.factor);
  EXPECT_EQ(a->rope.original_max_position_embeddings, 4096);
  // DeepSeek-V3 scales the softmax by mscale(40, 1)^2.
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(a->softmax_scale, m * m / std::sqrt(48.0), 1e-6);
  EXPECT_FLOAT_EQ(a->softmax_scale, b->softmax_scale);
}

TEST(ModelConfigTest, YarnTablesMatchDirectFormula) {
  RopeConfig rope;
  rope.type = "yarn";
  rope.theta = 10000.0;
  rope.rotary_dim = 64;
  rope.factor = 40.0;
  rope.original_max_position_embeddings = 4096;
  rope.mscale = 1.0;
  rope.mscale_all_dim = 1.0;
  auto t = ComputeRopeTables(rope, 163840);
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->inv_freq.size(), 32u);
  EXPECT_FLOAT_EQ(t->attention_scaling, 1.0f);  // mscale == mscale_all_dim
  // Correction range for dim 64, base 1e4, 4096 positions: low = floor(10.3..) = 10,
  // high = ceil(22.9..) = 23. Below low: pure extrapolation; above high: interpolation.
  EXPECT_FLOAT_EQ(t->inv_freq[0], 1.0f);
  const double f31 = 1.0 / std::pow(10000.0, 62.0 / 64.0);
  EXPECT_NEAR(t->inv_freq[31], f31 / 40.0, 1e-9);
  const double f16 = 1.0 / std::pow(10000.0, 32.0 / 64.0);
  const double ramp = (16.0 - 10.0) / (23.0 - 10.0);
  EXPECT_NEAR(t->inv_freq[16], f16 / 40.0 * ramp + f16 * (1.0 - ramp), 1e-7);
  // Without mscale keys the attention factor is 0.1 ln(s) + 1.
  rope.mscale = rope.mscale_all_dim = 0.0;
  t = ComputeRopeTables(rope, 163840);
  ASSERT_TRUE(t.ok());
  EXPECT_NEAR(t->attention_scaling, 0.1 * std::log(40.0) + 1.0, 1e-6);
}

TEST(ModelConfigTest, LinearRopeDividesFrequencies) {
  RopeConfig rope;
  rope.type = "linear";
  rope.rotary_dim = 8;
  rope.factor = 4.0;
  auto t = ComputeRopeTables(rope, 512);
  ASSERT_TRUE(t.ok());
  EXPECT_FLOAT_EQ(t->inv_freq[0], 0.25f);
  EXPECT_NEAR(t->inv_freq[1], std::pow(10000.0, -0.25) / 4.0, 1e-7);
}

TEST(ModelConfigTest, Param2AndGlmPartialRotary) {
  auto p2 = LoadModelConfig(std::string(SY_SOURCE_DIR) + "/tests/data/goldens/param2moe");
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(p2->rope.rotary_dim, 16);
  EXPECT_TRUE(p2->qk_norm);
  EXPECT_TRUE(p2->has_correction_bias);
  EXPECT_EQ(p2->shared_expert_intermediate_size, 32);
  json glm = Qwen3();
  glm["architectures"] = {"Glm4MoeForCausalLM"};
  glm.erase("num_experts");
  glm["n_routed_experts"] = 16;
  glm["n_shared_experts"] = 1;
  glm["use_qk_norm"] = true;
  glm["attention_bias"] = true;
  glm["first_k_dense_replace"] = 1;
  auto g = Parse(glm);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->rope.rotary_dim, 16);  // partial_rotary_factor defaults to 0.5
  EXPECT_TRUE(g->qkv_bias);
  EXPECT_FALSE(g->o_bias);
  EXPECT_EQ(g->topk_method, kernels::TopkMethod::kNoAuxTc);
}

TEST(ModelConfigTest, Qwen2MoeSharedExpertGate) {
  json j = Qwen3();
  j["architectures"] = {"Qwen2MoeForCausalLM"};
  j["shared_expert_intermediate_size"] = 64;
  j.erase("norm_topk_prob");
  auto cfg = Parse(j);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->shared_expert_gate);
  EXPECT_TRUE(cfg->qkv_bias);
  EXPECT_FALSE(cfg->qk_norm);
  EXPECT_FALSE(cfg->norm_topk_prob);
}

struct BadCase {
  const char* what;
  std::function<void(json&)> edit;
  const char* expect;
};

TEST(ModelConfigTest, ErrorsNameTheField) {
  const std::vector<BadCase> cases = {
      {"unsupported arch", [](json& j) { j["architectures"] = {"LlamaForCausalLM"}; },
       "LlamaForCausalLM"},
      {"arch not list", [](json& j) { j["architectures"] = "x"; }, "architectures"},
      {"missing hidden", [](json& j) { j.erase("hidden_size"); }, "'hidden_size' is required"},
      {"string vocab", [](json& j) { j["vocab_size"] = "512"; }, "'vocab_size' must be an integer"},
      {"zero layers", [](json& j) { j["num_hidden_layers"] = 0; }, "num_hidden_layers"},
      {"kv heads", [](json& j) { j["num_key_value_heads"] = 3; }, "num_key_value_heads"},
      {"topk > experts", [](json& j) { j["num_experts_per_tok"] = 17; }, "num_experts_per_tok"},
      {"act", [](json& j) { j["hidden_act"] = "gelu"; }, "hidden_act"},
      {"rope type",
       [](json& j) {
         j["rope_scaling"] = {{"type", "longrope"}};
       },
       "longrope"},
      {"rope scaling type", [](json& j) { j["rope_scaling"] = 3; }, "rope_scaling"},
      {"theta", [](json& j) { j["rope_theta"] = "big"; }, "rope_theta"},
      {"eos", [](json& j) { j["eos_token_id"] = 9999; }, "eos_token_id"},
      {"sliding", [](json& j) { j["use_sliding_window"] = true; }, "use_sliding_window"},
      {"mlp only", [](json& j) { j["mlp_only_layers"] = {"a"}; }, "mlp_only_layers"},
      {"no experts", [](json& j) { j.erase("num_experts"); }, "num_local_experts"},
      // Found by config_fuzz_test: refused before an allocation or a product.
      {"huge layers", [](json& j) { j["num_hidden_layers"] = int64_t{1} << 40; },
       "'num_hidden_layers' (1099511627776) exceeds the supported maximum of 1024"},
  };
  for (const auto& c : cases) {
    json j = Qwen3();
    c.edit(j);
    auto cfg = Parse(j);
    ASSERT_FALSE(cfg.ok()) << c.what;
    EXPECT_THAT(cfg.status().message(), HasSubstr(c.expect)) << c.what;
    EXPECT_THAT(cfg.status().message(), HasSubstr("test.json")) << c.what;
  }
  EXPECT_FALSE(ParseModelConfig("{not json", "x.json").ok());
  EXPECT_FALSE(ParseModelConfig("[1,2]", "x.json").ok());
  auto missing = LoadModelConfig("/nonexistent-dir");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  json ds = DeepseekV3();
  ds["n_group"] = 5;
  EXPECT_THAT(Parse(ds).status().message(), HasSubstr("n_group"));
  // Found by the fuzzers (UBSan: signed overflow): sizes refused before they
  // are added or multiplied.
  json mla = DeepseekV3();
  mla["qk_nope_head_dim"] = INT64_MAX;
  EXPECT_THAT(Parse(mla).status().message(), HasSubstr("'qk_nope_head_dim'"));
  json shared = DeepseekV3();
  shared["n_shared_experts"] = INT64_MAX / 2;
  EXPECT_THAT(Parse(shared).status().message(), HasSubstr("'n_shared_experts'"));
  ds = DeepseekV3();
  ds["topk_group"] = 9;
  EXPECT_THAT(Parse(ds).status().message(), HasSubstr("topk_group"));
  ds = DeepseekV3();
  ds.erase("kv_lora_rank");
  EXPECT_THAT(Parse(ds).status().message(), HasSubstr("kv_lora_rank"));
}

TEST(ModelConfigTest, FamilyDefaultsFollowTransformers) {
  json q = Qwen3();
  q.erase("norm_topk_prob");
  auto cfg = Parse(q);
  ASSERT_TRUE(cfg.ok());
  EXPECT_FALSE(cfg->norm_topk_prob);  // Qwen3MoeConfig's default
  // Param2MoE: sigmoid, expert bias on, one shared expert, -inf group masking,
  // renormalised top-k, when the config says nothing.
  json p = {{"architectures", {"Param2MoEForCausalLM"}},
            {"vocab_size", 64},
            {"hidden_size", 16},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 2},
            {"num_key_value_heads", 1},
            {"head_dim", 8},
            {"max_position_embeddings", 64},
            {"intermediate_size", 32},
            {"moe_intermediate_size", 8},
            {"num_experts", 8},
            {"num_experts_per_tok", 2},
            {"n_group", 2},
            {"topk_group", 1}};
  cfg = Parse(p);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->score_function, kernels::ScoreFunction::kSigmoid);
  EXPECT_TRUE(cfg->has_correction_bias);
  EXPECT_EQ(cfg->shared_expert_intermediate_size, 8);
  EXPECT_TRUE(cfg->norm_topk_prob);
  EXPECT_TRUE(std::isinf(cfg->router_params().dropped_group_value));
  p["score_function"] = "softmax";
  EXPECT_THAT(Parse(p).status().message(), HasSubstr("score_function"));
}

TEST(ModelConfigTest, YarnFactorImpliedByContextLengths) {
  json j = Qwen3();
  j["max_position_embeddings"] = 131072;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"original_max_position_embeddings", 32768}};
  auto cfg = Parse(j);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_DOUBLE_EQ(cfg->rope.factor, 4.0);
  j["rope_scaling"]["factor"] = 2.0;  // an explicit factor wins (transformers 5)
  cfg = Parse(j);
  ASSERT_TRUE(cfg.ok());
  EXPECT_DOUBLE_EQ(cfg->rope.factor, 2.0);
  j["rope_scaling"] = {{"rope_type", "linear"}};
  EXPECT_THAT(Parse(j).status().message(), HasSubstr("factor"));
}

TEST(ModelConfigTest, AbsurdSizesAreRefused) {
  for (const char* key : {"vocab_size", "hidden_size", "moe_intermediate_size", "num_experts"}) {
    json j = Qwen3();
    j[key] = int64_t{1} << 40;
    auto cfg = Parse(j);
    ASSERT_FALSE(cfg.ok()) << key;
    EXPECT_THAT(cfg.status().message(), HasSubstr(key));
  }
}

}  // namespace
}  // namespace sy::model
