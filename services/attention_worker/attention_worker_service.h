// gRPC front of an attention worker (switchyard.internal.v1.AttentionWorker,
// callback API): Generate streams a request's updates from the step loop to
// the router; cancelling the call cancels the request. Stats reports the
// engine's occupancy (KV blocks, queues).
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
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx,
                                  const pb::WorkerStatsRequest* req,
                                  pb::WorkerStats* resp) override;
  grpc::ServerUnaryReactor* Wake(grpc::CallbackServerContext* ctx, const pb::WakeRequest* req,
                                 pb::WakeResponse* resp) override;

 private:
  AttentionWorkerCore* core_;
};

}  // namespace sy::attention_worker
