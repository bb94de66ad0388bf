// gRPC front of the coordinator (switchyard.internal.v1.Coordinator, callback
// API) plus the proto <-> domain conversion of meshes and placements.
#pragma once

#include <memory>

#include "eplb/placement.h"
#include "services/coordinator/coordinator_core.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"

namespace sy::coordinator {

namespace pb = ::switchyard::internal::v1;

void PlacementToProto(const eplb::Placement& p, pb::Placement* out);
// Rebuilds a placement (log2phy included) and validates it.
absl::StatusOr<eplb::Placement> PlacementFromProto(const pb::Placement& p);
void MeshToProto(const MeshView& mesh, pb::Mesh* out);

// Owns nothing but a pointer to the core, which must outlive it.
class CoordinatorService final : public pb::Coordinator::CallbackService {
 public:
  explicit CoordinatorService(CoordinatorCore* core) : core_(core) {}

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx,
                                     const pb::RegisterRequest* req,
                                     pb::RegisterResponse* resp) override;
  grpc::ServerUnaryReactor* GetMesh(grpc::CallbackServerContext* ctx, const pb::GetMeshRequest* req,
                                    pb::Mesh* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const pb::HeartbeatRequest* req,
                                      pb::HeartbeatResponse* resp) override;

 private:
  CoordinatorCore* core_;
};

}  // namespace sy::coordinator
