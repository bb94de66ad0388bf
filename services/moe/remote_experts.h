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
// combine exchange tagged (step, layer, phase). Every worker counts the same
// mesh steps.
//
// Switching placements (re-placement): an expert worker first stages the
// next placement's weights beside the serving ones (Stage, from any thread;
// experts it already holds are shared, not copied). Once every expert worker
// has staged, each attention worker is offered the committed placement
// (OfferPlacement, any thread). The leader (attention worker 0) then
// announces in the dispatches of its next step k "epoch e+1 from step k+1";
// every expert worker sees it in step k and echoes it in its combines, so
// every attention worker knows it by the end of step k. All of them serve
// step k+1 with the new placement, expert workers drop the old generation,
// and no step ever mixes two placements (the epoch check on every message
// would fail it).
//
// Neither class is thread-safe except where noted: the worker's step loop
// drives it.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/experts.h"
#include "eplb/placement.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "services/moe/moe_wire.h"
#include "transport/transport.h"

namespace sy::moe {

struct MeshRanks {
  std::vector<int32_t> attention;  // transport ranks of the attention workers
  // Transport ranks of the expert workers (worker w = experts[w]); -1 for a
  // worker out of the mesh (dropped, or a replacement not yet admitted),
  // which takes no part in steps. A member with no slots takes part (empty
  // messages), so it keeps the step count and hears placement switches.
  std::vector<int32_t> experts;
};

// A mesh re-formed by the coordinator after a failure or to admit a
// replacement: a new serving placement (dropped expert workers hold no
// slots and take no part in steps), the members in the mesh, and a new generation (the
// coordinator's formed_epoch: the steps' tags). Every worker abandons its
// step (RequestReform interrupts the transport), adopts it between steps and
// counts steps from 0.
struct MeshReform {
  int64_t generation = 0;
  eplb::Placement placement;
  MeshRanks ranks;
  // The re-formed mesh's transport addresses: the step thread connects to
  // them (a replacement's new address, failed endpoints) when it adopts the
  // reform, never the control thread (the transport is the step thread's).
  // Empty: keep the endpoints (tests of one process).
  std::vector<transport::PeerAddress> peers;
};

// Hands a reform from the control thread to a worker's step thread.
// Thread-safe.
// A pending reform always has its transport interrupted, so a step thread
// may check Transport::interrupted() before taking one.
class ReformMailbox {
 public:
  // Keeps `reform` and interrupts `transport`, unless its generation is not
  // newer than `current` (served) or the one already pending.
  void Post(MeshReform reform, int64_t current, transport::Transport* transport);
  // The pending reform, waiting up to `timeout` for one.
  std::optional<MeshReform> Take(absl::Duration timeout = absl::ZeroDuration());
  // After adopting: `transport` runs exchanges again, unless a newer reform
  // came meanwhile (it stays interrupted for that one).
  void Adopted(transport::Transport* transport);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<MeshReform> pending_;  // guarded by mu_
};

class RemoteExpertExecutor : public engine::ExpertExecutor {
 public:
  // `transport` must outlive this object. The attention worker of rank
  // ranks.attention[0] leads placement switches.
  RemoteExpertExecutor(const model::ModelConfig& cfg, eplb::Placement placement, MeshRanks ranks,
                       transport::Transport* transport, absl::Duration timeout,
                       int64_t generation = 0);

  // Any thread: the mesh was re-formed; interrupts the exchange in progress.
  // Ignored unless its generation is newer than the one served or pending.
  void RequestReform(MeshReform reform);
  // Step thread, between steps: adopts a requested reform (true) and lets
  // exchanges run again. Costs one atomic load when none is pending.
  bool ApplyReform();
  // Step thread, after a failed step: waits up to `timeout` for a reform and
  // adopts it (false: none came).
  bool AwaitReform(absl::Duration timeout);
  int64_t generation() const { return generation_.load(); }
  // Step thread: the mesh's attention ranks include this worker (a
  // replacement's only from the reform that admits it).
  bool in_mesh() const {
    return transport_ != nullptr && std::find(ranks_.attention.begin(), ranks_.attention.end(),
                                              transport_->rank()) != ranks_.attention.end();
  }

  // A committed placement with a newer epoch (any thread): the mesh switches
  // to it at a step the leader picks; a later offer replaces an earlier one
  // that has not been switched to.
  void OfferPlacement(eplb::Placement next);
  // The epoch this worker serves (any thread).
  int64_t serving_epoch() const { return serving_epoch_.load(); }

  // Host fp32 activations (the attention worker runs on the CPU).
  absl::Status Run(int64_t layer, const void* hidden, int64_t num_tokens, const int32_t* topk_ids,
                   const float* topk_weights, int64_t top_k, void* out) override;
  // Takes part in one whole step (every MoE layer) without tokens.
  absl::Status RunEmptyStep();
  uint64_t step() const { return step_; }
  // Rows the expert workers received from all attention workers during the
  // last completed step (0: the whole mesh was idle).
  uint64_t last_step_mesh_rows() const { return last_step_mesh_rows_; }
  // Seconds the last completed step spent, summed over its MoE layers, in
  // dispatch (mapping rows to slots, encoding, sending), waiting for the
  // expert workers' outputs, and combining them.
  struct PhaseSeconds {
    double dispatch = 0, expert_wait = 0, combine = 0;
  };
  const PhaseSeconds& last_step_phases() const { return last_step_phases_; }

 private:
  absl::Status Exchange(int32_t moe_index, const float* hidden, int64_t num_tokens,
                        const int32_t* topk_ids, const float* topk_weights, int64_t top_k,
                        float* out);
  // At the first MoE layer of a step: switches when the step is the agreed
  // one (waiting up to the timeout for the offered placement), and on the
  // leader schedules a switch to an offered placement for the next step.
  absl::Status BeginStep();

  void Adopt(MeshReform reform);
  void ResizeScratch();  // one of each per expert worker

  model::ModelConfig cfg_;
  eplb::Placement placement_;
  MeshRanks ranks_;
  std::atomic<int64_t> generation_{0};  // written by the step thread
  ReformMailbox reforms_;
  bool leader_ = false;
  Switch switch_;  // the switch this worker knows of (pending or none)
  std::atomic<int64_t> serving_epoch_{0};
  std::mutex offer_mu_;
  std::condition_variable offer_cv_;
  std::optional<eplb::Placement> offered_;  // guarded by offer_mu_
  transport::Transport* transport_;
  absl::Duration timeout_;
  uint64_t step_ = 0;
  int32_t last_moe_index_ = -1;
  // [moe layer][logical expert]: the next replica to send a row to.
  std::vector<std::vector<uint32_t>> next_replica_;
  uint64_t mesh_rows_ = 0;  // accumulating over the current step
  uint64_t last_step_mesh_rows_ = 0;
  PhaseSeconds phases_, last_step_phases_;
  // Scratch per expert worker.
  std::vector<std::vector<int32_t>> slots_;
  std::vector<std::vector<float>> rows_;
  std::vector<std::vector<int32_t>> row_token_;
  std::vector<std::vector<float>> row_weight_;
  std::vector<std::vector<uint8_t>> send_;
  std::vector<std::vector<uint8_t>> recv_;
};

// Loads the weights of (model layer, logical expert): from the checkpoint,
// dummy weights, or a peer.
using ExpertFetcher =
    std::function<absl::StatusOr<model::MlpWeights>(int32_t layer, int32_t expert)>;

// What staging a placement took.
struct StageStats {
  int64_t epoch = 0;
  int64_t fetched_experts = 0;  // (layer, slot)s whose expert this worker did not hold
  int64_t fetched_bytes = 0;
  int64_t kept_experts = 0;  // shared with the serving generation
  double seconds = 0.0;
};

class ExpertServer {
 public:
  // Loads the experts of worker `worker_index`'s slots (checkpoint, or dummy
  // weights when `ckpt` is null; `ckpt` must outlive the server, which loads
  // staged experts from it too).
  static absl::StatusOr<std::unique_ptr<ExpertServer>> Create(
      const model::ModelConfig& cfg, const eplb::Placement& placement, int32_t worker_index,
      MeshRanks ranks, transport::Transport* transport, const model::Checkpoint* ckpt,
      uint64_t dummy_seed, absl::Duration timeout, const kernels::Context& ctx,
      int64_t generation = 0);

  // Any thread: the mesh was re-formed; interrupts the exchange in progress.
  // Ignored unless its generation is newer than the one served or pending.
  void RequestReform(MeshReform reform);
  // Step thread, between steps: adopts a requested reform (true): builds the
  // generation of its placement from the experts held (serving or staged)
  // and this worker's own source (Load) for the rest, drops a staged
  // placement, reports the partial load chunk and counts steps from 0. An
  // error (an expert that cannot be loaded) leaves the worker unable to
  // serve. Costs one atomic load when none is pending.
  absl::StatusOr<bool> ApplyReform();
  // Step thread, after a failed step: waits up to `timeout` for a reform and
  // adopts it (false: none came).
  absl::StatusOr<bool> AwaitReform(absl::Duration timeout);
  int64_t generation() const { return generation_.load(); }
  // Step thread: the mesh's ranks include this worker (a replacement's only
  // from the reform that admits it).
  bool in_mesh() const {
    return worker_index_ < static_cast<int32_t>(ranks_.experts.size()) &&
           ranks_.experts[worker_index_] >= 0;
  }
  // Step thread: the mesh has no attention worker (every one died and none
  // has been admitted yet), so a step would exchange nothing and finish at
  // once; the caller waits for a reform instead of stepping.
  bool has_attention_workers() const { return !ranks_.attention.empty(); }

  // Serves one whole step (every MoE layer), first switching to the staged
  // generation when this is the agreed step. Errors (a peer gone, a timeout,
  // a malformed message) leave the mesh unusable.
  absl::Status ServeStep();
  uint64_t step() const { return step_; }
  // Tokens each local slot received, per placement epoch served. Any thread.
  // Counts are cut every kLoadChunkSteps mesh steps and at each placement
  // switch, the same steps on every expert worker; TakeLoad returns the
  // chunks completed since the previous call, oldest first.
  static constexpr int64_t kLoadChunkSteps = 16;
  struct LoadDelta {
    int64_t epoch = 0;
    int64_t first_step = 0;
    int64_t steps = 0;
    std::vector<std::vector<int64_t>> slot_tokens;  // [moe layer][local slot]
  };
  std::vector<LoadDelta> TakeLoad();

  // Running totals, for metrics (any thread).
  struct Totals {
    std::vector<int64_t> rows_per_layer;  // (token, expert) rows received, per MoE layer
    int64_t steps = 0;                    // mesh steps served
    double compute_seconds = 0;           // the routed-experts step (grouped FFNs)
    double wait_seconds = 0;              // waiting for the attention workers' dispatches
    int64_t stages = 0;                   // placements staged
    int64_t stage_failures = 0;
    int64_t staged_experts = 0;  // experts loaded or copied in for them
    int64_t staged_bytes = 0;
    int64_t kept_experts = 0;  // shared with the serving placement instead
    double stage_seconds = 0;
  };
  Totals totals() const;
  // Called on the step thread after each step served, with its compute
  // seconds and rows (metrics; must not block). Set before serving.
  void set_step_observer(std::function<void(double compute_seconds, int64_t rows)> f) {
    step_observer_ = std::move(f);
  }

  // Any thread, while ServeStep runs: builds the generation of placement
  // `next` (a newer epoch) beside the serving one. Experts this worker
  // already serves in the same layer are shared, the others loaded through
  // `fetch` (the checkpoint or dummy weights without one). ResourceExhausted
  // when the serving and the new weights together would exceed the memory
  // limit; the staged generation is then not kept.
  absl::StatusOr<StageStats> Stage(const eplb::Placement& next, const ExpertFetcher& fetch = {});
  // Forgets a staged generation of `epoch` (an aborted re-placement).
  void DropStaged(int64_t epoch);
  // Bytes of expert weights the serving and a staged generation may hold
  // together (0: no limit). Any thread.
  void set_memory_limit(int64_t bytes) { memory_limit_.store(bytes); }
  // Any thread.
  int64_t serving_epoch() const { return serving_epoch_.load(); }
  int64_t staged_epoch() const;
  // Bytes of distinct expert weights held now (serving and staged). Any thread.
  int64_t expert_bytes() const;
  // The serving placement, and this worker's weights of (model layer,
  // logical expert) in it (null when it does not serve that expert). Any thread.
  eplb::Placement serving_placement() const;
  std::shared_ptr<const model::MlpWeights> Held(int32_t layer, int32_t expert) const;
  // The weights of (model layer, logical expert) from this worker's own
  // source: the checkpoint, or dummy weights without one. Any thread.
  absl::StatusOr<model::MlpWeights> Load(int32_t layer, int32_t expert) const;

 private:
  struct Generation {
    eplb::Placement placement;
    // [moe layer][local slot]; shared between generations where unchanged.
    std::vector<std::vector<std::shared_ptr<const model::MlpWeights>>> slots;
    std::vector<std::vector<const void*>> ptrs;  // [moe layer]: gate_up, then down
  };

  ExpertServer() = default;
  absl::Status ServeLayer(int32_t moe_index);
  // `budget` > 0: ResourceExhausted before loading more than that many
  // bytes of new experts.
  absl::StatusOr<std::shared_ptr<Generation>> Build(const eplb::Placement& placement,
                                                    const std::vector<const Generation*>& reuse,
                                                    const ExpertFetcher& fetch, int64_t budget,
                                                    StageStats* stats);

  model::ModelConfig cfg_;
  int32_t worker_index_ = 0;
  MeshRanks ranks_;
  transport::Transport* transport_ = nullptr;
  absl::Duration timeout_;
  kernels::Context ctx_;
  const model::Checkpoint* ckpt_ = nullptr;
  uint64_t dummy_seed_ = 0;
  uint64_t step_ = 0;
  std::atomic<int64_t> generation_{0};  // written by the step thread
  ReformMailbox reforms_;
  // The serving generation: replaced only by the step thread, under mu_;
  // the step thread reads it without the lock.
  std::shared_ptr<Generation> cur_;
  std::shared_ptr<Generation> staged_;  // guarded by mu_
  mutable std::mutex mu_;
  std::atomic<int64_t> serving_epoch_{0};
  std::atomic<int64_t> memory_limit_{0};
  Switch switch_;    // step thread
  LoadDelta chunk_;  // step thread: the chunk being counted (the serving epoch's)
  std::mutex load_mu_;
  std::vector<LoadDelta> pending_load_;  // guarded by load_mu_
  void FlushChunk();                     // step thread
  std::vector<std::vector<uint8_t>> recv_;
  std::vector<std::vector<uint8_t>> send_;
  // ServeLayer's scratch: rows in arrival order, their local slots, unit
  // weights, outputs.
  std::vector<float> gathered_, ones_, scattered_;
  std::vector<int32_t> local_slot_;
  engine::RoutedExperts routed_;
  // This step's (step thread), then added to totals_.
  double step_compute_ = 0, step_wait_ = 0;
  int64_t step_rows_ = 0;
  std::vector<int64_t> step_layer_rows_;
  mutable std::mutex totals_mu_;
  Totals totals_;  // guarded by totals_mu_
  std::function<void(double, int64_t)> step_observer_;
};

}  // namespace sy::moe
