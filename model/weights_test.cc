#include "model/weights.h"

#include <stdlib.h>

#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/safetensors_writer.h"

namespace sy::model {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;
using Shape = std::vector<int64_t>;

// Every synthetic model: vocab 32, hidden 16, 2 layers, 4 experts, 4 query
// heads and 2 kv heads of size 4 (GQA).
constexpr int64_t kVocab = 32;
constexpr int64_t kHidden = 16;
constexpr int64_t kLayers = 2;
constexpr int64_t kExperts = 4;
constexpr int64_t kHeads = 4;
constexpr int64_t kKvHeads = 2;
constexpr int64_t kHeadDim = 4;
constexpr int64_t kInter = 24;    // dense MLP layers
constexpr int64_t kMoeInter = 8;  // routed experts
constexpr int64_t kSharedQwen2 = 12;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

int64_t Numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// `parts` back to back (rows of row-major matrices stacked).
std::vector<float> Stack(const std::vector<const std::vector<float>*>& parts) {
  std::vector<float> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

std::vector<float> Slice(const std::vector<float>& v, int64_t begin, int64_t count) {
  return std::vector<float>(v.begin() + begin, v.begin() + begin + count);
}

// ---------------------------------------------------------------------------
// Configs

Json BaseConfig(const std::string& architecture) {
  return Json{{"architectures", Json::array({architecture})},
              {"vocab_size", kVocab},
              {"hidden_size", kHidden},
              {"num_hidden_layers", kLayers},
              {"max_position_embeddings", 64},
              {"intermediate_size", kInter},
              {"num_attention_heads", kHeads},
              {"num_key_value_heads", kKvHeads},
              {"head_dim", kHeadDim},
              {"num_experts_per_tok", 2},
              {"moe_intermediate_size", kMoeInter},
              {"rms_norm_eps", 1e-6},
              {"rope_theta", 10000.0}};
}

// Qwen3-MoE with layer 1 a dense MLP layer.
Json Qwen3Config() {
  Json j = BaseConfig("Qwen3MoeForCausalLM");
  j["num_experts"] = kExperts;
  j["mlp_only_layers"] = Json::array({1});
  return j;
}

Json Qwen2Config() {
  Json j = BaseConfig("Qwen2MoeForCausalLM");
  j["num_experts"] = kExperts;
  j["shared_expert_intermediate_size"] = kSharedQwen2;
  return j;
}

Json MixtralConfig() {
  Json j = BaseConfig("MixtralForCausalLM");
  j["num_local_experts"] = kExperts;
  j["intermediate_size"] = kMoeInter;  // Mixtral's experts use intermediate_size
  j.erase("moe_intermediate_size");
  return j;
}

// Param2MoE with every optional tensor: qkv and o biases, q/k norms, expert
// bias, a shared expert; layer 0 dense.
Json Param2Config() {
  Json j = BaseConfig("Param2MoEForCausalLM");
  j["num_experts"] = kExperts;
  j["use_qk_norm"] = true;
  j["use_qkv_bias"] = true;
  j["use_bias"] = true;
  j["num_shared_experts"] = 1;
  j["moe_router_enable_expert_bias"] = true;
  j["score_function"] = "sigmoid";
  j["first_k_dense_replace"] = 1;
  j["partial_rotary_factor"] = 0.5;
  return j;
}

// DeepSeek-V3 MLA with q_lora; v_head_dim differs from qk_nope_head_dim so a
// wrong kv_b_proj split shows. Layer 0 dense.
Json DeepseekV3Config() {
  Json j = BaseConfig("DeepseekV3ForCausalLM");
  j.erase("head_dim");
  j["num_key_value_heads"] = kHeads;
  j["n_routed_experts"] = kExperts;
  j["n_shared_experts"] = 1;
  j["first_k_dense_replace"] = 1;
  j["q_lora_rank"] = 12;
  j["kv_lora_rank"] = 8;
  j["qk_nope_head_dim"] = 4;
  j["qk_rope_head_dim"] = 2;
  j["v_head_dim"] = 3;
  j["n_group"] = 1;
  j["topk_group"] = 1;
  return j;
}

// DeepSeek-V2(-Lite style) MLA without q_lora; both layers MoE, 2 shared experts.
Json DeepseekV2NoQLoraConfig() {
  Json j = DeepseekV3Config();
  j["architectures"] = Json::array({"DeepseekV2ForCausalLM"});
  j["q_lora_rank"] = nullptr;
  j["n_shared_experts"] = 2;
  j["first_k_dense_replace"] = 0;
  return j;
}

ModelConfig Parse(const Json& j) {
  auto cfg = ParseModelConfig(j.dump(), "test config");
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  return cfg.ok() ? *std::move(cfg) : ModelConfig{};
}

// ---------------------------------------------------------------------------
// Hub tensor names, written out independently of weights.cc.

enum class ExpertLayout {
  kPerExpert,  // experts.N.{gate,up,down}_proj (Mixtral: w1/w3/w2)
  kFused,      // transformers 5: mlp.experts.gate_up_proj [E, 2I, H], down_proj [E, H, I]
};

std::vector<std::pair<std::string, Shape>> HubTensorShapes(const ModelConfig& cfg,
                                                           ExpertLayout layout) {
  std::vector<std::pair<std::string, Shape>> out;
  auto add = [&out](std::string name, Shape shape) { out.emplace_back(std::move(name), shape); };
  const bool param2 = cfg.family == Family::kParam2Moe;
  const bool mixtral = cfg.family == Family::kMixtral;
  const int64_t V = cfg.vocab_size, h = cfg.hidden_size, H = cfg.num_heads;
  const int64_t KV = cfg.num_kv_heads, D = cfg.head_dim, E = cfg.num_experts;
  const int64_t I = cfg.moe_intermediate_size;
  add(param2 ? "model.word_embeddings.weight" : "model.embed_tokens.weight", {V, h});
  add("model.norm.weight", {h});
  add("lm_head.weight", {V, h});
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {h});
    add(p + "post_attention_layernorm.weight", {h});
    if (cfg.attention == AttentionKind::kMla) {
      const std::string s = p + "self_attn.";
      const int64_t q = cfg.q_lora_rank, r = cfg.kv_lora_rank;
      if (q > 0) {
        add(s + "q_a_proj.weight", {q, h});
        add(s + "q_a_layernorm.weight", {q});
        add(s + "q_b_proj.weight", {H * D, q});
      } else {
        add(s + "q_proj.weight", {H * D, h});
      }
      add(s + "kv_a_proj_with_mqa.weight", {r + cfg.qk_rope_head_dim, h});
      add(s + "kv_a_layernorm.weight", {r});
      add(s + "kv_b_proj.weight", {H * (cfg.qk_nope_head_dim + cfg.v_head_dim), r});
      add(s + "o_proj.weight", {h, H * cfg.v_head_dim});
    } else if (param2) {
      const std::string s = p + "attention.";
      add(s + "query_key_value.weight", {(H + 2 * KV) * D, h});
      if (cfg.qkv_bias) add(s + "query_key_value.bias", {(H + 2 * KV) * D});
      add(s + "dense.weight", {h, H * D});
      if (cfg.o_bias) add(s + "dense.bias", {h});
      if (cfg.qk_norm) {
        add(s + "query_layernorm.weight", {D});
        add(s + "key_layernorm.weight", {D});
      }
    } else {
      const std::string s = p + "self_attn.";
      add(s + "q_proj.weight", {H * D, h});
      add(s + "k_proj.weight", {KV * D, h});
      add(s + "v_proj.weight", {KV * D, h});
      if (cfg.qkv_bias) {
        add(s + "q_proj.bias", {H * D});
        add(s + "k_proj.bias", {KV * D});
        add(s + "v_proj.bias", {KV * D});
      }
      add(s + "o_proj.weight", {h, H * D});
      if (cfg.o_bias) add(s + "o_proj.bias", {h});
      if (cfg.qk_norm) {
        add(s + "q_norm.weight", {D});
        add(s + "k_norm.weight", {D});
      }
    }
    if (!cfg.layer_is_moe[l]) {
      add(p + "mlp.gate_proj.weight", {cfg.intermediate_size, h});
      add(p + "mlp.up_proj.weight", {cfg.intermediate_size, h});
      add(p + "mlp.down_proj.weight", {h, cfg.intermediate_size});
      continue;
    }
    const std::string m = p + (mixtral ? "block_sparse_moe." : "mlp.");
    add(m + "gate.weight", {E, h});
    if (cfg.has_correction_bias) {
      add(m + (param2 ? "gate.expert_bias" : "gate.e_score_correction_bias"), {E});
    }
    if (layout == ExpertLayout::kFused) {
      add(p + "mlp.experts.gate_up_proj", {E, 2 * I, h});
      add(p + "mlp.experts.down_proj", {E, h, I});
    } else {
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = absl::StrCat(m, "experts.", e, ".");
        add(x + (mixtral ? "w1" : "gate_proj") + ".weight", {I, h});
        add(x + (mixtral ? "w2" : "down_proj") + ".weight", {h, I});
        add(x + (mixtral ? "w3" : "up_proj") + ".weight", {I, h});
      }
    }
    const int64_t S = cfg.shared_expert_intermediate_size;
    if (S > 0) {
      const bool qwen2 = cfg.family == Family::kQwen2Moe;
      const std::string sh = m + (qwen2 ? "shared_expert." : "shared_experts.");
      add(sh + "gate_proj.weight", {S, h});
      add(sh + "up_proj.weight", {S, h});
      add(sh + "down_proj.weight", {h, S});
      if (qwen2) add(m + "shared_expert_gate.weight", {1, h});
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Layout checks shared by loaded and dummy weights.

void ExpectShape(const Tensor& t, const Shape& shape, const std::string& what) {
  EXPECT_EQ(t.shape, shape) << what;
  EXPECT_EQ(t.numel(), Numel(shape)) << what;
}

void ExpectAbsent(const Tensor& t, const std::string& what) {
  EXPECT_TRUE(t.empty()) << what;
  EXPECT_TRUE(t.shape.empty()) << what;
}

void ExpectShapeIf(bool present, const Tensor& t, const Shape& shape, const std::string& what) {
  if (present) {
    ExpectShape(t, shape, what);
  } else {
    ExpectAbsent(t, what);
  }
}

// Every tensor of `w` has the shape weights.h documents for `cfg`, and the
// tensors the config does not call for are empty.
void ExpectLayoutMatchesConfig(const ModelConfig& cfg, const DenseWeights& w) {
  const int64_t V = cfg.vocab_size, h = cfg.hidden_size, H = cfg.num_heads;
  const int64_t KV = cfg.num_kv_heads, D = cfg.head_dim, E = cfg.num_experts;
  ExpectShape(w.embed, {V, h}, "embed");
  ExpectShape(w.final_norm, {h}, "final_norm");
  ExpectShape(w.lm_head, {V, h}, "lm_head");
  ASSERT_EQ(static_cast<int64_t>(w.layers.size()), cfg.num_layers);
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    SCOPED_TRACE(absl::StrCat("layer ", i));
    const LayerWeights& l = w.layers[i];
    const AttentionWeights& a = l.attn;
    ExpectShape(l.input_norm, {h}, "input_norm");
    ExpectShape(l.post_attn_norm, {h}, "post_attn_norm");
    const bool mla = cfg.attention == AttentionKind::kMla;
    const bool q_lora = mla && cfg.q_lora_rank > 0;
    const int64_t q = cfg.q_lora_rank, r = cfg.kv_lora_rank;
    ExpectShapeIf(!mla, a.qkv, {(H + 2 * KV) * D, h}, "qkv");
    ExpectShapeIf(!mla && cfg.qkv_bias, a.qkv_bias, {(H + 2 * KV) * D}, "qkv_bias");
    ExpectShapeIf(!mla && cfg.qk_norm, a.q_norm, {D}, "q_norm");
    ExpectShapeIf(!mla && cfg.qk_norm, a.k_norm, {D}, "k_norm");
    ExpectShapeIf(mla && !q_lora, a.q_proj, {H * D, h}, "q_proj");
    ExpectShapeIf(q_lora, a.q_a_proj, {q, h}, "q_a_proj");
    ExpectShapeIf(q_lora, a.q_a_norm, {q}, "q_a_norm");
    ExpectShapeIf(q_lora, a.q_b_proj, {H * D, q}, "q_b_proj");
    ExpectShapeIf(mla, a.kv_a_proj, {r + cfg.qk_rope_head_dim, h}, "kv_a_proj");
    ExpectShapeIf(mla, a.kv_a_norm, {r}, "kv_a_norm");
    ExpectShapeIf(mla, a.w_uk, {H, cfg.qk_nope_head_dim, r}, "w_uk");
    ExpectShapeIf(mla, a.w_uv, {H, cfg.v_head_dim, r}, "w_uv");
    ExpectShape(a.o_proj, {h, H * (mla ? cfg.v_head_dim : D)}, "o_proj");
    ExpectShapeIf(cfg.o_bias, a.o_bias, {h}, "o_bias");
    EXPECT_EQ(l.is_moe, static_cast<bool>(cfg.layer_is_moe[i]));
    const int64_t I = cfg.intermediate_size, S = cfg.shared_expert_intermediate_size;
    ExpectShapeIf(!l.is_moe, l.dense.gate_up, {2 * I, h}, "dense.gate_up");
    ExpectShapeIf(!l.is_moe, l.dense.down, {h, I}, "dense.down");
    ExpectShapeIf(l.is_moe, l.router, {E, h}, "router");
    ExpectShapeIf(l.is_moe && cfg.has_correction_bias, l.correction_bias, {E}, "correction_bias");
    ExpectShapeIf(l.is_moe && S > 0, l.shared.gate_up, {2 * S, h}, "shared.gate_up");
    ExpectShapeIf(l.is_moe && S > 0, l.shared.down, {h, S}, "shared.down");
    ExpectShapeIf(l.is_moe && cfg.shared_expert_gate, l.shared_gate, {1, h}, "shared_gate");
  }
}

// Every tensor of the dense weights with a name, for whole-model comparisons.
std::vector<std::pair<std::string, const Tensor*>> AllTensors(const DenseWeights& w) {
  std::vector<std::pair<std::string, const Tensor*>> out = {
      {"embed", &w.embed}, {"final_norm", &w.final_norm}, {"lm_head", &w.lm_head}};
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const AttentionWeights& a = l.attn;
    const std::string p = absl::StrCat("layers.", i, ".");
    for (const auto& [name, t] :
         std::vector<std::pair<const char*, const Tensor*>>{{"input_norm", &l.input_norm},
                                                            {"post_attn_norm", &l.post_attn_norm},
                                                            {"qkv", &a.qkv},
                                                            {"qkv_bias", &a.qkv_bias},
                                                            {"q_norm", &a.q_norm},
                                                            {"k_norm", &a.k_norm},
                                                            {"q_proj", &a.q_proj},
                                                            {"q_a_proj", &a.q_a_proj},
                                                            {"q_a_norm", &a.q_a_norm},
                                                            {"q_b_proj", &a.q_b_proj},
                                                            {"kv_a_proj", &a.kv_a_proj},
                                                            {"kv_a_norm", &a.kv_a_norm},
                                                            {"w_uk", &a.w_uk},
                                                            {"w_uv", &a.w_uv},
                                                            {"o_proj", &a.o_proj},
                                                            {"o_bias", &a.o_bias},
                                                            {"dense.gate_up", &l.dense.gate_up},
                                                            {"dense.down", &l.dense.down},
                                                            {"router", &l.router},
                                                            {"correction_bias", &l.correction_bias},
                                                            {"shared.gate_up", &l.shared.gate_up},
                                                            {"shared.down", &l.shared.down},
                                                            {"shared_gate", &l.shared_gate}}) {
      out.emplace_back(p + name, t);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Fixture: a synthetic checkpoint in a temporary directory.

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/weights_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }

  void TearDown() override {
    ckpt_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Writes `config` as config.json, parses it back into cfg_ (the loader's
  // path) and fills tensors_ with every tensor a hub checkpoint of it holds.
  void MakeModel(const Json& config, ExpertLayout layout = ExpertLayout::kPerExpert) {
    std::ofstream(dir_ + "/config.json") << config.dump(2);
    auto cfg = LoadModelConfig(dir_);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    cfg_ = *std::move(cfg);
    tensors_.clear();
    for (const auto& [name, shape] : HubTensorShapes(cfg_, layout)) Add(name, shape);
  }

  // Adds (or replaces) tensor `name`. Its values are id * 4096 + index with
  // a fresh id per call, exact in fp32 and distinct across the checkpoint, so
  // each loaded value tells where it came from.
  void Add(const std::string& name, const Shape& shape) {
    Remove(name);
    WriterTensor t;
    t.name = name;
    t.shape = shape;
    t.values.resize(Numel(shape));
    const float base = static_cast<float>(++last_id_) * 4096.0f;
    for (size_t i = 0; i < t.values.size(); ++i) t.values[i] = base + static_cast<float>(i);
    tensors_.push_back(std::move(t));
  }

  void Remove(const std::string& name) {
    std::erase_if(tensors_, [&name](const WriterTensor& t) { return t.name == name; });
  }

  const std::vector<float>& Values(const std::string& name) const {
    for (const WriterTensor& t : tensors_) {
      if (t.name == name) return t.values;
    }
    ADD_FAILURE() << "test bug: no tensor " << name;
    static const std::vector<float> kEmpty;
    return kEmpty;
  }

  // Writes tensors_ (one model.safetensors, or `num_shards` shards and an
  // index) and opens the directory as a Checkpoint.
  void WriteAndOpen(int num_shards = 1) {
    ckpt_.reset();
    if (num_shards == 1) {
      ASSERT_TRUE(WriteSafetensors(dir_ + "/model.safetensors", tensors_).ok());
    } else {
      ASSERT_TRUE(WriteShardedCheckpoint(dir_, tensors_, num_shards).ok());
    }
    auto ckpt = Checkpoint::Open(dir_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ckpt_ = *std::move(ckpt);
  }

  // Loads the dense weights, which must succeed and match the config's layout.
  DenseWeights LoadOk() {
    auto w = LoadDenseWeights(cfg_, *ckpt_);
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return DenseWeights{};
    ExpectLayoutMatchesConfig(cfg_, *w);
    return *std::move(w);
  }

  std::string dir_;
  ModelConfig cfg_;
  std::vector<WriterTensor> tensors_;
  std::unique_ptr<Checkpoint> ckpt_;
  int last_id_ = 0;
};

// ---------------------------------------------------------------------------
// The test writer itself.

TEST(SafetensorsWriterTest, RoundsToNearestEven) {
  // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie between 1 and 1 + 2^-7.
  EXPECT_EQ(FloatToBf16Bits(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16Bits(1.0f + 0x1p-8f), 0x3f80);             // tie, to even
  EXPECT_EQ(FloatToBf16Bits(1.0f + 3 * 0x1p-8f), 0x3f82);         // tie, to even (up)
  EXPECT_EQ(FloatToBf16Bits(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above the tie
  EXPECT_EQ(FloatToBf16Bits(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBf16Bits(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(std::bit_cast<float>(
      uint32_t{FloatToBf16Bits(std::numeric_limits<float>::quiet_NaN())} << 16)));
  // fp16 keeps 11 significant bits.
  EXPECT_EQ(FloatToF16Bits(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16Bits(1.0f + 0x1p-11f), 0x3c00);      // tie, to even
  EXPECT_EQ(FloatToF16Bits(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie, to even (up)
  EXPECT_EQ(FloatToF16Bits(-0.5f), 0xb800);
  EXPECT_EQ(FloatToF16Bits(65504.0f), 0x7bff);  // largest finite
  EXPECT_EQ(FloatToF16Bits(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToF16Bits(65520.0f), 0x7c00);             // rounds to inf
  EXPECT_EQ(FloatToF16Bits(0x1p-14f), 0x0400);             // smallest normal
  EXPECT_EQ(FloatToF16Bits(0x1p-24f), 0x0001);             // smallest subnormal
  EXPECT_EQ(FloatToF16Bits(0x1p-25f), 0x0000);             // tie, to even (zero)
  EXPECT_EQ(FloatToF16Bits(0x1.8p-24f), 0x0002);           // tie, to even (up)
  EXPECT_EQ(FloatToF16Bits(0x1p-14f - 0x1p-25f), 0x0400);  // rounds up to normal
  EXPECT_EQ(FloatToF16Bits(-1e-10f), 0x8000);
  // Round trip through the reader for every representable fp16 and bf16.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const uint16_t b = static_cast<uint16_t>(bits);
    float f16 = 0, bf16 = 0;
    ASSERT_TRUE(ConvertToF32(StDType::kF16, &b, 1, &f16).ok());
    ASSERT_TRUE(ConvertToF32(StDType::kBF16, &b, 1, &bf16).ok());
    if (!std::isnan(f16)) {
      ASSERT_EQ(FloatToF16Bits(f16), b) << bits;
    }
    if (!std::isnan(bf16)) {
      ASSERT_EQ(FloatToBf16Bits(bf16), b) << bits;
    }
  }
}

// ---------------------------------------------------------------------------
// LoadDenseWeights, per family.

TEST_F(WeightsTest, Qwen3MoeFusesQkvInQKVRowOrder) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  ASSERT_TRUE(cfg_.qk_norm);
  const DenseWeights w = LoadOk();
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.embed.data, Values("model.embed_tokens.weight"));
  EXPECT_EQ(w.final_norm.data, Values("model.norm.weight"));
  EXPECT_EQ(w.lm_head.data, Values("lm_head.weight"));
  for (int64_t i = 0; i < kLayers; ++i) {
    SCOPED_TRACE(absl::StrCat("layer ", i));
    const std::string p = absl::StrCat("model.layers.", i, ".");
    const std::string s = p + "self_attn.";
    const AttentionWeights& a = w.layers[i].attn;
    const auto& q = Values(s + "q_proj.weight");
    const auto& k = Values(s + "k_proj.weight");
    const auto& v = Values(s + "v_proj.weight");
    EXPECT_EQ(a.qkv.data, Stack({&q, &k, &v}));
    // Spot checks: k starts after the H * D = 16 q rows, v after the 8 k rows.
    ASSERT_EQ(a.qkv.numel(), 32 * kHidden);
    EXPECT_EQ(a.qkv.data[0], q[0]);
    EXPECT_EQ(a.qkv.data[15 * kHidden + 3], q[15 * kHidden + 3]);
    EXPECT_EQ(a.qkv.data[16 * kHidden], k[0]);
    EXPECT_EQ(a.qkv.data[23 * kHidden + 15], k[7 * kHidden + 15]);
    EXPECT_EQ(a.qkv.data[24 * kHidden + 5], v[5]);
    EXPECT_EQ(a.qkv.data.back(), v.back());
    EXPECT_EQ(a.o_proj.data, Values(s + "o_proj.weight"));
    EXPECT_EQ(a.q_norm.data, Values(s + "q_norm.weight"));
    EXPECT_EQ(a.k_norm.data, Values(s + "k_norm.weight"));
    EXPECT_EQ(w.layers[i].input_norm.data, Values(p + "input_layernorm.weight"));
    EXPECT_EQ(w.layers[i].post_attn_norm.data, Values(p + "post_attention_layernorm.weight"));
  }
  // Layer 0 is MoE, layer 1 (mlp_only_layers) a dense SwiGLU MLP.
  EXPECT_TRUE(w.layers[0].is_moe);
  EXPECT_EQ(w.layers[0].router.data, Values("model.layers.0.mlp.gate.weight"));
  EXPECT_FALSE(w.layers[1].is_moe);
  const auto& gate = Values("model.layers.1.mlp.gate_proj.weight");
  const auto& up = Values("model.layers.1.mlp.up_proj.weight");
  EXPECT_EQ(w.layers[1].dense.gate_up.data, Stack({&gate, &up}));
  EXPECT_EQ(w.layers[1].dense.down.data, Values("model.layers.1.mlp.down_proj.weight"));
}

TEST_F(WeightsTest, Qwen3MoeAttentionBias) {
  Json config = Qwen3Config();
  config["attention_bias"] = true;
  ASSERT_NO_FATAL_FAILURE(MakeModel(config));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  const DenseWeights w = LoadOk();
  ASSERT_EQ(w.layers.size(), 2u);
  const std::string s = "model.layers.1.self_attn.";
  const auto& qb = Values(s + "q_proj.bias");
  const auto& kb = Values(s + "k_proj.bias");
  const auto& vb = Values(s + "v_proj.bias");
  EXPECT_EQ(w.layers[1].attn.qkv_bias.data, Stack({&qb, &kb, &vb}));
  EXPECT_EQ(w.layers[1].attn.o_bias.data, Values(s + "o_proj.bias"));
}

TEST_F(WeightsTest, Param2MoeCheckpointNames) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Param2Config()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  ASSERT_TRUE(cfg_.qkv_bias && cfg_.o_bias && cfg_.qk_norm && cfg_.has_correction_bias);
  const DenseWeights w = LoadOk();
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.embed.data, Values("model.word_embeddings.weight"));
  EXPECT_EQ(w.lm_head.data, Values("lm_head.weight"));
  for (int64_t i = 0; i < kLayers; ++i) {
    SCOPED_TRACE(absl::StrCat("layer ", i));
    const std::string s = absl::StrCat("model.layers.", i, ".attention.");
    const AttentionWeights& a = w.layers[i].attn;
    EXPECT_EQ(a.qkv.data, Values(s + "query_key_value.weight"));
    EXPECT_EQ(a.qkv_bias.data, Values(s + "query_key_value.bias"));
    EXPECT_EQ(a.o_proj.data, Values(s + "dense.weight"));
    EXPECT_EQ(a.o_bias.data, Values(s + "dense.bias"));
    EXPECT_EQ(a.q_norm.data, Values(s + "query_layernorm.weight"));
    EXPECT_EQ(a.k_norm.data, Values(s + "key_layernorm.weight"));
  }
  EXPECT_FALSE(w.layers[0].is_moe);  // first_k_dense_replace = 1
  const LayerWeights& l = w.layers[1];
  ASSERT_TRUE(l.is_moe);
  EXPECT_EQ(l.router.data, Values("model.layers.1.mlp.gate.weight"));
  EXPECT_EQ(l.correction_bias.data, Values("model.layers.1.mlp.gate.expert_bias"));
  const std::string sh = "model.layers.1.mlp.shared_experts.";
  const auto& gate = Values(sh + "gate_proj.weight");
  const auto& up = Values(sh + "up_proj.weight");
  EXPECT_EQ(l.shared.gate_up.data, Stack({&gate, &up}));
  EXPECT_EQ(l.shared.down.data, Values(sh + "down_proj.weight"));
  EXPECT_TRUE(l.shared_gate.empty());
}

TEST_F(WeightsTest, MixtralBlockSparseMoeAndW1W2W3) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(MixtralConfig()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  const DenseWeights w = LoadOk();
  ASSERT_EQ(w.layers.size(), 2u);
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string m = absl::StrCat("model.layers.", i, ".block_sparse_moe.");
    EXPECT_EQ(w.layers[i].router.data, Values(m + "gate.weight")) << "layer " << i;
    for (int64_t e = 0; e < kExperts; ++e) {
      SCOPED_TRACE(absl::StrCat("layer ", i, " expert ", e));
      const std::string x = absl::StrCat(m, "experts.", e, ".");
      auto expert = LoadExpert(cfg_, *ckpt_, i, e);
      ASSERT_TRUE(expert.ok()) << expert.status();
      const auto& w1 = Values(x + "w1.weight");
      const auto& w3 = Values(x + "w3.weight");
      EXPECT_THAT(expert->gate_up.shape, ElementsAre(2 * kMoeInter, kHidden));
      EXPECT_EQ(expert->gate_up.data, Stack({&w1, &w3}));  // gate (w1) rows, then up (w3)
      EXPECT_EQ(expert->gate_up.data[kMoeInter * kHidden], w3[0]);
      EXPECT_THAT(expert->down.shape, ElementsAre(kHidden, kMoeInter));
      EXPECT_EQ(expert->down.data, Values(x + "w2.weight"));
    }
  }
  EXPECT_EQ(ExpertTensorName(cfg_, 1, 3, "gate_proj"),
            "model.layers.1.block_sparse_moe.experts.3.w1.weight");
  EXPECT_EQ(ExpertTensorName(cfg_, 1, 3, "up_proj"),
            "model.layers.1.block_sparse_moe.experts.3.w3.weight");
  EXPECT_EQ(ExpertTensorName(cfg_, 1, 3, "down_proj"),
            "model.layers.1.block_sparse_moe.experts.3.w2.weight");
}

// kv_b_proj rows are, per head, qk_nope_head_dim rows of W_UK then v_head_dim
// rows of W_UV.
void ExpectKvBSplit(const ModelConfig& cfg, const std::vector<float>& kv_b,
                    const AttentionWeights& a) {
  const int64_t nope = cfg.qk_nope_head_dim, v = cfg.v_head_dim, r = cfg.kv_lora_rank;
  ASSERT_EQ(a.w_uk.numel(), cfg.num_heads * nope * r);
  ASSERT_EQ(a.w_uv.numel(), cfg.num_heads * v * r);
  for (int64_t h = 0; h < cfg.num_heads; ++h) {
    const int64_t head_row = h * (nope + v);
    EXPECT_EQ(Slice(a.w_uk.data, h * nope * r, nope * r), Slice(kv_b, head_row * r, nope * r))
        << "w_uk head " << h;
    EXPECT_EQ(Slice(a.w_uv.data, h * v * r, v * r), Slice(kv_b, (head_row + nope) * r, v * r))
        << "w_uv head " << h;
  }
  // One element by hand: head 2, v row 1, column 5.
  EXPECT_EQ(a.w_uv.data[(2 * v + 1) * r + 5], kv_b[(2 * (nope + v) + nope + 1) * r + 5]);
}

TEST_F(WeightsTest, DeepseekV3MlaWithQLora) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(DeepseekV3Config()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  ASSERT_EQ(cfg_.attention, AttentionKind::kMla);
  ASSERT_EQ(cfg_.head_dim, 6);
  const DenseWeights w = LoadOk();
  ASSERT_EQ(w.layers.size(), 2u);
  for (int64_t i = 0; i < kLayers; ++i) {
    SCOPED_TRACE(absl::StrCat("layer ", i));
    const std::string s = absl::StrCat("model.layers.", i, ".self_attn.");
    const AttentionWeights& a = w.layers[i].attn;
    EXPECT_EQ(a.q_a_proj.data, Values(s + "q_a_proj.weight"));
    EXPECT_EQ(a.q_a_norm.data, Values(s + "q_a_layernorm.weight"));
    EXPECT_EQ(a.q_b_proj.data, Values(s + "q_b_proj.weight"));
    EXPECT_EQ(a.kv_a_proj.data, Values(s + "kv_a_proj_with_mqa.weight"));
    EXPECT_EQ(a.kv_a_norm.data, Values(s + "kv_a_layernorm.weight"));
    EXPECT_EQ(a.o_proj.data, Values(s + "o_proj.weight"));
    ExpectKvBSplit(cfg_, Values(s + "kv_b_proj.weight"), a);
  }
  EXPECT_FALSE(w.layers[0].is_moe);
  const LayerWeights& l = w.layers[1];
  ASSERT_TRUE(l.is_moe);
  EXPECT_EQ(l.correction_bias.data, Values("model.layers.1.mlp.gate.e_score_correction_bias"));
  const std::string sh = "model.layers.1.mlp.shared_experts.";
  const auto& gate = Values(sh + "gate_proj.weight");
  const auto& up = Values(sh + "up_proj.weight");
  EXPECT_EQ(l.shared.gate_up.data, Stack({&gate, &up}));
  EXPECT_EQ(l.shared.down.data, Values(sh + "down_proj.weight"));
}

TEST_F(WeightsTest, DeepseekV2MlaWithoutQLora) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(DeepseekV2NoQLoraConfig()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  ASSERT_EQ(cfg_.q_lora_rank, 0);
  ASSERT_EQ(cfg_.shared_expert_intermediate_size, 2 * kMoeInter);
  const DenseWeights w = LoadOk();
  ASSERT_EQ(w.layers.size(), 2u);
  for (int64_t i = 0; i < kLayers; ++i) {
    SCOPED_TRACE(absl::StrCat("layer ", i));
    const std::string s = absl::StrCat("model.layers.", i, ".self_attn.");
    const AttentionWeights& a = w.layers[i].attn;
    EXPECT_EQ(a.q_proj.data, Values(s + "q_proj.weight"));
    EXPECT_EQ(a.kv_a_proj.data, Values(s + "kv_a_proj_with_mqa.weight"));
    ExpectKvBSplit(cfg_, Values(s + "kv_b_proj.weight"), a);
    EXPECT_TRUE(w.layers[i].is_moe);
    EXPECT_TRUE(w.layers[i].correction_bias.empty());  // V2: no correction bias
  }
}

TEST_F(WeightsTest, Qwen2MoeSharedExpertAndGate) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen2Config()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  ASSERT_TRUE(cfg_.shared_expert_gate);
  ASSERT_TRUE(cfg_.qkv_bias);  // Qwen2-MoE's q/k/v always carry a bias
  const DenseWeights w = LoadOk();
  ASSERT_EQ(w.layers.size(), 2u);
  for (int64_t i = 0; i < kLayers; ++i) {
    SCOPED_TRACE(absl::StrCat("layer ", i));
    const std::string m = absl::StrCat("model.layers.", i, ".mlp.");
    const LayerWeights& l = w.layers[i];
    const auto& gate = Values(m + "shared_expert.gate_proj.weight");
    const auto& up = Values(m + "shared_expert.up_proj.weight");
    EXPECT_EQ(l.shared.gate_up.data, Stack({&gate, &up}));
    EXPECT_EQ(l.shared.down.data, Values(m + "shared_expert.down_proj.weight"));
    EXPECT_EQ(l.shared_gate.data, Values(m + "shared_expert_gate.weight"));
    const std::string s = absl::StrCat("model.layers.", i, ".self_attn.");
    const auto& qb = Values(s + "q_proj.bias");
    const auto& kb = Values(s + "k_proj.bias");
    const auto& vb = Values(s + "v_proj.bias");
    EXPECT_EQ(l.attn.qkv_bias.data, Stack({&qb, &kb, &vb}));
    EXPECT_TRUE(l.attn.o_bias.empty());
  }
}

TEST_F(WeightsTest, TiedEmbeddingsWithoutLmHead) {
  Json config = Qwen3Config();
  config["tie_word_embeddings"] = true;
  ASSERT_NO_FATAL_FAILURE(MakeModel(config));
  Remove("lm_head.weight");
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  const DenseWeights w = LoadOk();
  EXPECT_EQ(w.embed.data, Values("model.embed_tokens.weight"));
  EXPECT_EQ(w.lm_head.data, w.embed.data);
  EXPECT_EQ(w.lm_head.shape, w.embed.shape);
}

TEST_F(WeightsTest, UntiedWithoutLmHeadIsAnError) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config()));
  Remove("lm_head.weight");
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  auto w = LoadDenseWeights(cfg_, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(w.status()), HasSubstr("lm_head.weight"));
}

TEST_F(WeightsTest, ShardedCheckpointLoadsLikeOneFile) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(DeepseekV3Config()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  const DenseWeights single = LoadOk();
  auto single_expert = LoadExpert(cfg_, *ckpt_, 1, 2);
  ASSERT_TRUE(single_expert.ok()) << single_expert.status();
  fs::remove(dir_ + "/model.safetensors");
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen(/*num_shards=*/3));
  ASSERT_TRUE(fs::exists(dir_ + "/model-00003-of-00003.safetensors"));
  const DenseWeights sharded = LoadOk();
  const auto a = AllTensors(single), b = AllTensors(sharded);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].second->data, b[i].second->data) << a[i].first;
    EXPECT_EQ(a[i].second->shape, b[i].second->shape) << a[i].first;
  }
  auto sharded_expert = LoadExpert(cfg_, *ckpt_, 1, 2);
  ASSERT_TRUE(sharded_expert.ok()) << sharded_expert.status();
  EXPECT_EQ(sharded_expert->gate_up.data, single_expert->gate_up.data);
  EXPECT_EQ(sharded_expert->down.data, single_expert->down.data);
}

// ---------------------------------------------------------------------------
// LoadExpert

TEST_F(WeightsTest, LoadExpertFromPerExpertTensors) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  for (int64_t e = 0; e < kExperts; ++e) {
    SCOPED_TRACE(absl::StrCat("expert ", e));
    const std::string x = absl::StrCat("model.layers.0.mlp.experts.", e, ".");
    EXPECT_EQ(ExpertTensorName(cfg_, 0, e, "gate_proj"), x + "gate_proj.weight");
    auto expert = LoadExpert(cfg_, *ckpt_, 0, e);
    ASSERT_TRUE(expert.ok()) << expert.status();
    const auto& gate = Values(x + "gate_proj.weight");
    const auto& up = Values(x + "up_proj.weight");
    EXPECT_THAT(expert->gate_up.shape, ElementsAre(2 * kMoeInter, kHidden));
    EXPECT_EQ(expert->gate_up.data, Stack({&gate, &up}));
    EXPECT_THAT(expert->down.shape, ElementsAre(kHidden, kMoeInter));
    EXPECT_EQ(expert->down.data, Values(x + "down_proj.weight"));
  }
}

// transformers 5 saves each layer's experts as two 3-D tensors; expert e is
// slice e of each.
void ExpectFusedSlices(const ModelConfig& cfg, const Checkpoint& ckpt,
                       const std::vector<float>& gate_up, const std::vector<float>& down,
                       int64_t layer) {
  const int64_t gu = 2 * cfg.moe_intermediate_size * cfg.hidden_size;
  const int64_t dn = cfg.hidden_size * cfg.moe_intermediate_size;
  for (int64_t e = 0; e < cfg.num_experts; ++e) {
    SCOPED_TRACE(absl::StrCat("layer ", layer, " expert ", e));
    auto expert = LoadExpert(cfg, ckpt, layer, e);
    ASSERT_TRUE(expert.ok()) << expert.status();
    EXPECT_THAT(expert->gate_up.shape, ElementsAre(2 * cfg.moe_intermediate_size, cfg.hidden_size));
    EXPECT_THAT(expert->down.shape, ElementsAre(cfg.hidden_size, cfg.moe_intermediate_size));
    EXPECT_EQ(expert->gate_up.data, Slice(gate_up, e * gu, gu));
    EXPECT_EQ(expert->down.data, Slice(down, e * dn, dn));
  }
}

TEST_F(WeightsTest, LoadExpertFromFusedTransformers5Tensors) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config(), ExpertLayout::kFused));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  ASSERT_FALSE(ckpt_->Has("model.layers.0.mlp.experts.0.gate_proj.weight"));
  LoadOk();  // the dense part does not care how experts are stored
  ExpectFusedSlices(cfg_, *ckpt_, Values("model.layers.0.mlp.experts.gate_up_proj"),
                    Values("model.layers.0.mlp.experts.down_proj"), 0);
}

TEST_F(WeightsTest, LoadExpertFromFusedTensorsOfMixtral) {
  // transformers 5 renames Mixtral's block_sparse_moe to mlp in fused checkpoints.
  ASSERT_NO_FATAL_FAILURE(MakeModel(MixtralConfig(), ExpertLayout::kFused));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen(/*num_shards=*/2));
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".mlp.experts.");
    ExpectFusedSlices(cfg_, *ckpt_, Values(p + "gate_up_proj"), Values(p + "down_proj"), l);
  }
}

// ---------------------------------------------------------------------------
// Errors

TEST_F(WeightsTest, MissingTensorNamesTensorAndDirectory) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config()));
  Remove("model.layers.1.self_attn.k_proj.weight");
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  auto w = LoadDenseWeights(cfg_, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(w.status()), HasSubstr("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_THAT(Message(w.status()), HasSubstr(dir_));
}

TEST_F(WeightsTest, MissingTensorOfShardedCheckpoint) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(DeepseekV3Config()));
  Remove("model.layers.1.self_attn.kv_a_layernorm.weight");
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen(/*num_shards=*/3));
  auto w = LoadDenseWeights(cfg_, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(w.status()), HasSubstr("model.layers.1.self_attn.kv_a_layernorm.weight"));
  EXPECT_THAT(Message(w.status()), HasSubstr(dir_));
}

TEST_F(WeightsTest, WrongShapeNamesTensorFileAndBothShapes) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config()));
  Add("model.layers.1.self_attn.k_proj.weight", {kKvHeads * kHeadDim, kHidden + 1});
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  auto w = LoadDenseWeights(cfg_, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message = Message(w.status());
  EXPECT_THAT(message, HasSubstr("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_THAT(message, HasSubstr(dir_ + "/model.safetensors"));
  EXPECT_THAT(message, HasSubstr("[8, 16]"));  // expected
  EXPECT_THAT(message, HasSubstr("[8, 17]"));  // in the file
}

// A config.json without num_key_value_heads means as many as attention heads
// (transformers' default); a checkpoint with fewer fails naming the field.
TEST_F(WeightsTest, MissingKvHeadsInConfigNamesTheField) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  Json j = Qwen3Config();
  j.erase("num_key_value_heads");
  std::ofstream(dir_ + "/config.json") << j.dump(2);
  auto cfg = LoadModelConfig(dir_);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->num_kv_heads, kHeads);
  auto w = LoadDenseWeights(*cfg, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(w.status()), HasSubstr("k_proj.weight"));
  EXPECT_THAT(Message(w.status()), HasSubstr("num_key_value_heads (4) x head_dim"));
  EXPECT_THAT(Message(w.status()), HasSubstr("num_attention_heads (4) when absent"));
}

TEST_F(WeightsTest, WrongShapeOfMlaTensor) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(DeepseekV3Config()));
  // kv_b_proj sized for v_head_dim = qk_nope_head_dim (a common mix-up).
  Add("model.layers.0.self_attn.kv_b_proj.weight", {kHeads * (4 + 4), 8});
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  auto w = LoadDenseWeights(cfg_, *ckpt_);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(Message(w.status()), HasSubstr("model.layers.0.self_attn.kv_b_proj.weight"));
  EXPECT_THAT(Message(w.status()), HasSubstr("[28, 8]"));
  EXPECT_THAT(Message(w.status()), HasSubstr("[32, 8]"));
}

TEST_F(WeightsTest, WrongShapeOfFusedExpertTensor) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config(), ExpertLayout::kFused));
  // One expert short of the config.
  Add("model.layers.0.mlp.experts.gate_up_proj", {kExperts - 1, 2 * kMoeInter, kHidden});
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  auto expert = LoadExpert(cfg_, *ckpt_, 0, 1);
  ASSERT_FALSE(expert.ok());
  EXPECT_EQ(expert.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(expert.status()), HasSubstr("model.layers.0.mlp.experts.gate_up_proj"));
  EXPECT_THAT(Message(expert.status()), HasSubstr("[4, 16, 16]"));  // expected
  EXPECT_THAT(Message(expert.status()), HasSubstr("[3, 16, 16]"));  // in the file
  // down_proj stored transposed per expert: [E, I, H] instead of [E, H, I].
  Add("model.layers.0.mlp.experts.gate_up_proj", {kExperts, 2 * kMoeInter, kHidden});
  Add("model.layers.0.mlp.experts.down_proj", {kExperts, kMoeInter, kHidden});
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  expert = LoadExpert(cfg_, *ckpt_, 0, 1);
  ASSERT_FALSE(expert.ok());
  EXPECT_EQ(expert.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(expert.status()), HasSubstr("model.layers.0.mlp.experts.down_proj"));
  EXPECT_THAT(Message(expert.status()), HasSubstr("[4, 16, 8]"));  // expected
  EXPECT_THAT(Message(expert.status()), HasSubstr("[4, 8, 16]"));  // in the file
}

TEST_F(WeightsTest, MissingExpertNamesTensorAndDirectory) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config()));
  for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
    Remove(absl::StrCat("model.layers.0.mlp.experts.3.", proj, ".weight"));
  }
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  auto expert = LoadExpert(cfg_, *ckpt_, 0, 3);
  ASSERT_FALSE(expert.ok());
  EXPECT_EQ(expert.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(expert.status()), HasSubstr("model.layers.0.mlp.experts.3.gate_proj.weight"));
  EXPECT_THAT(Message(expert.status()), HasSubstr(dir_));
  EXPECT_TRUE(LoadExpert(cfg_, *ckpt_, 0, 2).ok());
}

TEST_F(WeightsTest, MissingUpProjOfExpert) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(MixtralConfig()));
  Remove("model.layers.1.block_sparse_moe.experts.2.w3.weight");
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  auto expert = LoadExpert(cfg_, *ckpt_, 1, 2);
  ASSERT_FALSE(expert.ok());
  EXPECT_EQ(expert.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(expert.status()),
              HasSubstr("model.layers.1.block_sparse_moe.experts.2.w3.weight"));
  EXPECT_THAT(Message(expert.status()), HasSubstr(dir_));
}

TEST_F(WeightsTest, LoadExpertRejectsOutOfRangeLayerAndExpert) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Param2Config()));
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  for (int64_t layer : {int64_t{-1}, kLayers, int64_t{1000}}) {
    auto expert = LoadExpert(cfg_, *ckpt_, layer, 0);
    ASSERT_FALSE(expert.ok()) << layer;
    EXPECT_EQ(expert.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(expert.status()), HasSubstr(absl::StrCat("layer ", layer)));
  }
  for (int64_t e : {int64_t{-1}, kExperts, int64_t{1} << 40}) {
    auto expert = LoadExpert(cfg_, *ckpt_, 1, e);
    ASSERT_FALSE(expert.ok()) << e;
    EXPECT_EQ(expert.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(expert.status()), HasSubstr(absl::StrCat("expert ", e)));
    EXPECT_THAT(Message(expert.status()), HasSubstr("[0, 4)"));
  }
  EXPECT_TRUE(LoadExpert(cfg_, *ckpt_, 1, kExperts - 1).ok());
}

TEST_F(WeightsTest, LoadExpertRejectsDenseLayer) {
  ASSERT_NO_FATAL_FAILURE(MakeModel(Qwen3Config()));  // layer 1 is in mlp_only_layers
  ASSERT_NO_FATAL_FAILURE(WriteAndOpen());
  auto expert = LoadExpert(cfg_, *ckpt_, 1, 0);
  ASSERT_FALSE(expert.ok());
  EXPECT_EQ(expert.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(expert.status()), HasSubstr("layer 1 is not an MoE layer"));
}

// ---------------------------------------------------------------------------
// Dummy weights

std::vector<std::pair<std::string, Json>> AllConfigs() {
  return {{"qwen3_moe", Qwen3Config()},        {"qwen2_moe", Qwen2Config()},
          {"mixtral", MixtralConfig()},        {"param2moe", Param2Config()},
          {"deepseek_v3", DeepseekV3Config()}, {"deepseek_v2", DeepseekV2NoQLoraConfig()}};
}

TEST(DummyWeightsTest, ShapesMatchConfig) {
  for (const auto& [name, json] : AllConfigs()) {
    SCOPED_TRACE(name);
    const ModelConfig cfg = Parse(json);
    ExpectLayoutMatchesConfig(cfg, DummyDenseWeights(cfg, 7));
    for (int64_t l = 0; l < cfg.num_layers; ++l) {
      const MlpWeights e = DummyExpert(cfg, l, cfg.num_experts - 1, 7);
      ExpectShape(e.gate_up, {2 * cfg.moe_intermediate_size, cfg.hidden_size}, "expert gate_up");
      ExpectShape(e.down, {cfg.hidden_size, cfg.moe_intermediate_size}, "expert down");
    }
  }
}

TEST(DummyWeightsTest, FiniteAndScaled) {
  const ModelConfig cfg = Parse(DeepseekV3Config());
  const DenseWeights w = DummyDenseWeights(cfg, 3);
  for (const auto& [name, t] : AllTensors(w)) {
    for (float v : t->data) ASSERT_TRUE(std::isfinite(v)) << name;
  }
  // Norm weights sit near 1.
  for (float v : w.layers[1].input_norm.data) EXPECT_NEAR(v, 1.0f, 0.5f);
}

TEST(DummyWeightsTest, DeterministicForSeed) {
  for (const auto& [name, json] : AllConfigs()) {
    SCOPED_TRACE(name);
    const ModelConfig cfg = Parse(json);
    const DenseWeights a = DummyDenseWeights(cfg, 42), b = DummyDenseWeights(cfg, 42);
    const auto ta = AllTensors(a), tb = AllTensors(b);
    ASSERT_EQ(ta.size(), tb.size());
    for (size_t i = 0; i < ta.size(); ++i) {
      EXPECT_EQ(ta[i].second->data, tb[i].second->data) << ta[i].first;
    }
    const MlpWeights ea = DummyExpert(cfg, 1, 2, 42), eb = DummyExpert(cfg, 1, 2, 42);
    EXPECT_EQ(ea.gate_up.data, eb.gate_up.data);
    EXPECT_EQ(ea.down.data, eb.down.data);
  }
}

TEST(DummyWeightsTest, DifferAcrossSeeds) {
  for (const auto& [name, json] : AllConfigs()) {
    SCOPED_TRACE(name);
    const ModelConfig cfg = Parse(json);
    const DenseWeights a = DummyDenseWeights(cfg, 0), b = DummyDenseWeights(cfg, 1);
    const auto ta = AllTensors(a), tb = AllTensors(b);
    ASSERT_EQ(ta.size(), tb.size());
    for (size_t i = 0; i < ta.size(); ++i) {
      if (ta[i].second->empty()) continue;
      EXPECT_NE(ta[i].second->data, tb[i].second->data) << ta[i].first;
    }
    for (uint64_t other : {uint64_t{1}, uint64_t{2}, uint64_t{1} << 63}) {
      EXPECT_NE(DummyExpert(cfg, 1, 2, 0).gate_up.data, DummyExpert(cfg, 1, 2, other).gate_up.data)
          << "seed " << other;
    }
  }
}

// A tensor large enough to be filled in parallel chunks: the same values
// whatever the thread count, and no chunk repeating another.
TEST(DummyWeightsTest, LargeTensorsIndependentOfThreadCount) {
  Json json = Qwen3Config();
  json["vocab_size"] = 40000;  // embed: 640000 values
  const ModelConfig cfg = Parse(json);
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const DenseWeights one = DummyDenseWeights(cfg, 11);
  omp_set_num_threads(4);
  const DenseWeights four = DummyDenseWeights(cfg, 11);
  omp_set_num_threads(threads);
  EXPECT_EQ(one.embed.data, four.embed.data);
  EXPECT_EQ(one.lm_head.data, four.lm_head.data);
#endif
  const DenseWeights w = DummyDenseWeights(cfg, 11);
  ASSERT_EQ(w.embed.numel(), 40000 * kHidden);
  constexpr int64_t kSpan = 1 << 16;
  for (int64_t c = 1; c * kSpan + kSpan <= w.embed.numel(); ++c) {
    EXPECT_NE(Slice(w.embed.data, 0, kSpan), Slice(w.embed.data, c * kSpan, kSpan)) << c;
  }
  double sum = 0, sum_sq = 0;
  for (float v : w.embed.data) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
  }
  const double n = static_cast<double>(w.embed.numel());
  EXPECT_NEAR(sum / n, 0.0, 0.01);  // embed ~ N(0, 1)
  EXPECT_NEAR(sum_sq / n, 1.0, 0.01);
}

TEST(DummyWeightsTest, TiedLmHeadIsEmbedding) {
  Json json = Qwen3Config();
  json["tie_word_embeddings"] = true;
  const ModelConfig cfg = Parse(json);
  const DenseWeights w = DummyDenseWeights(cfg, 5);
  EXPECT_EQ(w.lm_head.data, w.embed.data);
}

TEST(DummyWeightsTest, ExpertsAndLayersDiffer) {
  const ModelConfig cfg = Parse(DeepseekV2NoQLoraConfig());
  const MlpWeights base = DummyExpert(cfg, 0, 0, 9);
  EXPECT_NE(DummyExpert(cfg, 0, 1, 9).gate_up.data, base.gate_up.data);
  EXPECT_NE(DummyExpert(cfg, 1, 0, 9).gate_up.data, base.gate_up.data);
}

// Fraction of i where b[i] == a[i + shift] (b is a's stream moved by `shift`).
double ShiftedMatch(const std::vector<float>& a, const std::vector<float>& b, size_t shift) {
  size_t same = 0, n = 0;
  for (size_t i = 0; i + shift < a.size() && i < b.size(); ++i, ++n) same += a[i + shift] == b[i];
  return n == 0 ? 0.0 : static_cast<double>(same) / static_cast<double>(n);
}

// Expert e + 1 must not be expert e's values moved along by a few elements.
// Disabled: fails today for seeds 0 (the default dummy_seed) and 1, see
// DummyFiller::Normal in weights.cc (per-salt RNG streams overlap).
TEST(DummyWeightsTest, ExpertsAreNotShiftedCopiesOfEachOther) {
  const ModelConfig cfg = Parse(Qwen3Config());
  for (uint64_t seed : {uint64_t{0}, uint64_t{1}, uint64_t{42}}) {
    const MlpWeights e0 = DummyExpert(cfg, 0, 0, seed), e1 = DummyExpert(cfg, 0, 1, seed);
    for (size_t shift = 0; shift < 8; ++shift) {
      EXPECT_LT(ShiftedMatch(e0.gate_up.data, e1.gate_up.data, shift), 0.5)
          << "seed " << seed << ": expert 1's gate_up is expert 0's shifted by " << shift;
    }
    const DenseWeights w = DummyDenseWeights(cfg, seed);
    for (size_t shift = 0; shift < 8; ++shift) {
      EXPECT_LT(ShiftedMatch(w.layers[0].attn.qkv.data, w.layers[0].attn.o_proj.data, shift), 0.5)
          << "seed " << seed << ": o_proj is qkv shifted by " << shift;
    }
  }
}

}  // namespace
}  // namespace sy::model
