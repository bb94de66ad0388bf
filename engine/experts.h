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

// The routed-expert step on rows already in the context's memory, shared by
// the local executor and the cluster's expert workers: sort the (token, k)
// rows by expert (kernels::MoePermute), one grouped FFN over every expert
// (kernels::GroupedExpertFfn), weighted combine back per token
// (kernels::MoeCombine). Owns its scratch; one instance per thread.
class RoutedExperts {
 public:
  // x: [num_tokens, hidden] of `dtype`; ids / weights: [num_tokens, top_k]
  // expert ids in [0, num_experts) and combine weights; gate_up / down:
  // [num_experts] weight pointers (context memory, as GroupedExpertFfn
  // reads them). Writes out: [num_tokens, hidden]. With `counts` (host),
  // adds the rows each expert received (copied back from the device on
  // CUDA).
  absl::Status Run(const kernels::Context& ctx, kernels::DType dtype, const void* x,
                   int64_t num_tokens, const int32_t* ids, int64_t top_k, const float* weights,
                   int64_t num_experts, const void* const* gate_up, const void* const* down,
                   int64_t hidden, int64_t inter, void* out,
                   std::vector<int64_t>* counts = nullptr);
  // Bumped when scratch is reallocated.
  int64_t generation() const { return generation_; }

 private:
  absl::Status Grow(const kernels::Context& ctx, kernels::DeviceBuffer& b, int64_t bytes);

  int64_t generation_ = 0;
  kernels::DeviceBuffer gathered_, expert_out_, row_pos_, offsets_;
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
  int64_t scratch_generation() const override { return routed_.generation(); }

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

  model::ModelConfig cfg_;
  kernels::Context ctx_;
  kernels::DType dtype_;
  bool on_device_;
  RoutedExperts routed_;
  // Host path: experts_[layer][expert]; empty for dense layers.
  std::vector<std::vector<model::MlpWeights>> experts_;
  std::vector<DeviceLayer> device_layers_;
  // Host path: [layer] pointer arrays into experts_ (gate_up, then down).
  std::vector<std::vector<const void*>> host_ptrs_;
};

}  // namespace sy::engine
