#include "services/coordinator/admin_service.h"

#include <chrono>

#include "services/api/grpc_status.h"

namespace sy::coordinator {

namespace apb = ::switchyard::v1;

void RecordToProto(const RebalanceRecord& r, apb::RebalanceRecord* out) {
  out->set_id(r.id);
  out->set_trigger(r.trigger);
  out->set_outcome(r.outcome);
  out->set_reason(r.reason);
  out->set_policy(r.policy);
  out->set_planner(r.planner);
  out->set_epoch_before(r.epoch_before);
  out->set_epoch_after(r.epoch_after);
  out->set_balancedness_before(r.balancedness_before);
  out->set_balancedness_after(r.balancedness_after);
  out->set_moved_experts(r.moved_experts);
  out->set_moved_bytes(r.moved_bytes);
  out->set_rounds(r.rounds);
  out->set_seconds(r.seconds);
  out->set_started_unix_ms(r.started_unix_ms);
}

AdminService::AdminService(CoordinatorCore* core, LoadWindow* window, Rebalancer* rebalancer,
                           const security::ApiKeys* keys)
    : core_(core), window_(window), rebalancer_(rebalancer), keys_(keys) {}

// Finishes `ctx`'s call with the key check's failure; false when it passed.
bool AdminService::Refused(grpc::CallbackServerContext* ctx, grpc::ServerUnaryReactor** out) {
  if (keys_ == nullptr) return false;
  const absl::Status st = keys_->Check(*ctx, security::Right::kAdmin);
  if (st.ok()) return false;
  *out = ctx->DefaultReactor();
  (*out)->Finish(api::ToGrpcStatus(st));
  return true;
}

AdminService::~AdminService() {
  std::vector<std::thread> runs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    runs.swap(runs_);
  }
  for (auto& t : runs) t.join();
}

grpc::ServerUnaryReactor* AdminService::Status(grpc::CallbackServerContext* ctx,
                                               const apb::StatusRequest*,
                                               apb::StatusResponse* resp) {
  if (grpc::ServerUnaryReactor* refused = nullptr; Refused(ctx, &refused)) return refused;
  const MeshView mesh = core_->GetMesh();
  resp->set_epoch(mesh.epoch);
  resp->set_version(mesh.version);
  const int32_t num_aw = [&] {
    int32_t n = 0;
    for (const MemberInfo& m : mesh.members) n += m.role == Role::kAttention ? 1 : 0;
    return n;
  }();
  for (const MemberInfo& m : mesh.members) {
    apb::AdminMember* am = resp->add_members();
    am->set_rank(m.rank);
    am->set_role(m.role == Role::kAttention ? "attention" : "expert");
    am->set_index(m.role == Role::kAttention ? m.rank : m.rank - num_aw);
    am->set_grpc_address(m.grpc_address);
    am->set_alive(m.alive);
    am->set_dropped(m.dropped);
    am->set_joining(m.joining);
    am->set_ready(m.ready);
    am->set_serving_epoch(m.serving_epoch);
    am->set_staged_epoch(m.staged_epoch);
  }
  resp->mutable_moe_layers()->Add(mesh.placement.layers.begin(), mesh.placement.layers.end());
  for (const auto& row : mesh.placement.phy2log) {
    resp->add_placement()->mutable_phy2log()->Add(row.begin(), row.end());
  }
  resp->mutable_worker_slot_begin()->Add(mesh.placement.worker_begin.begin(),
                                         mesh.placement.worker_begin.end());
  const LoadSnapshot snap = window_->Get(mesh.epoch, std::chrono::steady_clock::now());
  resp->set_window_steps(snap.steps);
  if (snap.layer_balancedness.has_value()) {
    resp->set_has_balancedness(true);
    resp->set_balancedness(snap.balancedness);
    resp->mutable_layer_balancedness()->Add(snap.layer_balancedness->begin(),
                                            snap.layer_balancedness->end());
  }
  for (const RebalanceRecord& r : rebalancer_->History()) RecordToProto(r, resp->add_rebalances());
  resp->set_rebalancing(rebalancer_->running());
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::Load(grpc::CallbackServerContext* ctx,
                                             const apb::LoadRequest*, apb::LoadResponse* resp) {
  if (grpc::ServerUnaryReactor* refused = nullptr; Refused(ctx, &refused)) return refused;
  const MeshView mesh = core_->GetMesh();
  const LoadSnapshot snap = window_->Get(mesh.epoch, std::chrono::steady_clock::now());
  resp->set_window_steps(snap.steps);
  for (size_t l = 0; l < snap.logical.size(); ++l) {
    apb::LayerLoadRow* row = resp->add_layers();
    row->set_layer(l < mesh.placement.layers.size() ? mesh.placement.layers[l] : -1);
    row->mutable_tokens_per_step()->Add(snap.logical[l].begin(), snap.logical[l].end());
  }
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::Rebalance(grpc::CallbackServerContext* ctx,
                                                  const apb::RebalanceRequest* req,
                                                  apb::RebalanceRecord* resp) {
  if (grpc::ServerUnaryReactor* refused = nullptr; Refused(ctx, &refused)) return refused;
  auto* reactor = ctx->DefaultReactor();
  const std::string policy = req->policy();
  const bool force = req->force();
  std::lock_guard<std::mutex> lock(mu_);
  runs_.emplace_back([this, reactor, resp, policy, force] {
    absl::StatusOr<RebalanceRecord> r = rebalancer_->RunOnce("operator", policy, force);
    if (r.ok()) RecordToProto(*r, resp);
    reactor->Finish(api::ToGrpcStatus(r.status()));
  });
  return reactor;
}

}  // namespace sy::coordinator
