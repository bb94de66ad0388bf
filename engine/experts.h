// The routed-expert step of an MoE layer, behind an interface.
//
// The attention side of the model computes the gate and top-k (which logical
// experts, with which weights) and the shared experts; an ExpertExecutor
// computes sum_j weight_tj * expert_{id_tj}(x_t) for every token. The local
// implementation runs the experts in this process; the disaggregated cluster
// replaces it with dispatch -> expert workers -> combine over the transport,
// without touching the model code.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/weights.h"

namespace sy::engine {

class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;

  // hidden: [num_tokens, hidden_size], the post-attention-norm activations.
  // topk_ids / topk_weights: [num_tokens, top_k] logical expert ids and their
  // combine weights. Writes (not accumulates) out: [num_tokens, hidden_size].
  // Called from the engine thread only.
  virtual absl::Status Run(int64_t layer, const float* hidden, int64_t num_tokens,
                           const int32_t* topk_ids, const float* topk_weights, int64_t top_k,
                           float* out) = 0;
};

// Runs every routed expert in this process (single-process engine, tests).
class LocalExpertExecutor : public ExpertExecutor {
 public:
  // Loads every expert of every MoE layer from the checkpoint.
  static absl::StatusOr<std::unique_ptr<LocalExpertExecutor>> Load(const model::ModelConfig& cfg,
                                                                   const model::Checkpoint& ckpt,
                                                                   const kernels::Context& ctx);
  // Random experts (`load_format: dummy`).
  static std::unique_ptr<LocalExpertExecutor> Dummy(const model::ModelConfig& cfg, uint64_t seed,
                                                    const kernels::Context& ctx);

  absl::Status Run(int64_t layer, const float* hidden, int64_t num_tokens, const int32_t* topk_ids,
                   const float* topk_weights, int64_t top_k, float* out) override;

 private:
  LocalExpertExecutor(const model::ModelConfig& cfg, const kernels::Context& ctx);

  model::ModelConfig cfg_;
  kernels::Context ctx_;
  // experts_[layer][expert]; empty for dense layers.
  std::vector<std::vector<model::MlpWeights>> experts_;
  // Scratch reused across calls.
  std::vector<int64_t> offsets_;
  std::vector<int32_t> row_token_;
  std::vector<float> row_weight_;
  std::vector<float> gathered_;
  std::vector<float> expert_out_;
  std::vector<const void*> gate_up_ptrs_;
  std::vector<const void*> down_ptrs_;
};

}  // namespace sy::engine
