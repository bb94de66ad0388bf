#include "services/coordinator/coordinator_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace sy::coordinator {
namespace {

grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

// Finishes a unary call, logging its outcome and latency (one place for every RPC).
grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const char* method,
                               std::chrono::steady_clock::time_point start,
                               const absl::Status& st) {
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (!st.ok()) {
    SY_LOG(WARNING) << "rpc " << method << " from " << ctx->peer() << " failed in " << ms
                    << " ms: " << st;
  } else {
    SY_LOG(DEBUG) << "rpc " << method << " ok in " << ms << " ms";
  }
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpc(st));
  return reactor;
}

}  // namespace

void PlacementToProto(const eplb::Placement& p, pb::Placement* out) {
  out->set_epoch(p.epoch);
  out->set_num_logical_experts(p.num_logical);
  out->set_num_slots(p.num_slots);
  out->set_slots_per_worker(p.slots_per_worker());
  out->clear_layers();
  for (size_t l = 0; l < p.layers.size(); ++l) {
    pb::LayerPlacement* lp = out->add_layers();
    lp->set_layer(p.layers[l]);
    lp->mutable_phy2log()->Add(p.phy2log[l].begin(), p.phy2log[l].end());
  }
}

absl::StatusOr<eplb::Placement> PlacementFromProto(const pb::Placement& in) {
  eplb::Placement p;
  p.epoch = in.epoch();
  p.num_logical = in.num_logical_experts();
  p.num_slots = in.num_slots();
  if (in.slots_per_worker() <= 0 || in.num_slots() % in.slots_per_worker() != 0) {
    return absl::InvalidArgumentError("placement: bad slots_per_worker");
  }
  p.num_workers = in.num_slots() / in.slots_per_worker();
  for (const auto& lp : in.layers()) {
    p.layers.push_back(lp.layer());
    p.phy2log.emplace_back(lp.phy2log().begin(), lp.phy2log().end());
  }
  eplb::RebuildLog2Phy(&p);
  if (auto st = p.Validate(); !st.ok()) return st;
  return p;
}

void MeshToProto(const MeshView& mesh, pb::Mesh* out) {
  out->set_epoch(mesh.epoch);
  out->set_complete(mesh.complete);
  for (const MemberInfo& m : mesh.members) {
    pb::Member* pm = out->add_members();
    pm->set_rank(m.rank);
    pm->set_role(m.role == Role::kAttention ? pb::ROLE_ATTENTION : pb::ROLE_EXPERT);
    pm->set_grpc_address(m.grpc_address);
    pm->set_transport_address(m.transport_address);
    pm->set_alive(m.alive);
    pm->set_last_heartbeat_unix_ms(0);
  }
  PlacementToProto(mesh.placement, out->mutable_placement());
}

grpc::ServerUnaryReactor* CoordinatorService::Register(grpc::CallbackServerContext* ctx,
                                                       const pb::RegisterRequest* req,
                                                       pb::RegisterResponse* resp) {
  const auto start = std::chrono::steady_clock::now();
  Role role;
  if (req->role() == pb::ROLE_ATTENTION) {
    role = Role::kAttention;
  } else if (req->role() == pb::ROLE_EXPERT) {
    role = Role::kExpert;
  } else {
    return Done(ctx, "Register", start,
                absl::InvalidArgumentError("role must be ROLE_ATTENTION or ROLE_EXPERT"));
  }
  auto rank = core_->Register(role, req->index(), req->grpc_address(), req->transport_address(),
                              req->worker_name());
  if (rank.ok()) {
    resp->set_rank(*rank);
    resp->set_epoch(core_->epoch());
  }
  return Done(ctx, "Register", start, rank.status());
}

grpc::ServerUnaryReactor* CoordinatorService::GetMesh(grpc::CallbackServerContext* ctx,
                                                      const pb::GetMeshRequest* req,
                                                      pb::Mesh* resp) {
  const auto start = std::chrono::steady_clock::now();
  // Callback handlers must not block for long: wait at most 200 ms; callers
  // poll until the mesh is complete.
  MeshView mesh = core_->GetMesh(req->wait_complete(), start + std::chrono::milliseconds(200));
  MeshToProto(mesh, resp);
  return Done(ctx, "GetMesh", start, absl::OkStatus());
}

grpc::ServerUnaryReactor* CoordinatorService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                        const pb::HeartbeatRequest* req,
                                                        pb::HeartbeatResponse* resp) {
  const auto start = std::chrono::steady_clock::now();
  auto epoch = core_->Heartbeat(req->rank());
  if (epoch.ok()) resp->set_epoch(*epoch);
  return Done(ctx, "Heartbeat", start, epoch.status());
}

}  // namespace sy::coordinator
