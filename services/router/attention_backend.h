// The router's view of one attention worker: something that runs a validated
// generation request and streams its updates back. The gRPC implementation
// (grpc_attention_backend.h) calls switchyard.internal.v1.AttentionWorker;
// tests use FakeAttentionBackend (fake_attention_backend.h).
//
// Threads: Start() and BackendCall::Cancel() may be called from any thread.
// The callbacks of one call run one at a time, in order, on a thread of the
// backend's choosing (possibly before Start() returns); on_done runs exactly
// once and last.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "engine/engine.h"

namespace sy::router {

// Wall-clock deadline of a request; time_point::max() means none.
using Deadline = std::chrono::system_clock::time_point;

struct BackendCallbacks {
  // Tokens, logprobs and finally the finish reason and timings, as the
  // engine reports them.
  std::function<void(engine::RequestUpdate)> on_update;
  // The call is over: OK after the update carrying the finish reason, or why
  // it failed (CANCELLED after Cancel(), DEADLINE_EXCEEDED, UNAVAILABLE, ...).
  std::function<void(absl::Status)> on_done;
};

// One request in flight on a backend. Owned by whoever started it (shared, so
// that it stays valid after on_done for a late Cancel()).
class BackendCall {
 public:
  virtual ~BackendCall() = default;
  // Asks the backend to stop the request and free its resources. Idempotent;
  // a no-op after the call is over. on_done still follows.
  virtual void Cancel() = 0;
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  virtual const std::string& address() const = 0;
  // Starts `request` (validated, with its id). The backend keeps whatever it
  // needs, callbacks included, alive until on_done has returned.
  virtual std::shared_ptr<BackendCall> Start(const engine::GenerationRequest& request,
                                             Deadline deadline, BackendCallbacks callbacks) = 0;
};

// Makes the backend for an attention worker's address ("host:port").
using BackendFactory = std::function<std::shared_ptr<AttentionBackend>(const std::string& address)>;

}  // namespace sy::router
