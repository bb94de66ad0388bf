// RAII owners of the UCP handles used by the ucx transport, and the bridge
// from ucs_status_t to absl::Status.
//
// Ownership: each object owns exactly one UCP handle and releases it in its
// destructor. The destruction order the UCP API needs (endpoints and
// requests before their worker, the worker before its context) is the
// owner's job; UcxTransport does it in Teardown().
//
// Threading: a worker and everything made from it are driven by one thread at
// a time (the worker is created in UCS_THREAD_MODE_SINGLE).
#pragma once

#include <ucp/api/ucp.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sy::transport::ucx {

// The absl code for a UCS error: link and endpoint failures, resets and
// unreachable peers are Unavailable; timeouts DeadlineExceeded.
absl::StatusCode UcsStatusToCode(ucs_status_t status);

// "<call>: <UCX's message> (<file>:<line>)" with the mapped code.
absl::Status UcsError(ucs_status_t status, std::string_view call, const char* file, int line);

// Evaluates a UCP call returning ucs_status_t and returns an absl::Status
// naming the call and the call site from the enclosing function on error.
#define SY_UCX_RETURN_IF_ERROR(call)                                                    \
  do {                                                                                  \
    const ucs_status_t sy_ucs_status_ = (call);                                         \
    if (sy_ucs_status_ != UCS_OK) {                                                     \
      return ::sy::transport::ucx::UcsError(sy_ucs_status_, #call, __FILE__, __LINE__); \
    }                                                                                   \
  } while (false)

// A ucp_context_h with the tag-matching feature. Transports and devices come
// from UCX's own configuration (UCX_TLS, UCX_NET_DEVICES, ... in the
// environment), never from this code; `port_range` ("FIRST-LAST", or empty
// for any) bounds the TCP ports its listeners bind.
class UcpContext {
 public:
  static absl::StatusOr<std::unique_ptr<UcpContext>> Create(const std::string& name,
                                                            const std::string& port_range = "");
  ~UcpContext();
  UcpContext(const UcpContext&) = delete;
  UcpContext& operator=(const UcpContext&) = delete;

  ucp_context_h get() const { return context_; }

 private:
  explicit UcpContext(ucp_context_h context) : context_(context) {}
  ucp_context_h context_;
};

// A ucp_worker_h of a UcpContext, which must outlive it: used from one
// thread, or with `serialized` from several, one at a time.
class UcpWorker {
 public:
  static absl::StatusOr<std::unique_ptr<UcpWorker>> Create(const UcpContext& context,
                                                           bool serialized = false);
  ~UcpWorker();
  UcpWorker(const UcpWorker&) = delete;
  UcpWorker& operator=(const UcpWorker&) = delete;

  ucp_worker_h get() const { return worker_; }
  // A copy of the worker's address blob (what peers pass to ucp_ep_create).
  absl::StatusOr<std::string> Address() const;
  // One ucp_worker_progress(); returns how many events it handled.
  unsigned Progress() { return ucp_worker_progress(worker_); }
  // Progresses until every operation started on the worker has completed
  // (ucp_worker_flush_nbx) or `deadline` passes (DeadlineExceeded).
  absl::Status Flush(absl::Time deadline);

 private:
  explicit UcpWorker(ucp_worker_h worker) : worker_(worker) {}
  ucp_worker_h worker_;
};

// A request returned by a non-blocking UCP call (send, receive, close).
// Move-only; freeing it (destructor or Reset) while it is still in flight
// tells UCX to release it on completion, so the buffers it uses must stay
// valid until then: callers complete or cancel a request before dropping it.
class UcpRequest {
 public:
  UcpRequest() = default;
  explicit UcpRequest(void* request) : request_(request) {}
  UcpRequest(UcpRequest&& other) noexcept : request_(other.Release()) {}
  UcpRequest& operator=(UcpRequest&& other) noexcept;
  ~UcpRequest() { Reset(); }

  bool empty() const { return request_ == nullptr; }
  void* get() const { return request_; }
  // UCS_INPROGRESS while in flight, then the completion status.
  ucs_status_t Status() const { return ucp_request_check_status(request_); }
  // Frees the request (see the class comment).
  void Reset();
  // Gives up ownership without freeing: only for requests that die with
  // their worker.
  void* Release() {
    void* request = request_;
    request_ = nullptr;
    return request;
  }

 private:
  void* request_ = nullptr;
};

// A ucp_ep_h to a remote worker, with error handling mode PEER: a failure of
// the remote side completes the endpoint's requests with an error and calls
// `on_error(arg, ...)` from within ucp_worker_progress(). The worker must
// outlive the endpoint; `arg` must outlive the worker.
class UcpEndpoint {
 public:
  static absl::StatusOr<std::unique_ptr<UcpEndpoint>> Create(UcpWorker* worker,
                                                             const std::string& remote_address,
                                                             ucp_err_handler_cb_t on_error,
                                                             void* arg);
  // Force-closes the endpoint if Close() was not called.
  ~UcpEndpoint();
  UcpEndpoint(const UcpEndpoint&) = delete;
  UcpEndpoint& operator=(const UcpEndpoint&) = delete;

  ucp_ep_h get() const { return ep_; }
  bool is_open() const { return ep_ != nullptr; }

  // Closes the endpoint. `flush`: lets outstanding operations finish first,
  // progressing the worker until `deadline` at most; otherwise (and for a
  // failed endpoint) force-closes, completing outstanding requests with
  // UCS_ERR_CANCELED at once. Idempotent. A close UCX has not finished by
  // `deadline` goes on as the worker progresses: see closing().
  void Close(bool flush, absl::Time deadline);

  // Whether a close is still in progress. The worker must not be destroyed
  // while one is: UCX 1.13 aborts in ucp_worker_destroy on an endpoint whose
  // close has begun and not ended (assertion on its `create` refcount).
  bool closing() const;

  // Frees the request of a close still in progress (UCX finishes the close
  // on its own); must come before the worker is destroyed.
  void ForgetClose() { close_request_.Reset(); }

 private:
  UcpEndpoint(UcpWorker* worker, ucp_ep_h ep) : worker_(worker), ep_(ep) {}
  UcpWorker* worker_;
  ucp_ep_h ep_;
  UcpRequest close_request_;  // of a close that did not end within its deadline
};

}  // namespace sy::transport::ucx
