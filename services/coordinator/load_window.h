// The coordinator's expert load statistics: the tokens every slot of every
// MoE layer received, as expert workers report them in heartbeats, over a
// sliding window of the last `window_steps` mesh steps and `window_seconds`
// seconds (whichever holds less).
//
// Expert workers cut their counts into chunks at the same mesh steps (see
// ExpertServer::TakeLoad), and the window only counts chunks that every
// worker has reported: every figure is over exactly the same steps of every
// worker, whatever the heartbeats' timing. Logical load (what the planner
// needs) maps slots to experts with the placement of the epoch each chunk
// was counted in, so it spans re-placements; measured balancedness uses the
// serving epoch's chunks only.
//
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "eplb/placement.h"
#include "eplb/planner.h"
#include "services/coordinator/coordinator_core.h"

namespace sy::coordinator {

struct LoadWindowOptions {
  int64_t window_steps = 2000;
  std::chrono::milliseconds window{60000};
};

struct LoadSnapshot {
  int64_t steps = 0;          // mesh steps the window covers (every worker's)
  int64_t serving_steps = 0;  // of them, under the serving epoch
  eplb::LoadMatrix logical;   // [moe layer][logical expert] tokens per step
  // Measured on the serving epoch's samples (absent without any):
  // [moe layer] mean worker load / max worker load, and their mean.
  std::optional<std::vector<double>> layer_balancedness;
  double balancedness = 0.0;
};

class LoadWindow {
 public:
  LoadWindow(int32_t num_layers, int32_t num_logical, int32_t num_workers,
             const LoadWindowOptions& options);

  // A sample from expert worker `worker` counted under placement `p`.
  void Add(const eplb::Placement& p, int32_t worker, const LoadSample& sample,
           std::chrono::steady_clock::time_point now);
  // The window now; measured balancedness for `serving_epoch`.
  LoadSnapshot Get(int64_t serving_epoch, std::chrono::steady_clock::time_point now) const;

 private:
  struct Chunk {
    int64_t epoch = 0;
    int64_t steps = 0;
    std::chrono::steady_clock::time_point at;  // the first report of it
    std::vector<bool> reported;                // [worker]
    std::vector<std::vector<double>> logical;  // [layer][expert] tokens
    std::vector<std::vector<double>> worker;   // [layer][worker] tokens
  };
  // Drops chunks past the window (age, then steps of complete chunks).
  void TrimLocked(std::chrono::steady_clock::time_point now) const;
  bool Complete(const Chunk& c) const;

  const int32_t num_layers_, num_logical_, num_workers_;
  const LoadWindowOptions options_;
  mutable std::mutex mu_;
  mutable std::map<int64_t, Chunk> chunks_;  // by first step; guarded by mu_
};

}  // namespace sy::coordinator
