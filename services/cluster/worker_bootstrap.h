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

// Sends a heartbeat every cfg.coordinator.heartbeat_ms until destroyed.
class Heartbeat {
 public:
  Heartbeat(const ClusterConfig& cfg, int32_t rank);
  ~Heartbeat();

 private:
  std::atomic<bool> stop_{false};  // set by the destructor, polled by the thread
  std::thread thread_;
};

}  // namespace sy::cluster
