// The two halves of the lockstep MoE step over a Transport.
//
// RemoteExpertExecutor (attention worker) implements engine::ExpertExecutor:
// for each MoE layer it maps every (token, logical expert) to one physical
// slot (spreading tokens over an expert's replicas), dispatches the rows to
// the expert workers owning the slots, receives their outputs and combines
// them with the router weights. ExpertServer (expert worker) receives the
// rows of every attention worker, runs its slots' experts and sends the
// outputs back.
//
// Every attention worker takes part in every step, with or without tokens
// (RunEmptyStep), so the expert workers can wait for all of them; a step is
// one engine forward pass, and each MoE layer of it is one dispatch and one
// combine exchange tagged (step, layer, phase). Neither class is
// thread-safe: the worker's step loop drives it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/experts.h"
#include "eplb/placement.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "transport/transport.h"

namespace sy::moe {

struct MeshRanks {
  std::vector<int32_t> attention;  // transport ranks of the attention workers
  std::vector<int32_t> experts;    // transport ranks of the expert workers (worker w = experts[w])
};

class RemoteExpertExecutor : public engine::ExpertExecutor {
 public:
  // `transport` must outlive this object.
  RemoteExpertExecutor(const model::ModelConfig& cfg, eplb::Placement placement, MeshRanks ranks,
                       transport::Transport* transport, absl::Duration timeout);

  // Host fp32 activations (the attention worker runs on the CPU).
  absl::Status Run(int64_t layer, const void* hidden, int64_t num_tokens, const int32_t* topk_ids,
                   const float* topk_weights, int64_t top_k, void* out) override;
  // Takes part in one whole step (every MoE layer) without tokens.
  absl::Status RunEmptyStep();
  uint64_t step() const { return step_; }
  // Rows the expert workers received from all attention workers during the
  // last completed step (0: the whole mesh was idle).
  uint64_t last_step_mesh_rows() const { return last_step_mesh_rows_; }

 private:
  absl::Status Exchange(int32_t moe_index, const float* hidden, int64_t num_tokens,
                        const int32_t* topk_ids, const float* topk_weights, int64_t top_k,
                        float* out);

  model::ModelConfig cfg_;
  eplb::Placement placement_;
  MeshRanks ranks_;
  transport::Transport* transport_;
  absl::Duration timeout_;
  uint64_t step_ = 0;
  int32_t last_moe_index_ = -1;
  uint64_t spread_ = 0;     // rotates replica choice between steps
  uint64_t mesh_rows_ = 0;  // accumulating over the current step
  uint64_t last_step_mesh_rows_ = 0;
  // Scratch per expert worker.
  std::vector<std::vector<int32_t>> slots_;
  std::vector<std::vector<float>> rows_;
  std::vector<std::vector<int32_t>> row_token_;
  std::vector<std::vector<float>> row_weight_;
  std::vector<std::vector<uint8_t>> send_;
  std::vector<std::vector<uint8_t>> recv_;
};

class ExpertServer {
 public:
  // Loads the experts of worker `worker_index`'s slots (checkpoint, or dummy
  // weights when `ckpt` is null).
  static absl::StatusOr<std::unique_ptr<ExpertServer>> Create(
      const model::ModelConfig& cfg, const eplb::Placement& placement, int32_t worker_index,
      MeshRanks ranks, transport::Transport* transport, const model::Checkpoint* ckpt,
      uint64_t dummy_seed, absl::Duration timeout, const kernels::Context& ctx);

  // Serves one whole step (every MoE layer). Errors (a peer gone, a timeout,
  // a malformed message) leave the mesh unusable.
  absl::Status ServeStep();
  uint64_t step() const { return step_; }
  // Tokens routed to each local slot so far: [moe layer][local slot].
  const std::vector<std::vector<int64_t>>& slot_load() const { return load_; }

 private:
  ExpertServer() = default;
  absl::Status ServeLayer(int32_t moe_index);

  model::ModelConfig cfg_;
  eplb::Placement placement_;
  int32_t worker_index_ = 0;
  MeshRanks ranks_;
  transport::Transport* transport_ = nullptr;
  absl::Duration timeout_;
  kernels::Context ctx_;
  uint64_t step_ = 0;
  std::vector<std::vector<model::MlpWeights>> slots_;  // [moe layer][local slot]
  std::vector<std::vector<const void*>> weight_ptrs_;  // [moe layer]: gate_up, then down
  std::vector<std::vector<int64_t>> load_;
  std::vector<std::vector<uint8_t>> recv_;
  std::vector<std::vector<uint8_t>> send_;
  // ServeLayer's scratch: rows in arrival order, their local slots, unit
  // weights, outputs.
  std::vector<float> gathered_, ones_, scattered_;
  std::vector<int32_t> local_slot_;
  engine::RoutedExperts routed_;
};

}  // namespace sy::moe
