// Re-forms the mesh after a failed step: when a worker reports that a mesh
// step of the serving epoch failed (a peer gone or silent), the prober checks
// every member's gRPC health service, drops the ones that do not answer
// SERVING within the probe timeout (killed, frozen, shutting down) and calls
// CoordinatorCore::Reform for that epoch, which also re-aligns the steps when
// every member answers. Reports of an epoch already handled are ignored.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "services/coordinator/coordinator_core.h"

namespace sy::coordinator {

class MeshProber {
 public:
  // `core` must outlive the prober. Starts its thread.
  MeshProber(CoordinatorCore* core, std::chrono::milliseconds probe_timeout);
  ~MeshProber();
  MeshProber(const MeshProber&) = delete;
  MeshProber& operator=(const MeshProber&) = delete;

  // Any thread; never blocks (the core's mesh failure sink).
  void Report(int64_t epoch, int32_t rank, const std::string& why);
  // Re-formations this prober has made (tests, logs).
  int64_t reforms() const;

 private:
  void Run();

  CoordinatorCore* core_;
  const std::chrono::milliseconds probe_timeout_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;          // guarded by mu_
  int64_t pending_epoch_ = 0;  // guarded by mu_: a report to handle
  std::string pending_why_;    // guarded by mu_
  int64_t handled_epoch_ = 0;  // guarded by mu_
  int64_t reforms_ = 0;        // guarded by mu_
  std::thread thread_;
};

}  // namespace sy::coordinator
