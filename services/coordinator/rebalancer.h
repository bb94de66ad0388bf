// The coordinator's rebalancer: plans a placement from the load window and
// re-places the experts through the core's transitions (stage, commit,
// switch), while the cluster serves.
//
// Triggers (Start's thread, every check_ms, when eplb.enabled): a periodic
// interval, and the measured balancedness of the serving placement falling
// below the threshold (after at least min_window_steps steps of it); an
// operator's request (RunOnce from the Admin API) works whether or not
// automatic rebalancing is on. Automatic rebalances that would not raise the
// balancedness predicted on the window by min_gain are skipped (and the skip
// recorded; the threshold trigger then rests for a window); an operator's
// runs when the plan is predicted to raise it at all, or with `force`
// whenever the plan moves anything.
//
// With max_staging_bytes, the layers are re-placed in rounds, each its own
// epoch, holding at most that many extra bytes on any expert worker.
//
// Whether or not automatic rebalancing is on, the thread also moves the
// experts back once replacements have made a re-formed mesh whole again
// (CoordinatorCore::TakeRestore; recorded with trigger "rejoin").
// Thread-safe; one rebalance runs at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "eplb/planner.h"
#include "services/cluster/cluster_config.h"
#include "services/coordinator/coordinator_core.h"
#include "services/coordinator/load_window.h"

namespace sy::coordinator {

struct RebalanceRecord {
  int64_t id = 0;
  std::string trigger;  // interval | threshold | operator | rejoin
  std::string outcome;  // committed | skipped | aborted
  std::string reason;
  std::string policy, planner;
  int64_t epoch_before = 0, epoch_after = 0;
  double balancedness_before = 0.0, balancedness_after = 0.0;
  int64_t moved_experts = 0, moved_bytes = 0;
  int32_t rounds = 0;
  double seconds = 0.0;
  int64_t started_unix_ms = 0;
};

class Rebalancer {
 public:
  // `bytes_per_expert`: the weights of one (layer, expert) on an expert
  // worker. `core` and `window` must outlive the rebalancer.
  Rebalancer(CoordinatorCore* core, LoadWindow* window, cluster::EplbOptions options,
             int64_t bytes_per_expert);
  // Stops the trigger thread.
  ~Rebalancer();

  // Starts the trigger thread (the automatic triggers only when
  // options.enabled).
  void Start();
  // Runs one rebalance to its end. `policy`: "" for the configured one.
  // FailedPrecondition when the mesh is not ready; InvalidArgument for an
  // unknown policy. Otherwise the record (committed, skipped or aborted).
  absl::StatusOr<RebalanceRecord> RunOnce(const std::string& trigger, const std::string& policy,
                                          bool force = false);
  std::vector<RebalanceRecord> History() const;
  // Called with every record as it is added (any thread; metrics). Set
  // before Start().
  void set_observer(std::function<void(const RebalanceRecord&)> f) { observer_ = std::move(f); }
  bool running() const { return running_.load(); }
  // Ends a rebalance in progress (aborted before its commit; after it, the
  // wait for the switch ends) and refuses new ones: the coordinator is
  // shutting down.
  void Stop();

 private:
  void TriggerLoop();
  RebalanceRecord Run(const std::string& trigger, eplb::Policy policy, bool force,
                      const MeshView& mesh);
  // Re-places to `whole` (the placement from before a failure), recorded.
  void Restore(const eplb::Placement& whole);
  void Record(const RebalanceRecord& r);
  // Takes one round's placement through stage, commit and switch; the
  // error names what failed.
  absl::Status Transition(const eplb::Placement& next, int64_t* epoch);

  CoordinatorCore* core_;
  LoadWindow* window_;
  const cluster::EplbOptions options_;
  const int64_t bytes_per_expert_;
  std::mutex run_mu_;  // one rebalance at a time
  std::atomic<bool> running_{false};
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;
  std::vector<RebalanceRecord> history_;  // guarded by mu_
  std::function<void(const RebalanceRecord&)> observer_;
  int64_t next_id_ = 1;  // guarded by mu_
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace sy::coordinator
