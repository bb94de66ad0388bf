// Joining the mesh, shared by attention and expert workers: register with
// the coordinator under this worker's role and index, wait until every
// worker has registered, connect the transport to all of them, and keep
// sending heartbeats.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "eplb/placement.h"
#include "services/cluster/cluster_config.h"
#include "services/moe/remote_experts.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"
#include "transport/transport.h"

namespace sy::cluster {

class Heartbeat;

struct JoinedMesh {
  int32_t rank = -1;
  // Started right after registering, so a worker waiting for slow peers is
  // not taken for dead; runs until the JoinedMesh is destroyed.
  std::unique_ptr<Heartbeat> heartbeat;
  eplb::Placement placement;
  moe::MeshRanks ranks;
  std::vector<std::string> attention_grpc_addresses;  // by attention index
};

// Rank of a worker: attention worker i -> i, expert worker j -> A + j.
int32_t RankOf(const ClusterConfig& cfg, bool attention, int32_t index);

// Registers (retrying while the coordinator is not up yet, until `timeout`),
// starts heartbeats, waits for the complete mesh, connects `transport`.
// Progress goes to the log.
absl::StatusOr<JoinedMesh> JoinMesh(const ClusterConfig& cfg, bool attention, int32_t index,
                                    const std::string& grpc_address,
                                    transport::Transport& transport,
                                    std::chrono::milliseconds timeout);

// Waits until the coordinator reports the mesh ready (every worker alive and
// loaded), logging every few seconds which ranks are still loading.
// DeadlineExceeded after `timeout`, naming them.
absl::Status WaitForReadyMesh(const ClusterConfig& cfg, std::chrono::milliseconds timeout);
// How long a worker waits for the others to load (large checkpoints).
inline constexpr std::chrono::minutes kReadyTimeout{30};

// Sends a heartbeat every cfg.coordinator.heartbeat_ms until destroyed,
// carrying this worker's readiness once SetReady has been called.
class Heartbeat {
 public:
  Heartbeat(const ClusterConfig& cfg, int32_t rank);
  ~Heartbeat();
  // The worker has loaded what it serves; sent with the next heartbeat
  // (which is sent at once).
  void SetReady();

 private:
  std::atomic<bool> stop_{false};  // set by the destructor, polled by the thread
  // Relaxed is enough: the flag only travels to the coordinator, nothing
  // else in this process is ordered by it.
  std::atomic<bool> ready_{false};
  std::atomic<bool> beat_now_{false};
  std::thread thread_;
};

}  // namespace sy::cluster
