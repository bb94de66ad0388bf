#include "services/coordinator/coordinator_service.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "services/api/grpc_status.h"

namespace sy::coordinator {
namespace {

// Finishes a unary call (the server's RPC observer logs and counts it).
grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& st) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(api::ToGrpcStatus(st));
  return reactor;
}

}  // namespace

void PlacementToProto(const eplb::Placement& p, pb::Placement* out) {
  out->set_epoch(p.epoch);
  out->set_num_logical_experts(p.num_logical);
  out->set_num_slots(p.num_slots);
  out->mutable_worker_slot_begin()->Add(p.worker_begin.begin(), p.worker_begin.end());
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
  p.worker_begin.assign(in.worker_slot_begin().begin(), in.worker_slot_begin().end());
  if (p.worker_begin.size() < 2) {
    return absl::InvalidArgumentError("placement: worker_slot_begin needs at least 2 entries");
  }
  p.num_workers = static_cast<int32_t>(p.worker_begin.size()) - 1;
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
  out->set_formed_epoch(mesh.formed_epoch);
  out->set_incarnation(mesh.incarnation);
  out->set_recovering(mesh.recovering);
  out->set_complete(mesh.complete);
  out->set_ready(mesh.ready);
  for (const MemberInfo& m : mesh.members) {
    pb::Member* pm = out->add_members();
    pm->set_rank(m.rank);
    pm->set_role(m.role == Role::kAttention ? pb::ROLE_ATTENTION : pb::ROLE_EXPERT);
    pm->set_grpc_address(m.grpc_address);
    pm->set_transport_address(m.transport_address);
    pm->set_staging_address(m.staging_address);
    pm->set_ready(m.ready);
    pm->set_alive(m.alive);
    pm->set_last_heartbeat_unix_ms(0);
    pm->set_dropped(m.dropped);
    pm->set_dropped_epoch(m.dropped_epoch);
    pm->set_joining(m.joining);
  }
  PlacementToProto(mesh.placement, out->mutable_placement());
  out->set_version(mesh.version);
  if (mesh.next.has_value()) {
    pb::Transition* t = out->mutable_next();
    t->set_epoch(mesh.next->placement.epoch);
    PlacementToProto(mesh.next->placement, t->mutable_placement());
    t->set_state(mesh.next->state == TransitionState::kCommitted ? pb::Transition::STATE_COMMITTED
                                                                 : pb::Transition::STATE_STAGING);
  }
}

bool CoordinatorService::Satisfied(const ParkedCall& c, const MeshView& mesh) {
  if (c.newer_than_version > 0) return mesh.version > c.newer_than_version;
  return c.wait_ready ? mesh.ready : mesh.complete;
}

grpc::ServerUnaryReactor* CoordinatorService::Register(grpc::CallbackServerContext* ctx,
                                                       const pb::RegisterRequest* req,
                                                       pb::RegisterResponse* resp) {
  Role role;
  if (req->role() == pb::ROLE_ATTENTION) {
    role = Role::kAttention;
  } else if (req->role() == pb::ROLE_EXPERT) {
    role = Role::kExpert;
  } else {
    return Done(ctx, absl::InvalidArgumentError("role must be ROLE_ATTENTION or ROLE_EXPERT"));
  }
  std::optional<RecoveryInfo> recovery;
  if (req->has_recovery()) {
    recovery.emplace();
    recovery->serving_epoch = req->recovery().serving_epoch();
    recovery->generation = req->recovery().generation();
    if (req->recovery().has_placement()) {
      absl::StatusOr<eplb::Placement> p = PlacementFromProto(req->recovery().placement());
      if (!p.ok()) return Done(ctx, Annotate(p.status(), "recovery.placement"));
      recovery->placement = *std::move(p);
    }
  }
  uint64_t registration = 0;
  auto rank = core_->Register(role, req->index(), req->grpc_address(), req->transport_address(),
                              req->worker_name(), req->staging_address(), &registration,
                              recovery.has_value() ? &*recovery : nullptr);
  if (rank.ok()) {
    resp->set_rank(*rank);
    resp->set_registration(registration);
    resp->set_epoch(core_->epoch());
  }
  return Done(ctx, rank.status());
}

CoordinatorService::CoordinatorService(CoordinatorCore* core,
                                       std::chrono::milliseconds max_mesh_wait)
    : core_(core), max_mesh_wait_(max_mesh_wait) {
  core_->SetChangeListener([this] {
    std::lock_guard<std::mutex> lock(mu_);
    changed_ = true;
    cv_.notify_all();
  });
  waiter_ = std::thread([this] { WaiterLoop(); });
}

CoordinatorService::~CoordinatorService() {
  core_->SetChangeListener(nullptr);
  Drain();
  waiter_.join();
}

void CoordinatorService::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
  cv_.notify_all();
}

void CoordinatorService::WaiterLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (parked_.empty()) {
      if (draining_) return;
      cv_.wait(lock, [this] { return draining_ || !parked_.empty(); });
      continue;
    }
    auto earliest = parked_.front().answer_by;
    for (const ParkedCall& c : parked_) earliest = std::min(earliest, c.answer_by);
    if (!changed_ && !draining_ && std::chrono::steady_clock::now() < earliest) {
      cv_.wait_until(lock, earliest, [this] { return changed_ || draining_; });
      continue;
    }
    // Look at the mesh without holding mu_ (the core's listener takes it).
    std::vector<ParkedCall> calls;
    calls.swap(parked_);
    changed_ = false;
    const bool drain = draining_;
    lock.unlock();
    const MeshView mesh = core_->GetMesh();
    const auto now = std::chrono::steady_clock::now();
    std::vector<ParkedCall> keep;
    for (ParkedCall& c : calls) {
      if (!Satisfied(c, mesh) && !drain && now < c.answer_by) {
        keep.push_back(c);
        continue;
      }
      MeshToProto(mesh, c.response);
      SY_LOG(DEBUG) << "rpc GetMesh (waited) ok in "
                    << std::chrono::duration<double, std::milli>(now - c.start).count() << " ms";
      c.reactor->Finish(grpc::Status::OK);
    }
    lock.lock();
    parked_.insert(parked_.end(), keep.begin(), keep.end());
  }
}

grpc::ServerUnaryReactor* CoordinatorService::GetMesh(grpc::CallbackServerContext* ctx,
                                                      const pb::GetMeshRequest* req,
                                                      pb::Mesh* resp) {
  const auto start = std::chrono::steady_clock::now();
  MeshView mesh = core_->GetMesh();
  if (req->wait_complete() || req->wait_ready() || req->newer_than_version() > 0) {
    ParkedCall call{nullptr, resp, start, start, req->wait_ready(), req->newer_than_version()};
    if (!Satisfied(call, mesh)) {
      // Answer by max_mesh_wait_, or 50 ms before the caller gives up.
      auto answer_by = start + max_mesh_wait_;
      const auto caller_left = ctx->deadline() - std::chrono::system_clock::now();
      if (caller_left < max_mesh_wait_) {
        answer_by = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                caller_left - std::chrono::milliseconds(50));
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (!draining_) {
        call.reactor = ctx->DefaultReactor();
        call.answer_by = answer_by;
        parked_.push_back(call);
        changed_ = true;  // look again: the mesh may have completed since the check above
        cv_.notify_all();
        return call.reactor;
      }
    }
  }
  MeshToProto(mesh, resp);
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* CoordinatorService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                        const pb::HeartbeatRequest* req,
                                                        pb::HeartbeatResponse* resp) {
  HeartbeatInfo info;
  info.ready = req->ready();
  info.serving_epoch = req->serving_epoch();
  info.staged_epoch = req->staged_epoch();
  info.failed_epoch = req->failed_epoch();
  info.failure = req->failure();
  info.mesh_failed_epoch = req->mesh_failed_epoch();
  info.mesh_failure = req->mesh_failure();
  for (const pb::LoadReport& r : req->load()) {
    LoadSample ls;
    ls.epoch = r.epoch();
    ls.first_step = r.first_step();
    ls.steps = r.steps();
    for (const pb::LayerLoad& l : r.layers()) {
      ls.slot_tokens.emplace_back(l.slot_tokens().begin(), l.slot_tokens().end());
    }
    info.load.push_back(std::move(ls));
  }
  info.registration = req->registration();
  if (info.registration == 0) {
    return Done(ctx,
                absl::InvalidArgumentError(
                    "registration must be set (the token RegisterResponse.registration gave)"));
  }
  auto epoch = core_->Heartbeat(req->rank(), info);
  if (epoch.ok()) {
    resp->set_epoch(*epoch);
    resp->set_version(core_->version());
  }
  return Done(ctx, epoch.status());
}

}  // namespace sy::coordinator
