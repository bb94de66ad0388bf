// gRPC front of the coordinator (switchyard.internal.v1.Coordinator, callback
// API) plus the proto <-> domain conversion of meshes and placements.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "eplb/placement.h"
#include "services/coordinator/coordinator_core.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"

namespace sy::coordinator {

namespace pb = ::switchyard::internal::v1;

void PlacementToProto(const eplb::Placement& p, pb::Placement* out);
// Rebuilds a placement (log2phy included) and validates it.
absl::StatusOr<eplb::Placement> PlacementFromProto(const pb::Placement& p);
void MeshToProto(const MeshView& mesh, pb::Mesh* out);

// Borrows the core, which must outlive it.
//
// GetMesh with wait_complete, wait_ready or newer_than_version is a long
// poll: the call is parked (no handler
// thread blocks; gRPC's callback threads are few and a blocked one stops the
// server from accepting connections) and answered by a waiter thread as soon
// as the mesh is complete (ready, or newer), or with the mesh as it is after at most
// `max_mesh_wait` or shortly before the caller's deadline.
class CoordinatorService final : public pb::Coordinator::CallbackService {
 public:
  static constexpr std::chrono::milliseconds kMaxMeshWait{1000};

  explicit CoordinatorService(CoordinatorCore* core,
                              std::chrono::milliseconds max_mesh_wait = kMaxMeshWait);
  // Drains (see Drain) and stops the waiter thread.
  ~CoordinatorService() override;

  // Answers every parked GetMesh now and parks no more. Call before shutting
  // the gRPC server down, whose Shutdown waits for unfinished calls.
  void Drain();
  // GetMesh calls parked right now (tests).
  size_t parked() {
    std::lock_guard<std::mutex> lock(mu_);
    return parked_.size();
  }

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx,
                                     const pb::RegisterRequest* req,
                                     pb::RegisterResponse* resp) override;
  grpc::ServerUnaryReactor* GetMesh(grpc::CallbackServerContext* ctx, const pb::GetMeshRequest* req,
                                    pb::Mesh* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const pb::HeartbeatRequest* req,
                                      pb::HeartbeatResponse* resp) override;

 private:
  struct ParkedCall {
    grpc::ServerUnaryReactor* reactor;
    pb::Mesh* response;
    std::chrono::steady_clock::time_point start;
    std::chrono::steady_clock::time_point answer_by;
    bool wait_ready = false;         // answer once the mesh is ready, not just complete
    int64_t newer_than_version = 0;  // > 0: answer once the version is greater
  };
  static bool Satisfied(const ParkedCall& c, const MeshView& mesh);
  void WaiterLoop();

  CoordinatorCore* core_;
  const std::chrono::milliseconds max_mesh_wait_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ParkedCall> parked_;  // guarded by mu_
  bool changed_ = false;            // guarded by mu_: the mesh changed since the last look
  bool draining_ = false;           // guarded by mu_
  std::thread waiter_;
};

}  // namespace sy::coordinator
