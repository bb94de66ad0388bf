// Model configuration: the parts of a Hugging Face `config.json` the engine
// needs, normalised across model families.
//
// ParseModelConfig() accepts DeepseekV3ForCausalLM, DeepseekV2ForCausalLM,
// Qwen3MoeForCausalLM, Qwen2MoeForCausalLM, Glm4MoeForCausalLM,
// MixtralForCausalLM and Param2MoEForCausalLM configs (recognised by
// `architectures[0]`, or by `model_type` when `architectures` is absent), with
// both rope spellings: `rope_theta` + `rope_scaling` (older hub configs) and
// `rope_parameters` (transformers 5). An unsupported architecture, a missing
// required field or a value of the wrong type or range is InvalidArgument
// naming the field and the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"

namespace sy::model {

enum class Family {
  kDeepseekV2,
  kDeepseekV3,
  kQwen3Moe,
  kQwen2Moe,
  kGlm4Moe,
  kMixtral,
  kParam2Moe
};

std::string_view FamilyName(Family family);

enum class AttentionKind {
  kGqa,  // q/k/v projections (fused for Param2MoE), optional qk RMSNorm and bias
  kMla,  // DeepSeek multi-head latent attention
};

struct RopeConfig {
  std::string type = "default";  // default | linear | yarn
  double theta = 10000.0;
  int64_t rotary_dim = 0;    // dimensions rotated in each head
  bool interleaved = false;  // pairs (2i, 2i+1) instead of (i, i + d/2)
  double factor = 1.0;
  // YaRN
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;            // 0 = absent
  double mscale_all_dim = 0.0;    // 0 = absent
  double attention_factor = 0.0;  // 0 = derive
  bool truncate = true;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
};

struct ModelConfig {
  std::string architecture;  // e.g. "Qwen3MoeForCausalLM"
  Family family = Family::kQwen3Moe;
  std::string source;  // file the config came from (for messages)

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  std::vector<int32_t> eos_token_ids;  // from eos_token_id (int or list); may be empty
  int32_t bos_token_id = -1;

  // Attention.
  AttentionKind attention = AttentionKind::kGqa;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // GQA: per-head q/k/v size. MLA: qk_nope + qk_rope
  bool qkv_bias = false;
  bool o_bias = false;
  bool qk_norm = false;  // per-head RMSNorm of q and k before rope
  // MLA only.
  int64_t q_lora_rank = 0;  // 0: plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  RopeConfig rope;
  float softmax_scale = 1.0f;  // multiplies q.k (includes YaRN mscale^2 for DeepSeek)

  // Feed-forward.
  int64_t intermediate_size = 0;   // dense MLP layers
  std::vector<bool> layer_is_moe;  // [num_layers]
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t moe_intermediate_size = 0;
  kernels::ScoreFunction score_function = kernels::ScoreFunction::kSoftmax;
  kernels::TopkMethod topk_method = kernels::TopkMethod::kGreedy;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  bool has_correction_bias = false;             // e_score_correction_bias / expert_bias present
  float dropped_group_value = 0.0f;             // selection value of experts in dropped groups
  int64_t shared_expert_intermediate_size = 0;  // 0: no shared expert
  bool shared_expert_gate = false;              // Qwen2-MoE: sigmoid(gate(x)) * shared(x)

  int64_t num_moe_layers() const;
  // Parameters of the MoE router kernel (correction_bias left null).
  kernels::RouterParams router_params() const;
};

// Parses config JSON text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);
// Reads and parses `dir`/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// Inverse frequencies for the rotary embedding ([rotary_dim / 2]) and the
// cos/sin multiplier (YaRN's attention factor; 1 otherwise), as transformers
// computes them for the config's rope type.
struct RopeTables {
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;
};
absl::StatusOr<RopeTables> ComputeRopeTables(const RopeConfig& rope,
                                             int64_t max_position_embeddings);

}  // namespace sy::model
