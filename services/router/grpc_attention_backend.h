// AttentionBackend over gRPC: forwards a request to an attention worker's
// switchyard.internal.v1.AttentionWorker/Generate and turns its response
// stream into engine updates. Uses the callback client API (one
// ClientReadReactor per call, no thread per call). Cancel() calls
// AttentionWorker/Cancel for the request's id, then TryCancel() (a call that
// merely ends is, to the worker, a router gone: with de-duplication it keeps
// the request running for a retry); a no-op once the call has ended. The
// request's deadline becomes the call's deadline; GenerationRequest::dedup
// travels as the kDedupMetadata header.
//
// Ownership: each call keeps itself and its backend (channel, stub) alive
// until its on_done has returned. Thread-safe.
#pragma once

#include <memory>
#include <string>

#include "services/router/attention_backend.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"

namespace sy::router {

class GrpcAttentionBackend : public AttentionBackend,
                             public std::enable_shared_from_this<GrpcAttentionBackend> {
 public:
  // The channel connects lazily; an unreachable worker fails each call with
  // UNAVAILABLE.
  static std::shared_ptr<GrpcAttentionBackend> Create(const std::string& address);

  const std::string& address() const override { return address_; }
  std::shared_ptr<BackendCall> Start(const engine::GenerationRequest& request, Deadline deadline,
                                     BackendCallbacks callbacks) override;

  switchyard::internal::v1::AttentionWorker::Stub* stub() { return stub_.get(); }

 private:
  explicit GrpcAttentionBackend(std::string address);

  const std::string address_;
  std::unique_ptr<switchyard::internal::v1::AttentionWorker::Stub> stub_;
};

// The factory RouterCore uses in production.
BackendFactory GrpcBackendFactory();

}  // namespace sy::router
