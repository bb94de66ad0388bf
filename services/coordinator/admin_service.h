// gRPC front of the Admin API (switchyard.v1.Admin, callback API) on the
// coordinator: Status, Load and Rebalance over the core, the load window
// and the rebalancer, which must outlive it.
//
// Rebalance runs for as long as the re-placement takes (seconds): it runs
// on a thread of its own, never on one of gRPC's few callback threads.
#pragma once

#include <mutex>
#include <thread>
#include <vector>

#include "services/coordinator/coordinator_core.h"
#include "services/coordinator/load_window.h"
#include "services/coordinator/rebalancer.h"
#include "services/security/security.h"
#include "switchyard/v1/admin.grpc.pb.h"

namespace sy::coordinator {

void RecordToProto(const RebalanceRecord& r, ::switchyard::v1::RebalanceRecord* out);

class AdminService final : public ::switchyard::v1::Admin::CallbackService {
 public:
  // `keys` (may be null: no key is asked for) must outlive the service; each
  // RPC then needs a key with the "admin" right.
  AdminService(CoordinatorCore* core, LoadWindow* window, Rebalancer* rebalancer,
               const security::ApiKeys* keys = nullptr);
  // Waits for rebalances in progress.
  ~AdminService() override;

  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* ctx,
                                   const ::switchyard::v1::StatusRequest* req,
                                   ::switchyard::v1::StatusResponse* resp) override;
  grpc::ServerUnaryReactor* Load(grpc::CallbackServerContext* ctx,
                                 const ::switchyard::v1::LoadRequest* req,
                                 ::switchyard::v1::LoadResponse* resp) override;
  grpc::ServerUnaryReactor* Rebalance(grpc::CallbackServerContext* ctx,
                                      const ::switchyard::v1::RebalanceRequest* req,
                                      ::switchyard::v1::RebalanceRecord* resp) override;

 private:
  bool Refused(grpc::CallbackServerContext* ctx, grpc::ServerUnaryReactor** out);

  CoordinatorCore* core_;
  LoadWindow* window_;
  Rebalancer* rebalancer_;
  const security::ApiKeys* keys_;
  std::mutex mu_;
  std::vector<std::thread> runs_;  // guarded by mu_
};

}  // namespace sy::coordinator
