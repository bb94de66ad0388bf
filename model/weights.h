// Model weights in the engine's layout (fp32 on the host), loaded from a
// Hugging Face checkpoint or filled with random values (`load_format: dummy`).
//
// Weights split the way the disaggregated cluster splits the model: the
// "dense" part (embeddings, attention, norms, dense MLPs, router gates, shared
// experts, lm_head) that an attention worker holds, and the routed experts
// that expert workers hold, loaded one (layer, expert) at a time so a worker
// reads only its own slots' tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace sy::model {

// An owned fp32 tensor. Empty (no data) when the checkpoint has no such
// weight (e.g. an optional bias).
struct Tensor {
  std::vector<float> data;
  std::vector<int64_t> shape;

  bool empty() const { return data.empty(); }
  const float* ptr() const { return data.empty() ? nullptr : data.data(); }
  float* mutable_ptr() { return data.data(); }
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
};

// A SwiGLU MLP: gate and up projections fused as [2 * inter, hidden] (gate
// rows first), down [hidden, inter].
struct MlpWeights {
  Tensor gate_up;
  Tensor down;
};

struct AttentionWeights {
  // GQA: q, k and v projections fused as [(H + 2 * KV) * head_dim, hidden].
  Tensor qkv;
  Tensor qkv_bias;  // [(H + 2 * KV) * head_dim] or empty
  Tensor q_norm;    // [head_dim] or empty
  Tensor k_norm;    // [head_dim] or empty
  // MLA.
  Tensor q_proj;     // [H * qk_head_dim, hidden] when q_lora_rank == 0
  Tensor q_a_proj;   // [q_lora_rank, hidden]
  Tensor q_a_norm;   // [q_lora_rank]
  Tensor q_b_proj;   // [H * qk_head_dim, q_lora_rank]
  Tensor kv_a_proj;  // [kv_lora_rank + qk_rope_head_dim, hidden]
  Tensor kv_a_norm;  // [kv_lora_rank]
  Tensor w_uk;       // [H, qk_nope_head_dim, kv_lora_rank] (from kv_b_proj)
  Tensor w_uv;       // [H, v_head_dim, kv_lora_rank]       (from kv_b_proj)
  // Both.
  Tensor o_proj;  // [hidden, H * v_dim]
  Tensor o_bias;  // [hidden] or empty
};

struct LayerWeights {
  Tensor input_norm;      // [hidden]
  Tensor post_attn_norm;  // [hidden]
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights dense;        // !is_moe
  Tensor router;           // [num_experts, hidden] (is_moe)
  Tensor correction_bias;  // [num_experts] or empty
  MlpWeights shared;       // empty when the model has no shared expert
  Tensor shared_gate;      // [1, hidden] (Qwen2-MoE) or empty
};

// Everything but the routed experts.
struct DenseWeights {
  Tensor embed;       // [vocab, hidden]
  Tensor final_norm;  // [hidden]
  Tensor lm_head;     // [vocab, hidden] (a copy of embed when tied)
  std::vector<LayerWeights> layers;
};

// Loads the dense part; every tensor's shape is checked against `cfg`, and a
// missing or mis-shaped tensor is an error naming it and its file.
absl::StatusOr<DenseWeights> LoadDenseWeights(const ModelConfig& cfg, const Checkpoint& ckpt);

// Loads routed expert `expert` of MoE layer `layer`: hub per-expert 2-D
// tensors (incl. Mixtral's w1/w2/w3), or a slice of transformers 5's fused 3-D
// `experts.gate_up_proj` / `experts.down_proj`.
absl::StatusOr<MlpWeights> LoadExpert(const ModelConfig& cfg, const Checkpoint& ckpt, int64_t layer,
                                      int64_t expert);

// Random weights of the configured shapes (`load_format: dummy`), reproducible
// from `seed`. Norm weights are near 1, projections scaled by 1/sqrt(fan_in).
DenseWeights DummyDenseWeights(const ModelConfig& cfg, uint64_t seed);
MlpWeights DummyExpert(const ModelConfig& cfg, int64_t layer, int64_t expert, uint64_t seed);

// Parameters of the whole model (dense part and every routed expert), to
// check memory before loading.
int64_t EstimateParameterCount(const ModelConfig& cfg);

// Hub tensor names, exposed for tests and tools.
std::string LayerPrefix(const ModelConfig& cfg, int64_t layer);
std::string ExpertTensorName(const ModelConfig& cfg, int64_t layer, int64_t expert,
                             std::string_view proj);  // proj: gate_proj | up_proj | down_proj

}  // namespace sy::model
