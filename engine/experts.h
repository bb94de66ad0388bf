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
#include "kernels/device.h"
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
  // Every pointer is in the model runner's context memory; hidden and out
  // are of the runner's dtype (fp32 on the CPU). Called from the engine
  // thread only.
  virtual absl::Status Run(int64_t layer, const void* hidden, int64_t num_tokens,
                           const int32_t* topk_ids, const float* topk_weights, int64_t top_k,
                           void* out) = 0;
  // Bumped when scratch memory that Run's kernels use is reallocated
  // (captured CUDA graphs then re-capture).
  virtual int64_t scratch_generation() const { return 0; }
};

// Runs every routed expert in this process (single-process engine, tests).
class LocalExpertExecutor : public ExpertExecutor {
 public:
  // Loads every expert of every MoE layer from the checkpoint. For a CUDA
  // context the experts go to device memory as `dtype`, one expert at a
  // time (the host holds one expert's fp32 copy at most).
  static absl::StatusOr<std::unique_ptr<LocalExpertExecutor>> Load(
      const model::ModelConfig& cfg, const model::Checkpoint& ckpt, const kernels::Context& ctx,
      kernels::DType dtype = kernels::DType::kF32);
  // Random experts (`load_format: dummy`).
  static absl::StatusOr<std::unique_ptr<LocalExpertExecutor>> Dummy(
      const model::ModelConfig& cfg, uint64_t seed, const kernels::Context& ctx,
      kernels::DType dtype = kernels::DType::kF32);

  absl::Status Run(int64_t layer, const void* hidden, int64_t num_tokens, const int32_t* topk_ids,
                   const float* topk_weights, int64_t top_k, void* out) override;
  int64_t scratch_generation() const override { return scratch_generation_; }

 private:
  LocalExpertExecutor(const model::ModelConfig& cfg, const kernels::Context& ctx,
                      kernels::DType dtype);
  // Device path: one layer's experts stacked, and device arrays of pointers
  // to each expert's matrices (what kernels::GroupedExpertFfn reads).
  struct DeviceLayer {
    kernels::DeviceBuffer gate_up;  // [E, 2 * inter, hidden]
    kernels::DeviceBuffer down;     // [E, hidden, inter]
    kernels::DeviceBuffer ptrs;     // [2, E] const void*: gate_up then down
  };
  absl::Status AddExpert(int64_t layer, int64_t expert, model::MlpWeights w);
  absl::Status RunOnDevice(int64_t layer, const void* hidden, int64_t num_tokens,
                           const int32_t* topk_ids, const float* topk_weights, int64_t top_k,
                           void* out);
  absl::Status GrowScratch(kernels::DeviceBuffer& b, int64_t bytes);

  model::ModelConfig cfg_;
  kernels::Context ctx_;
  kernels::DType dtype_;
  bool on_device_;
  int64_t scratch_generation_ = 0;
  // Host path: experts_[layer][expert]; empty for dense layers.
  std::vector<std::vector<model::MlpWeights>> experts_;
  std::vector<DeviceLayer> device_layers_;
  kernels::DeviceBuffer d_gathered_, d_expert_out_, d_row_pos_, d_offsets_;
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
