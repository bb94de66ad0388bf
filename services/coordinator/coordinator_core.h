// The coordinator's state machine, free of gRPC types: membership, rank
// assignment, the expert placement, re-placements and liveness.
//
// Ranks follow from each worker's index within its role, so a worker knows
// its rank (and can build its transport) before registering: attention
// worker i is rank i, expert worker j is rank A + j. The mesh is complete once A attention and M
// expert workers have registered. The coordinator is the single source of truth.
//
// Two counters: the epoch versions the serving (membership, placement) pair
// and is what every data-plane message carries; it advances when a
// re-placement completes. The version counts every change of anything a
// worker may watch (registrations, liveness, readiness, a re-placement's
// state); each change calls the change listener (which is how the gRPC front
// answers the long-polling GetMesh calls without blocking a handler thread).
//
// A re-placement (BeginTransition .. done): expert workers stage the next
// placement and report it in heartbeats (staged_epoch, or a failure);
// CommitTransition once all have; the mesh switches on the data plane and
// workers report serving the new epoch; when every worker does, the core
// makes it the serving placement and epoch by itself. AbortTransition drops
// it before the commit.
// Thread-safe: gRPC handler threads call every method concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "eplb/placement.h"

namespace sy::coordinator {

enum class Role { kAttention, kExpert };

struct MemberInfo {
  int32_t rank = -1;
  Role role = Role::kAttention;
  std::string grpc_address;
  std::string transport_address;
  std::string staging_address;  // expert workers: their staging transport
  std::string name;
  bool alive = true;
  // Loaded what it serves (reported in heartbeats; cleared by registering).
  bool ready = false;
  int64_t serving_epoch = 0;  // reported in heartbeats
  int64_t staged_epoch = 0;   // expert workers
  std::chrono::steady_clock::time_point last_heartbeat;
  // Left out when the mesh was re-formed at dropped_epoch; it holds no slots
  // and takes no part in steps from then on.
  bool dropped = false;
  int64_t dropped_epoch = 0;
  // Registered at a dropped member's index while the mesh runs: it loads
  // what the serving placement gives its index and joins (the mesh is
  // re-formed with it) once it reports ready; until then it takes no part.
  bool joining = false;
  // Identifies the registration; heartbeats of an earlier one are refused.
  uint64_t registration = 0;
};

// Tokens per local slot of an expert worker's range in placement `epoch`,
// over mesh steps [first_step, first_step + steps).
struct LoadSample {
  int64_t epoch = 0;
  int64_t first_step = 0;
  int64_t steps = 0;
  std::vector<std::vector<int64_t>> slot_tokens;  // [moe layer][local slot]
};

// What a worker reports in a heartbeat.
struct HeartbeatInfo {
  bool ready = false;
  int64_t serving_epoch = 0;
  int64_t staged_epoch = 0;
  int64_t failed_epoch = 0;  // staging this epoch failed with `failure`
  std::string failure;
  std::vector<LoadSample> load;
  int64_t mesh_failed_epoch = 0;  // a mesh step failed while serving this epoch
  std::string mesh_failure;
  // The registration the worker got (Register's *registration); 0 skips the
  // check (the gRPC front requires one).
  uint64_t registration = 0;
};

// What a serving worker reports when it registers with a coordinator that
// restarted (RegisterRequest.recovery).
struct RecoveryInfo {
  int64_t serving_epoch = 0;
  int64_t generation = 0;
  std::optional<eplb::Placement> placement;  // expert workers
};

enum class TransitionState { kStaging, kCommitted };

struct TransitionView {
  eplb::Placement placement;  // placement.epoch: the next epoch
  TransitionState state = TransitionState::kStaging;
};

// How far the re-placement in progress has come.
struct TransitionProgress {
  int64_t epoch = 0;
  TransitionState state = TransitionState::kStaging;
  int32_t staged = 0;  // expert workers that staged it
  int32_t expert_workers = 0;
  std::string failure;  // the first staging failure ("expert worker 1: ...")
  bool done = false;    // every worker serves it: it is the serving placement now
};

struct MeshView {
  int64_t epoch = 0;         // serving epoch (== placement.epoch)
  int64_t formed_epoch = 0;  // the epoch the membership last formed at (re-formations move it)
  int64_t version = 0;       // changes with anything in the view
  bool complete = false;
  uint64_t incarnation = 0;  // random per coordinator process
  bool recovering = false;   // re-learning the mesh after a restart
  // Complete, and every member alive and ready: the mesh may step. Workers
  // start stepping, and the router serving, only then.
  bool ready = false;
  std::vector<MemberInfo> members;  // ordered by rank
  eplb::Placement placement;
  std::optional<TransitionView> next;  // a re-placement in progress
};

struct CoordinatorOptions {
  int32_t attention_workers = 1;
  int32_t expert_workers = 1;
  std::chrono::milliseconds worker_timeout{10000};
};

class CoordinatorCore {
 public:
  CoordinatorCore(const CoordinatorOptions& options, eplb::Placement placement);

  // Adds worker `index` of `role` and returns its rank (and, in
  // *registration, the token its heartbeats carry). InvalidArgument for an
  // index outside the topology or an empty address; AlreadyExists when
  // another live address holds that index. Re-registering the same address
  // (a restart) replaces its transport address. At the index of a member
  // dropped from the running mesh it registers a replacement, which joins
  // once it reports ready: the mesh is re-formed with it at a new epoch
  // (holding what the serving placement gives its index: nothing after a
  // survivor placement), and once no member is dropped any more, TakeRestore
  // hands out the placement to move the experts back to.
  //
  // With `recovery` (a serving worker registering again after this
  // coordinator restarted), the member is ready at once, and a coordinator
  // that has not served yet rebuilds its state from it: the generation and,
  // from expert workers, the placement with the newest epoch (InvalidArgument
  // when it does not fit the configured model and topology). The mesh is
  // `recovering` until every index has registered again; ExpireSilent drops
  // the ones still missing a worker timeout after the first recovery.
  absl::StatusOr<int32_t> Register(Role role, int32_t index, const std::string& grpc_address,
                                   const std::string& transport_address, const std::string& name,
                                   const std::string& staging_address = "",
                                   uint64_t* registration = nullptr,
                                   const RecoveryInfo* recovery = nullptr);
  // Records a heartbeat, and `ready` once the worker reports it (readiness
  // is sticky until the worker registers again; the change listener runs
  // when the mesh becomes ready), the epochs it serves and has staged, a
  // staging failure, and hands its load samples to the load sink. NotFound
  // for an unknown rank; FailedPrecondition for a dropped member or the
  // token of an earlier registration. A joining member's first ready
  // heartbeat re-forms the mesh with it. Returns the serving epoch.
  absl::StatusOr<int64_t> Heartbeat(int32_t rank, const HeartbeatInfo& info);
  absl::StatusOr<int64_t> Heartbeat(int32_t rank, bool ready = false) {
    HeartbeatInfo info;
    info.ready = ready;
    return Heartbeat(rank, info);
  }
  // Receives every load sample with the placement of its epoch and the
  // reporting expert worker's index (outside the core's lock).
  using LoadSink =
      std::function<void(const eplb::Placement&, int32_t expert_worker, const LoadSample&)>;
  void SetLoadSink(LoadSink sink);

  // Starts re-placing to `next` (its epoch is set to the serving epoch + 1,
  // returned). FailedPrecondition while another is in progress or the mesh
  // is not ready; InvalidArgument when `next` does not fit the mesh (layers,
  // experts, expert workers) or breaks an invariant.
  absl::StatusOr<int64_t> BeginTransition(eplb::Placement next);
  // Every expert worker has staged `epoch`: hand it to the attention
  // workers. FailedPrecondition otherwise.
  absl::Status CommitTransition(int64_t epoch);
  // Drops a re-placement that is still staging (workers drop what they
  // staged). FailedPrecondition once committed.
  absl::Status AbortTransition(int64_t epoch, const std::string& why);
  // The re-placement in progress, or the last one when it completed (done).
  std::optional<TransitionProgress> Progress(int64_t epoch) const;
  // The current mesh (never blocks).
  MeshView GetMesh() const;
  // `listener` runs after every epoch change, outside the core's lock, on the
  // thread that made the change. One listener; an empty function removes it.
  void SetChangeListener(std::function<void()> listener);
  // Marks members whose last heartbeat is older than the timeout as dead;
  // returns their ranks. Called periodically. Before the mesh has first been
  // ready (no step has run) a dead member may come back with its next
  // heartbeat; after, the dead are dropped and the mesh re-formed (Reform).
  std::vector<int32_t> ExpireSilent(std::chrono::steady_clock::time_point now);

  // Re-forms the mesh after a failed step of `failed_epoch` (0: whatever
  // epoch serves now): drops the members of `dead` (ranks), computes the
  // placement over the surviving expert workers (eplb::SurvivorPlacement:
  // their experts stay, an expert left without a replica takes a slot of a
  // replicated one), drops a re-placement in progress, and makes it the
  // serving placement at a new epoch, which every worker adopts (abandoning
  // its step and counting steps from 0). With no one dead it only moves the
  // epoch (a resync of the steps). Returns the new epoch; the current one,
  // unchanged, when `failed_epoch` is older (another report already re-formed
  // it). FailedPrecondition when the survivors cannot hold every expert: the
  // dead stay dropped and the mesh is not ready until it is whole again.
  absl::StatusOr<int64_t> Reform(const std::vector<int32_t>& dead, int64_t failed_epoch,
                                 const std::string& why);
  // Called (outside the lock, on the heartbeat's thread) when a worker
  // reports a failed mesh step of the serving epoch: the runner checks the
  // members and calls Reform.
  using MeshFailureSink = std::function<void(int64_t epoch, int32_t rank, const std::string& why)>;
  void SetMeshFailureSink(MeshFailureSink sink);

  // After replacements made the mesh whole again (no member dropped, every
  // one ready, no re-placement under way): the placement that served before
  // the first member was dropped, to re-place the experts back onto the
  // replacements (its epoch is for BeginTransition to set). Handed out once;
  // nullopt otherwise.
  std::optional<eplb::Placement> TakeRestore();

  int64_t epoch() const;
  int64_t version() const;
  // Members declared dead for want of heartbeats (worker_timeout) so far.
  int64_t heartbeat_timeouts() const;

 private:
  struct Transition {
    eplb::Placement placement;
    TransitionState state = TransitionState::kStaging;
    std::string failure;
  };

  bool CompleteLocked() const;
  bool ReadyLocked() const;
  bool DegradedLocked() const;  // a member has been dropped
  absl::StatusOr<int64_t> ReformLocked(const std::vector<int32_t>& dead, const std::string& why);
  // Rebuilds the generation, epoch and placement from a recovering
  // registration (see Register).
  absl::Status RecoverLocked(Role role, int32_t index, const RecoveryInfo& recovery);
  // A worker timeout after the first recovering registration: the indices
  // still missing are taken for gone and the mesh re-formed without them.
  void EndRecoveryLocked();
  void NotifyChange();
  std::vector<MemberInfo> RegisteredLocked() const;
  TransitionProgress ProgressLocked() const;
  // Makes a committed transition the serving placement once every worker
  // serves it; true when it did.
  bool MaybeFinishLocked();

  const CoordinatorOptions options_;
  mutable std::mutex mu_;
  std::mutex listener_mu_;  // guards listener_ only; never held with mu_
  std::function<void()> listener_;
  std::mutex sink_mu_;  // guards load_sink_ and failure_sink_ only; never held with mu_
  LoadSink load_sink_;
  MeshFailureSink failure_sink_;
  bool ever_ready_ = false;  // the mesh has been ready once: steps may have run
  // Why the survivors of the last Reform cannot serve ("": they can).
  std::string unservable_;
  // The placement serving when the mesh, whole, first lost a member; a
  // restore is due once replacements make it whole again.
  std::optional<eplb::Placement> whole_;
  const uint64_t incarnation_;
  bool recovering_ = false;  // rebuilding the mesh from recovering registrations
  int64_t heartbeat_timeouts_ = 0;
  std::chrono::steady_clock::time_point recovering_since_;
  std::mt19937_64 rng_;  // registration tokens
  int64_t epoch_ = 1;
  int64_t formed_epoch_ = 1;
  int64_t version_ = 1;
  std::optional<Transition> next_;
  std::optional<eplb::Placement> previous_;  // the placement before the last switch
  int64_t finished_epoch_ = 0;               // the last transition that completed
  std::vector<MemberInfo> attention_;        // [index]; rank -1 until registered
  std::vector<MemberInfo> experts_;
  eplb::Placement placement_;
};

}  // namespace sy::coordinator
