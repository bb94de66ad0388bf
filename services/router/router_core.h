// RouterCore: the router's logic without gRPC or proto types. It validates a
// request against the model's limits, admits it (a bounded number in flight),
// assigns a request id when the client gave none, and forwards it to the
// attention worker with the least outstanding work, streaming the worker's
// updates back through the caller's callbacks.
//
// Sticky client ids (RouterCoreOptions::sticky_client_ids, on while the
// attention workers de-duplicate): a request whose id the client chose goes
// to the backend that id ranks first by rendezvous hashing over the backend
// addresses (a hash of id and address that every router computes alike), so
// a client retrying it through another router after this one died reaches
// the attention worker that holds it; a failover re-submission goes to the
// next in that ranking. Router-assigned ids go by load. Only such requests
// are marked for de-duplication (GenerationRequest::dedup), and not their
// failover re-submissions (a longer prompt under the same id: a retry of the
// original must not match it, and the first run died with its worker).
//
// Outstanding work of a backend = sum over its in-flight requests of
// (prompt tokens + max_new_tokens - tokens produced so far), updated as tokens
// stream back; ties go round robin.
//
// Failover: a request whose backend call ends UNAVAILABLE before its finish
// (the attention worker died, or is shutting down) is re-submitted to
// another backend (not one it failed on, at most kMaxResubmits times) with
// the prompt plus the tokens already streamed and the rest of its token
// budget; the caller's stream goes on with the new backend's tokens, with no
// gap or duplicate (greedy requests give the tokens they would have). The
// final usage counts the original prompt and every token streamed; after a
// re-submission the timings are the router's (from the request's arrival at
// the router). Prompt logprobs, when asked, were delivered by the first
// backend and are not asked again.
//
// Ownership: the core owns the backend set (shared with the calls still
// running on a backend that was removed). Threads: every method is
// thread-safe; callbacks run on the backends' threads. The destructor cancels
// what is still in flight and waits for it to finish.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "services/api/validate.h"
#include "services/router/attention_backend.h"

namespace sy::router {

struct RouterCoreOptions {
  api::Limits limits;
  int64_t max_queue = 256;         // requests in flight at most; beyond: RESOURCE_EXHAUSTED
  bool sticky_client_ids = false;  // route client-chosen ids by rendezvous hash (above)
};

// The rendezvous score of `address` for request `id`: the same in every
// process (FNV-1a of both, mixed), highest first.
uint64_t RendezvousScore(const std::string& id, const std::string& address);

// The caller's handle on one admitted request.
class RouterCall {
 public:
  const std::string& request_id() const { return request_id_; }
  // The backend it was first sent to.
  const std::string& backend_address() const { return backend_address_; }
  // Cancels the request on its backend (client cancel or deadline). The
  // callbacks still end with on_done. Thread-safe, idempotent.
  void Cancel();

 private:
  friend class RouterCore;
  RouterCall(std::string request_id, std::string backend_address)
      : request_id_(std::move(request_id)), backend_address_(std::move(backend_address)) {}
  void Attach(std::shared_ptr<BackendCall> call);
  bool cancelled();

  const std::string request_id_;
  const std::string backend_address_;
  std::mutex mu_;
  bool cancelled_ = false;
  std::shared_ptr<BackendCall> call_;
};

class RouterCore {
 public:
  static constexpr int kMaxResubmits = 2;

  RouterCore(const RouterCoreOptions& options, BackendFactory factory);
  ~RouterCore();
  RouterCore(const RouterCore&) = delete;
  RouterCore& operator=(const RouterCore&) = delete;

  // Replaces the set of attention workers. Backends of addresses kept keep
  // their load; requests on a removed backend run to completion. Returns
  // whether at least one backend is present (the router can serve).
  bool SetBackends(const std::vector<std::string>& addresses);
  bool serving() const;

  // Validates (INVALID_ARGUMENT naming the field), checks that a backend
  // exists (UNAVAILABLE), admits (RESOURCE_EXHAUSTED when max_queue requests
  // are in flight; ALREADY_EXISTS for a request id in flight) and starts the
  // request. On error no callback is called; otherwise on_done ends the call.
  absl::StatusOr<std::shared_ptr<RouterCall>> Submit(engine::GenerationRequest request,
                                                     Deadline deadline, BackendCallbacks callbacks);

  struct BackendLoad {
    std::string address;
    int64_t outstanding = 0;  // tokens, as defined above
    int64_t in_flight = 0;    // requests
  };
  // Current load of every backend, ordered by address.
  std::vector<BackendLoad> Loads() const;
  int64_t in_flight() const;
  // From now on Submit refuses with UNAVAILABLE (the router is shutting
  // down); requests already admitted run on.
  void StopAdmitting();
  struct Counts {
    int64_t in_flight = 0;
    int64_t waiting_first_token = 0;  // in flight, no token streamed yet
  };
  Counts counts() const;
  int64_t max_queue() const { return options_.max_queue; }
  const api::Limits& limits() const { return options_.limits; }

 private:
  struct Backend {
    std::shared_ptr<AttentionBackend> impl;
    int64_t outstanding = 0;
    int64_t in_flight = 0;
  };
  struct InFlight {
    std::shared_ptr<Backend> backend;
    std::weak_ptr<RouterCall> handle;
    int64_t charged = 0;    // what this request adds to backend->outstanding now
    bool finished = false;  // an update with a finish reason has arrived
    // The request as admitted and the tokens streamed so far; for a
    // re-submission also the caller's callbacks, the backends tried and the
    // attempt running.
    engine::GenerationRequest request;
    Deadline deadline;
    std::vector<int32_t> tokens;
    std::shared_ptr<BackendCallbacks> caller;
    std::vector<std::string> tried;
    int attempt = 0;
    bool sticky = false;  // placed by its client-chosen id's ranking
    std::chrono::steady_clock::time_point arrival;
    double ttft_ms = -1;  // the router's, once a token arrived

    int64_t produced() const { return static_cast<int64_t>(tokens.size()); }
    // Its outstanding work, as defined above.
    int64_t outstanding() const {
      return static_cast<int64_t>(request.prompt.size()) +
             std::max<int64_t>(0, request.stopping.max_new_tokens - produced());
    }
  };

  std::shared_ptr<Backend> PickBackendLocked(const std::vector<std::string>& exclude = {});
  // The backend `id` ranks highest among those not excluded.
  std::shared_ptr<Backend> PickStickyLocked(const std::string& id,
                                            const std::vector<std::string>& exclude = {});
  // Starts attempt `attempt` of request `id` (its request as given) on
  // `backend`, outside the lock.
  void StartAttempt(const std::string& id, int attempt, const engine::GenerationRequest& request,
                    Deadline deadline, const std::shared_ptr<Backend>& backend,
                    const std::shared_ptr<RouterCall>& handle);
  // Load accounting, and the update as the caller sees it (a re-submitted
  // attempt's final usage and timings made the whole request's).
  void OnUpdate(const std::string& id, int attempt, engine::RequestUpdate* update);
  // The attempt ended. Either re-submits the request (returns nullopt: the
  // caller hears nothing) or releases its share and returns the status to
  // report (INTERNAL when a backend ends a call with OK but never sent a
  // finish reason).
  std::optional<absl::Status> OnDone(const std::string& id, int attempt, absl::Status status);
  std::string NextRequestIdLocked();

  const RouterCoreOptions options_;
  const BackendFactory factory_;
  const std::string id_prefix_;  // random per process: ids stay unique across routers

  std::mutex membership_mu_;  // serialises SetBackends() calls
  mutable std::mutex mu_;
  std::condition_variable drained_;
  std::map<std::string, std::shared_ptr<Backend>> backends_;  // by address
  std::unordered_map<std::string, InFlight> in_flight_;       // by request id
  bool draining_ = false;                                     // guarded by mu_ (StopAdmitting)
  uint64_t next_id_ = 0;
  uint64_t next_pick_ = 0;  // rotates the tie-break among equally loaded backends
};

}  // namespace sy::router
