#include "model/config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace sy::model {
namespace {

using json = nlohmann::json;

// Typed, validated access to config.json fields. Every error names the key
// and the file.
class Fields {
 public:
  Fields(const json& root, std::string_view source) : root_(root), source_(source) {}

  bool Has(std::string_view key) const {
    auto it = root_.find(key);
    return it != root_.end() && !it->is_null();
  }

  absl::Status Error(std::string_view key, std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source_), ": config field '",
                                                   std::string(key), "' ", std::string(what)));
  }

  absl::StatusOr<int64_t> Int(std::string_view key, std::optional<int64_t> fallback,
                              int64_t min_value = 0) const {
    return IntIn(root_, key, key, fallback, min_value);
  }

  absl::StatusOr<int64_t> IntIn(const json& obj, std::string_view key, std::string_view label,
                                std::optional<int64_t> fallback, int64_t min_value) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      if (fallback.has_value()) return *fallback;
      return Error(label, "is required");
    }
    if (!it->is_number_integer()) return Error(label, "must be an integer");
    const int64_t v = it->get<int64_t>();
    if (v < min_value)
      return Error(label, absl::StrCat("must be >= ", min_value, " (got ", v, ")"));
    return v;
  }

  absl::StatusOr<double> Num(std::string_view key, std::optional<double> fallback) const {
    return NumIn(root_, key, key, fallback);
  }

  absl::StatusOr<double> NumIn(const json& obj, std::string_view key, std::string_view label,
                               std::optional<double> fallback) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      if (fallback.has_value()) return *fallback;
      return Error(label, "is required");
    }
    if (!it->is_number()) return Error(label, "must be a number");
    const double v = it->get<double>();
    if (!std::isfinite(v)) return Error(label, "must be finite");
    return v;
  }

  absl::StatusOr<bool> Bool(std::string_view key, bool fallback) const {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) return Error(key, "must be true or false");
    return it->get<bool>();
  }

  absl::StatusOr<std::string> Str(std::string_view key, std::optional<std::string> fallback) const {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) {
      if (fallback.has_value()) return *fallback;
      return Error(key, "is required");
    }
    if (!it->is_string()) return Error(key, "must be a string");
    return it->get<std::string>();
  }

  absl::StatusOr<std::vector<int64_t>> IntList(std::string_view key) const {
    std::vector<int64_t> out;
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) return out;
    if (it->is_number_integer()) {
      out.push_back(it->get<int64_t>());
      return out;
    }
    if (!it->is_array()) return Error(key, "must be an integer or a list of integers");
    for (const auto& v : *it) {
      if (!v.is_number_integer()) return Error(key, "must contain only integers");
      out.push_back(v.get<int64_t>());
    }
    return out;
  }

  const json& root() const { return root_; }
  std::string_view source() const { return source_; }

 private:
  const json& root_;
  std::string_view source_;
};

struct ArchInfo {
  const char* architecture;
  const char* model_type;
  Family family;
};

constexpr ArchInfo kArchitectures[] = {
    {"DeepseekV3ForCausalLM", "deepseek_v3", Family::kDeepseekV3},
    {"DeepseekV2ForCausalLM", "deepseek_v2", Family::kDeepseekV2},
    {"Qwen3MoeForCausalLM", "qwen3_moe", Family::kQwen3Moe},
    {"Qwen2MoeForCausalLM", "qwen2_moe", Family::kQwen2Moe},
    {"Glm4MoeForCausalLM", "glm4_moe", Family::kGlm4Moe},
    {"MixtralForCausalLM", "mixtral", Family::kMixtral},
    {"Param2MoEForCausalLM", "param2moe", Family::kParam2Moe},
};

std::string SupportedList() {
  std::vector<std::string> names;
  for (const auto& a : kArchitectures) names.push_back(a.architecture);
  return absl::StrJoin(names, ", ");
}

absl::Status ResolveArchitecture(const Fields& f, ModelConfig* cfg) {
  const json& root = f.root();
  auto arch_it = root.find("architectures");
  if (arch_it != root.end() && !arch_it->is_null()) {
    if (!arch_it->is_array() || arch_it->empty() || !(*arch_it)[0].is_string()) {
      return f.Error("architectures", "must be a non-empty list of strings");
    }
    const std::string arch = (*arch_it)[0].get<std::string>();
    for (const auto& a : kArchitectures) {
      if (arch == a.architecture) {
        cfg->architecture = a.architecture;
        cfg->family = a.family;
        return absl::OkStatus();
      }
    }
    return f.Error("architectures", absl::StrCat("names unsupported architecture '", arch,
                                                 "'; supported: ", SupportedList()));
  }
  SY_ASSIGN_OR_RETURN(std::string model_type, f.Str("model_type", std::nullopt));
  for (const auto& a : kArchitectures) {
    if (model_type == a.model_type) {
      cfg->architecture = a.architecture;
      cfg->family = a.family;
      return absl::OkStatus();
    }
  }
  return f.Error("model_type", absl::StrCat("names unsupported model type '", model_type,
                                            "'; supported: ", SupportedList()));
}

// Reads rope settings from `rope_parameters` (transformers 5) or from
// `rope_theta` + `rope_scaling` (older configs).
absl::Status ParseRope(const Fields& f, double default_theta, double partial_rotary_factor,
                       int64_t rope_head_dim, ModelConfig* cfg) {
  RopeConfig& rope = cfg->rope;
  const json& root = f.root();
  const json* params = nullptr;
  std::string prefix;
  auto rp = root.find("rope_parameters");
  if (rp != root.end() && !rp->is_null()) {
    if (!rp->is_object()) return f.Error("rope_parameters", "must be an object");
    params = &*rp;
    prefix = "rope_parameters.";
    SY_ASSIGN_OR_RETURN(rope.theta,
                        f.NumIn(*rp, "rope_theta", "rope_parameters.rope_theta",
                                f.Has("rope_theta") ? std::nullopt : std::optional(default_theta)));
    if (f.Has("rope_theta") && !rp->contains("rope_theta")) {
      SY_ASSIGN_OR_RETURN(rope.theta, f.Num("rope_theta", default_theta));
    }
  } else {
    SY_ASSIGN_OR_RETURN(rope.theta, f.Num("rope_theta", default_theta));
    auto rs = root.find("rope_scaling");
    if (rs != root.end() && !rs->is_null()) {
      if (!rs->is_object()) return f.Error("rope_scaling", "must be an object or null");
      params = &*rs;
      prefix = "rope_scaling.";
    }
  }
  if (rope.theta <= 0) return f.Error(prefix + "rope_theta", "must be positive");
  if (params != nullptr) {
    std::string type = "default";
    for (const char* key : {"rope_type", "type"}) {
      auto it = params->find(key);
      if (it != params->end() && !it->is_null()) {
        if (!it->is_string()) return f.Error(prefix + key, "must be a string");
        type = it->get<std::string>();
        break;
      }
    }
    if (type != "default" && type != "linear" && type != "yarn") {
      return f.Error(prefix + "rope_type",
                     absl::StrCat("'", type, "' is not supported (default, linear, yarn)"));
    }
    rope.type = type;
    auto pr = params->find("partial_rotary_factor");
    if (pr != params->end() && !pr->is_null()) {
      SY_ASSIGN_OR_RETURN(partial_rotary_factor,
                          f.NumIn(*params, "partial_rotary_factor",
                                  prefix + "partial_rotary_factor", std::nullopt));
    }
    if (type == "linear") {
      SY_ASSIGN_OR_RETURN(rope.factor, f.NumIn(*params, "factor", prefix + "factor", std::nullopt));
      if (rope.factor <= 0) return f.Error(prefix + "factor", "must be positive");
    }
    if (type == "yarn") {
      SY_ASSIGN_OR_RETURN(
          rope.original_max_position_embeddings,
          f.IntIn(*params, "original_max_position_embeddings",
                  prefix + "original_max_position_embeddings", cfg->max_position_embeddings, 1));
      // transformers 5 uses an explicit factor; without one, the ratio of the
      // context lengths.
      const double implied = static_cast<double>(cfg->max_position_embeddings) /
                             static_cast<double>(rope.original_max_position_embeddings);
      SY_ASSIGN_OR_RETURN(rope.factor, f.NumIn(*params, "factor", prefix + "factor", implied));
      if (rope.factor <= 0) return f.Error(prefix + "factor", "must be positive");
      SY_ASSIGN_OR_RETURN(rope.beta_fast,
                          f.NumIn(*params, "beta_fast", prefix + "beta_fast", 32.0));
      SY_ASSIGN_OR_RETURN(rope.beta_slow, f.NumIn(*params, "beta_slow", prefix + "beta_slow", 1.0));
      SY_ASSIGN_OR_RETURN(rope.mscale, f.NumIn(*params, "mscale", prefix + "mscale", 0.0));
      SY_ASSIGN_OR_RETURN(rope.mscale_all_dim,
                          f.NumIn(*params, "mscale_all_dim", prefix + "mscale_all_dim", 0.0));
      SY_ASSIGN_OR_RETURN(rope.attention_factor,
                          f.NumIn(*params, "attention_factor", prefix + "attention_factor", 0.0));
      auto tr = params->find("truncate");
      if (tr != params->end() && !tr->is_null()) {
        if (!tr->is_boolean()) return f.Error(prefix + "truncate", "must be true or false");
        rope.truncate = tr->get<bool>();
      }
    }
  }
  if (partial_rotary_factor <= 0 || partial_rotary_factor > 1) {
    return f.Error("partial_rotary_factor", "must be in (0, 1]");
  }
  rope.rotary_dim =
      static_cast<int64_t>(static_cast<double>(rope_head_dim) * partial_rotary_factor);
  if (rope.rotary_dim <= 0 || rope.rotary_dim % 2 != 0) {
    return f.Error("partial_rotary_factor",
                   absl::StrCat("gives an invalid rotary dimension ", rope.rotary_dim,
                                " for head size ", rope_head_dim));
  }
  return absl::OkStatus();
}

// Upper bounds well past any released model, so a corrupt config fails
// naming the field instead of overflowing a product or asking for absurd
// allocations later.
constexpr int64_t kMaxDim = 4096;               // per-head sizes
constexpr int64_t kMaxSize = int64_t{1} << 20;  // MLP widths
constexpr int64_t kMaxShared = 256;             // shared experts

absl::Status AtMost(const Fields& f, std::string_view key, int64_t value, int64_t max) {
  if (value <= max) return absl::OkStatus();
  return f.Error(key, absl::StrCat("(", value, ") exceeds the supported maximum of ", max));
}

double YarnMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

absl::Status ParseAttention(const Fields& f, ModelConfig* cfg) {
  SY_ASSIGN_OR_RETURN(cfg->num_heads, f.Int("num_attention_heads", std::nullopt, 1));
  SY_ASSIGN_OR_RETURN(cfg->num_kv_heads, f.Int("num_key_value_heads", cfg->num_heads, 1));
  if (cfg->num_heads % cfg->num_kv_heads != 0) {
    return f.Error("num_key_value_heads",
                   absl::StrCat("(", cfg->num_kv_heads, ") must divide num_attention_heads (",
                                cfg->num_heads, ")"));
  }
  const Family fam = cfg->family;
  if (fam == Family::kDeepseekV2 || fam == Family::kDeepseekV3) {
    cfg->attention = AttentionKind::kMla;
    SY_ASSIGN_OR_RETURN(cfg->q_lora_rank, f.Int("q_lora_rank", 0));
    SY_ASSIGN_OR_RETURN(cfg->kv_lora_rank, f.Int("kv_lora_rank", std::nullopt, 1));
    SY_ASSIGN_OR_RETURN(cfg->qk_nope_head_dim, f.Int("qk_nope_head_dim", std::nullopt, 1));
    SY_ASSIGN_OR_RETURN(cfg->qk_rope_head_dim, f.Int("qk_rope_head_dim", std::nullopt, 2));
    SY_ASSIGN_OR_RETURN(cfg->v_head_dim, f.Int("v_head_dim", std::nullopt, 1));
    // Bounded before they are added up (and multiplied by heads later).
    SY_RETURN_IF_ERROR(AtMost(f, "qk_nope_head_dim", cfg->qk_nope_head_dim, kMaxDim));
    SY_RETURN_IF_ERROR(AtMost(f, "qk_rope_head_dim", cfg->qk_rope_head_dim, kMaxDim));
    SY_RETURN_IF_ERROR(AtMost(f, "v_head_dim", cfg->v_head_dim, kMaxDim));
    SY_ASSIGN_OR_RETURN(bool attention_bias, f.Bool("attention_bias", false));
    if (attention_bias) {
      return f.Error("attention_bias", "= true is not supported for MLA checkpoints");
    }
    cfg->head_dim = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
    SY_ASSIGN_OR_RETURN(bool interleave, f.Bool("rope_interleave", true));
    // DeepSeek-V2 in transformers always applies rope as complex pairs.
    cfg->rope.interleaved = fam == Family::kDeepseekV2 ? true : interleave;
    SY_RETURN_IF_ERROR(ParseRope(f, 10000.0, 1.0, cfg->qk_rope_head_dim, cfg));
    cfg->softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg->head_dim)));
    if (fam == Family::kDeepseekV3 && cfg->rope.type != "default" && cfg->rope.mscale_all_dim > 0) {
      const double m = YarnMscale(cfg->rope.factor, cfg->rope.mscale_all_dim);
      cfg->softmax_scale = static_cast<float>(cfg->softmax_scale * m * m);
    }
    return absl::OkStatus();
  }

  cfg->attention = AttentionKind::kGqa;
  SY_ASSIGN_OR_RETURN(cfg->head_dim, f.Int("head_dim", cfg->hidden_size / cfg->num_heads, 1));
  if (!f.Has("head_dim") && cfg->hidden_size % cfg->num_heads != 0) {
    return f.Error("num_attention_heads", "must divide hidden_size when head_dim is absent");
  }
  double partial = 1.0;
  switch (fam) {
    case Family::kQwen3Moe: {
      cfg->qk_norm = true;
      SY_ASSIGN_OR_RETURN(bool bias, f.Bool("attention_bias", false));
      cfg->qkv_bias = bias;
      cfg->o_bias = bias;
      break;
    }
    case Family::kQwen2Moe: {
      SY_ASSIGN_OR_RETURN(cfg->qkv_bias, f.Bool("qkv_bias", true));
      break;
    }
    case Family::kGlm4Moe: {
      SY_ASSIGN_OR_RETURN(cfg->qkv_bias, f.Bool("attention_bias", false));
      SY_ASSIGN_OR_RETURN(cfg->qk_norm, f.Bool("use_qk_norm", false));
      SY_ASSIGN_OR_RETURN(partial, f.Num("partial_rotary_factor", 0.5));
      break;
    }
    case Family::kParam2Moe: {
      SY_ASSIGN_OR_RETURN(cfg->qkv_bias, f.Bool("use_qkv_bias", false));
      SY_ASSIGN_OR_RETURN(cfg->o_bias, f.Bool("use_bias", false));
      SY_ASSIGN_OR_RETURN(cfg->qk_norm, f.Bool("use_qk_norm", false));
      SY_ASSIGN_OR_RETURN(partial, f.Num("partial_rotary_factor", 1.0));
      break;
    }
    case Family::kMixtral:
    default:
      break;
  }
  if (fam == Family::kQwen3Moe || fam == Family::kQwen2Moe) {
    SY_ASSIGN_OR_RETURN(bool sliding, f.Bool("use_sliding_window", false));
    if (sliding) return f.Error("use_sliding_window", "= true is not supported");
  }
  if (fam == Family::kMixtral && f.Has("sliding_window")) {
    SY_ASSIGN_OR_RETURN(int64_t window, f.Int("sliding_window", 0));
    if (window < cfg->max_position_embeddings) {
      return f.Error("sliding_window", "shorter than max_position_embeddings is not supported");
    }
  }
  const double default_theta = fam == Family::kMixtral ? 1e6 : 10000.0;
  SY_RETURN_IF_ERROR(ParseRope(f, default_theta, partial, cfg->head_dim, cfg));
  cfg->rope.interleaved = false;
  cfg->softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg->head_dim)));
  return absl::OkStatus();
}

absl::Status ParseMoe(const Fields& f, ModelConfig* cfg) {
  const Family fam = cfg->family;
  const int64_t L = cfg->num_layers;
  cfg->layer_is_moe.assign(L, true);
  SY_ASSIGN_OR_RETURN(cfg->top_k, f.Int("num_experts_per_tok", std::nullopt, 1));
  switch (fam) {
    case Family::kDeepseekV2:
    case Family::kDeepseekV3:
    case Family::kGlm4Moe: {
      SY_ASSIGN_OR_RETURN(cfg->num_experts, f.Int("n_routed_experts", std::nullopt, 1));
      SY_ASSIGN_OR_RETURN(cfg->moe_intermediate_size,
                          f.Int("moe_intermediate_size", std::nullopt, 1));
      SY_ASSIGN_OR_RETURN(int64_t n_shared, f.Int("n_shared_experts", 0));
      // Bounded before the product.
      SY_RETURN_IF_ERROR(AtMost(f, "n_shared_experts", n_shared, kMaxShared));
      SY_RETURN_IF_ERROR(AtMost(f, "moe_intermediate_size", cfg->moe_intermediate_size, kMaxSize));
      cfg->shared_expert_intermediate_size = n_shared * cfg->moe_intermediate_size;
      SY_ASSIGN_OR_RETURN(cfg->n_group, f.Int("n_group", 1, 1));
      SY_ASSIGN_OR_RETURN(cfg->topk_group, f.Int("topk_group", 1, 1));
      SY_ASSIGN_OR_RETURN(double scale, f.Num("routed_scaling_factor", 1.0));
      cfg->routed_scaling_factor = static_cast<float>(scale);
      SY_ASSIGN_OR_RETURN(int64_t first_dense, f.Int("first_k_dense_replace", 0));
      SY_ASSIGN_OR_RETURN(int64_t freq, f.Int("moe_layer_freq", 1, 1));
      for (int64_t i = 0; i < L; ++i) cfg->layer_is_moe[i] = i >= first_dense && i % freq == 0;
      if (fam == Family::kDeepseekV2) {
        cfg->score_function = kernels::ScoreFunction::kSoftmax;
        SY_ASSIGN_OR_RETURN(std::string method, f.Str("topk_method", "greedy"));
        if (method == "greedy") {
          cfg->topk_method = kernels::TopkMethod::kGreedy;
        } else if (method == "group_limited_greedy") {
          cfg->topk_method = kernels::TopkMethod::kGroupLimitedGreedy;
        } else {
          return f.Error("topk_method", absl::StrCat("'", method,
                                                     "' is not supported for DeepseekV2 (greedy, "
                                                     "group_limited_greedy)"));
        }
        // transformers' DeepSeek-V2 does not renormalise top-k weights.
        cfg->norm_topk_prob = false;
      } else {
        cfg->score_function = kernels::ScoreFunction::kSigmoid;
        cfg->topk_method = kernels::TopkMethod::kNoAuxTc;
        cfg->has_correction_bias = true;
        SY_ASSIGN_OR_RETURN(cfg->norm_topk_prob, f.Bool("norm_topk_prob", true));
      }
      break;
    }
    case Family::kQwen3Moe:
    case Family::kQwen2Moe: {
      if (f.Has("num_experts")) {
        SY_ASSIGN_OR_RETURN(cfg->num_experts, f.Int("num_experts", std::nullopt, 1));
      } else {
        SY_ASSIGN_OR_RETURN(cfg->num_experts, f.Int("num_local_experts", std::nullopt, 1));
      }
      SY_ASSIGN_OR_RETURN(cfg->moe_intermediate_size,
                          f.Int("moe_intermediate_size", std::nullopt, 1));
      SY_ASSIGN_OR_RETURN(cfg->norm_topk_prob, f.Bool("norm_topk_prob", false));
      SY_ASSIGN_OR_RETURN(int64_t step, f.Int("decoder_sparse_step", 1, 1));
      SY_ASSIGN_OR_RETURN(std::vector<int64_t> mlp_only, f.IntList("mlp_only_layers"));
      for (int64_t i = 0; i < L; ++i) {
        bool only_mlp = false;
        for (int64_t m : mlp_only) only_mlp |= (m == i);
        cfg->layer_is_moe[i] = !only_mlp && (i + 1) % step == 0;
      }
      if (fam == Family::kQwen2Moe) {
        SY_ASSIGN_OR_RETURN(cfg->shared_expert_intermediate_size,
                            f.Int("shared_expert_intermediate_size", 0));
        cfg->shared_expert_gate = cfg->shared_expert_intermediate_size > 0;
      }
      break;
    }
    case Family::kMixtral: {
      SY_ASSIGN_OR_RETURN(cfg->num_experts, f.Int("num_local_experts", std::nullopt, 1));
      cfg->moe_intermediate_size = cfg->intermediate_size;
      cfg->norm_topk_prob = true;
      break;
    }
    case Family::kParam2Moe: {
      // Param2MoE (Bailing-MoE-V2 layout): sigmoid scores, expert bias for
      // selection, groups ranked by their top-2 sum, dropped groups masked
      // with -inf, weights renormalised whenever top_k > 1.
      SY_ASSIGN_OR_RETURN(cfg->num_experts, f.Int("num_experts", std::nullopt, 1));
      SY_ASSIGN_OR_RETURN(cfg->moe_intermediate_size,
                          f.Int("moe_intermediate_size", std::nullopt, 1));
      SY_ASSIGN_OR_RETURN(int64_t n_shared, f.Int("num_shared_experts", 1));
      SY_RETURN_IF_ERROR(AtMost(f, "num_shared_experts", n_shared, kMaxShared));
      SY_RETURN_IF_ERROR(AtMost(f, "moe_intermediate_size", cfg->moe_intermediate_size, kMaxSize));
      SY_ASSIGN_OR_RETURN(
          cfg->shared_expert_intermediate_size,
          f.Int("moe_shared_expert_intermediate_size", n_shared * cfg->moe_intermediate_size));
      if (n_shared == 0) cfg->shared_expert_intermediate_size = 0;
      SY_ASSIGN_OR_RETURN(std::string score, f.Str("score_function", "sigmoid"));
      if (score != "sigmoid") {
        return f.Error("score_function",
                       absl::StrCat("'", score, "' is not supported for Param2MoE (sigmoid)"));
      }
      cfg->score_function = kernels::ScoreFunction::kSigmoid;
      SY_ASSIGN_OR_RETURN(cfg->has_correction_bias, f.Bool("moe_router_enable_expert_bias", true));
      SY_ASSIGN_OR_RETURN(cfg->n_group, f.Int("n_group", 1, 1));
      SY_ASSIGN_OR_RETURN(cfg->topk_group, f.Int("topk_group", 1, 1));
      cfg->topk_method = kernels::TopkMethod::kNoAuxTc;
      cfg->dropped_group_value = -std::numeric_limits<float>::infinity();
      cfg->norm_topk_prob = cfg->top_k > 1;
      SY_ASSIGN_OR_RETURN(double scale, f.Num("routed_scaling_factor", 1.0));
      cfg->routed_scaling_factor = static_cast<float>(scale);
      SY_ASSIGN_OR_RETURN(int64_t first_dense, f.Int("first_k_dense_replace", 0));
      for (int64_t i = 0; i < L; ++i) cfg->layer_is_moe[i] = i >= first_dense;
      break;
    }
  }
  if (cfg->top_k > cfg->num_experts) {
    return f.Error(
        "num_experts_per_tok",
        absl::StrCat("(", cfg->top_k, ") exceeds the number of experts (", cfg->num_experts, ")"));
  }
  if (cfg->num_experts % cfg->n_group != 0) {
    return f.Error("n_group", absl::StrCat("(", cfg->n_group, ") must divide the expert count (",
                                           cfg->num_experts, ")"));
  }
  if (cfg->topk_group > cfg->n_group) {
    return f.Error("topk_group",
                   absl::StrCat("(", cfg->topk_group, ") exceeds n_group (", cfg->n_group, ")"));
  }
  if (cfg->topk_method == kernels::TopkMethod::kNoAuxTc && cfg->n_group > 1 &&
      cfg->num_experts / cfg->n_group < 2) {
    return f.Error("n_group", "leaves fewer than 2 experts per group");
  }
  if (cfg->top_k > cfg->topk_group * (cfg->num_experts / cfg->n_group)) {
    return f.Error("num_experts_per_tok", "exceeds the experts of the kept groups");
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view FamilyName(Family family) {
  for (const auto& a : kArchitectures) {
    if (a.family == family) return a.model_type;
  }
  return "unknown";
}

int64_t ModelConfig::num_moe_layers() const {
  int64_t n = 0;
  for (bool moe : layer_is_moe) n += moe ? 1 : 0;
  return n;
}

kernels::RouterParams ModelConfig::router_params() const {
  kernels::RouterParams p;
  p.num_experts = num_experts;
  p.top_k = top_k;
  p.score = score_function;
  p.method = topk_method;
  p.num_groups = n_group;
  p.topk_groups = topk_group;
  p.renormalize = norm_topk_prob;
  p.scaling = routed_scaling_factor;
  p.dropped_group_value = dropped_group_value;
  return p;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source), ": not valid JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": top level must be a JSON object"));
  }
  Fields f(root, source);
  ModelConfig cfg;
  cfg.source = std::string(source);
  SY_RETURN_IF_ERROR(ResolveArchitecture(f, &cfg));

  SY_ASSIGN_OR_RETURN(cfg.vocab_size, f.Int("vocab_size", std::nullopt, 1));
  SY_ASSIGN_OR_RETURN(cfg.hidden_size, f.Int("hidden_size", std::nullopt, 1));
  SY_ASSIGN_OR_RETURN(cfg.num_layers, f.Int("num_hidden_layers", std::nullopt, 1));
  // Checked at once: per-layer tables are sized from it below.
  SY_RETURN_IF_ERROR(AtMost(f, "num_hidden_layers", cfg.num_layers, 1024));
  SY_ASSIGN_OR_RETURN(cfg.max_position_embeddings,
                      f.Int("max_position_embeddings", std::nullopt, 1));
  SY_ASSIGN_OR_RETURN(cfg.intermediate_size, f.Int("intermediate_size", std::nullopt, 1));
  SY_ASSIGN_OR_RETURN(double eps, f.Num("rms_norm_eps", 1e-6));
  if (eps <= 0) return f.Error("rms_norm_eps", "must be positive");
  cfg.rms_norm_eps = static_cast<float>(eps);
  SY_ASSIGN_OR_RETURN(cfg.tie_word_embeddings, f.Bool("tie_word_embeddings", false));
  SY_ASSIGN_OR_RETURN(std::string act, f.Str("hidden_act", "silu"));
  if (act != "silu")
    return f.Error("hidden_act", absl::StrCat("'", act, "' is not supported (silu)"));
  SY_ASSIGN_OR_RETURN(std::vector<int64_t> eos, f.IntList("eos_token_id"));
  for (int64_t id : eos) {
    if (id < 0 || id >= cfg.vocab_size) return f.Error("eos_token_id", "is outside the vocabulary");
    cfg.eos_token_ids.push_back(static_cast<int32_t>(id));
  }
  SY_ASSIGN_OR_RETURN(int64_t bos, f.Int("bos_token_id", -1, -1));
  cfg.bos_token_id = static_cast<int32_t>(bos);

  SY_RETURN_IF_ERROR(ParseAttention(f, &cfg));
  SY_RETURN_IF_ERROR(ParseMoe(f, &cfg));
  const struct {
    const char* key;
    int64_t value;
    int64_t max;
  } limits[] = {
      {"vocab_size", cfg.vocab_size, int64_t{1} << 22},
      {"hidden_size", cfg.hidden_size, int64_t{1} << 16},
      {"max_position_embeddings", cfg.max_position_embeddings, int64_t{1} << 24},
      {"intermediate_size", cfg.intermediate_size, kMaxSize},
      {"num_attention_heads", cfg.num_heads, 1024},
      {"head_dim", cfg.head_dim, kMaxDim},
      {"moe_intermediate_size", cfg.moe_intermediate_size, kMaxSize},
      {"num_experts", cfg.num_experts, 4096},
      {"num_experts_per_tok", cfg.top_k, 256},
      {"kv_lora_rank", cfg.kv_lora_rank, 8192},
      {"q_lora_rank", cfg.q_lora_rank, 65536},
      {"shared expert size", cfg.shared_expert_intermediate_size, kMaxSize},
  };
  for (const auto& l : limits) SY_RETURN_IF_ERROR(AtMost(f, l.key, l.value, l.max));
  return cfg;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open model config"));
  std::stringstream buf;
  buf << in.rdbuf();
  return ParseModelConfig(buf.str(), path);
}

absl::StatusOr<RopeTables> ComputeRopeTables(const RopeConfig& rope,
                                             int64_t max_position_embeddings) {
  const int64_t dim = rope.rotary_dim;
  if (dim <= 0 || dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("rotary dimension ", dim, " must be even"));
  }
  RopeTables t;
  t.inv_freq.resize(dim / 2);
  // As transformers: exponent 2i/dim in fp32, base ** exponent, reciprocal.
  std::vector<float> pos_freq(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(dim);
    pos_freq[i] = static_cast<float>(std::pow(rope.theta, static_cast<double>(e)));
    t.inv_freq[i] = 1.0f / pos_freq[i];
  }
  if (rope.type == "default") return t;
  if (rope.type == "linear") {
    for (auto& f : t.inv_freq) f = static_cast<float>(f / rope.factor);
    return t;
  }
  if (rope.type != "yarn") {
    return absl::InvalidArgumentError(absl::StrCat("rope type '", rope.type, "' not supported"));
  }
  const double factor = rope.factor;
  double attention_factor = rope.attention_factor;
  if (attention_factor <= 0) {
    if (rope.mscale > 0 && rope.mscale_all_dim > 0) {
      attention_factor = YarnMscale(factor, rope.mscale) / YarnMscale(factor, rope.mscale_all_dim);
    } else {
      attention_factor = YarnMscale(factor, 1.0);
    }
  }
  const double orig_max = rope.original_max_position_embeddings > 0
                              ? static_cast<double>(rope.original_max_position_embeddings)
                              : static_cast<double>(max_position_embeddings);
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) * std::log(orig_max / (rotations * 2.0 * M_PI))) /
           (2.0 * std::log(rope.theta));
  };
  double low = correction_dim(rope.beta_fast);
  double high = correction_dim(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double extrapolation_factor = 1.0 - ramp;
    const double extrapolation = 1.0 / pos_freq[i];
    const double interpolation = 1.0 / (factor * pos_freq[i]);
    t.inv_freq[i] = static_cast<float>(interpolation * (1.0 - extrapolation_factor) +
                                       extrapolation * extrapolation_factor);
  }
  t.attention_scaling = static_cast<float>(attention_factor);
  return t;
}

}  // namespace sy::model
