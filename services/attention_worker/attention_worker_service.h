// gRPC front of an attention worker (switchyard.internal.v1.AttentionWorker,
// callback API): Generate streams a request's updates from the step loop to
// the router (a call ended at its deadline cancels the request; one ended
// otherwise releases it to the core, which keeps it running for a retry
// while de-duplication is on); Cancel cancels a request by id. Stats reports
// the engine's occupancy (KV blocks, queues).
#pragma once

#include "services/attention_worker/attention_worker_core.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"

namespace sy::attention_worker {

namespace pb = ::switchyard::internal::v1;

class AttentionWorkerService final : public pb::AttentionWorker::CallbackService {
 public:
  // `core` must outlive the service.
  explicit AttentionWorkerService(AttentionWorkerCore* core) : core_(core) {}

  grpc::ServerWriteReactor<::switchyard::v1::GenerateStreamResponse>* Generate(
      grpc::CallbackServerContext* ctx, const ::switchyard::v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx, const pb::CancelRequest* req,
                                   pb::CancelResponse* resp) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx,
                                  const pb::WorkerStatsRequest* req,
                                  pb::WorkerStats* resp) override;
  grpc::ServerUnaryReactor* Wake(grpc::CallbackServerContext* ctx, const pb::WakeRequest* req,
                                 pb::WakeResponse* resp) override;

 private:
  AttentionWorkerCore* core_;
};

}  // namespace sy::attention_worker
