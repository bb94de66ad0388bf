#include "transport/ucx/ucp_handles.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace sy::transport::ucx {
namespace {

struct ConfigDeleter {
  void operator()(ucp_config_t* config) const { ucp_config_release(config); }
};

}  // namespace

absl::StatusCode UcsStatusToCode(ucs_status_t status) {
  if (status == UCS_OK) return absl::StatusCode::kOk;
  if (UCS_IS_LINK_ERROR(status) || UCS_IS_ENDPOINT_ERROR(status)) {
    return absl::StatusCode::kUnavailable;
  }
  switch (status) {
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_IO_ERROR:
      return absl::StatusCode::kUnavailable;
    case UCS_ERR_TIMED_OUT:
      return absl::StatusCode::kDeadlineExceeded;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      return absl::StatusCode::kInvalidArgument;
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::StatusCode::kResourceExhausted;
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NOT_IMPLEMENTED:
      return absl::StatusCode::kUnimplemented;
    case UCS_ERR_CANCELED:
      return absl::StatusCode::kCancelled;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::Status UcsError(ucs_status_t status, std::string_view call, const char* file, int line) {
  return absl::Status(
      UcsStatusToCode(status),
      absl::StrCat(std::string(call), ": ", ucs_status_string(status), " (", file, ":", line, ")"));
}

absl::StatusOr<std::unique_ptr<UcpContext>> UcpContext::Create(const std::string& name,
                                                               const std::string& port_range) {
  ucp_config_t* raw_config = nullptr;
  // nullptr env prefix and file: UCX reads its usual UCX_* environment.
  SY_UCX_RETURN_IF_ERROR(ucp_config_read(nullptr, nullptr, &raw_config));
  std::unique_ptr<ucp_config_t, ConfigDeleter> config(raw_config);
  if (!port_range.empty()) {
    // The transports' own key (UCX_TCP_PORT_RANGE without its prefixes);
    // ucp_config_modify hands keys it does not know itself to every UCT
    // transport that has one.
    SY_UCX_RETURN_IF_ERROR(ucp_config_modify(config.get(), "PORT_RANGE", port_range.c_str()));
  }

  ucp_params_t params{};
  params.field_mask =
      UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_TAG;
  params.mt_workers_shared = 0;
  params.name = name.c_str();
  ucp_context_h context = nullptr;
  SY_UCX_RETURN_IF_ERROR(ucp_init(&params, config.get(), &context));
  return std::unique_ptr<UcpContext>(new UcpContext(context));
}

UcpContext::~UcpContext() { ucp_cleanup(context_); }

absl::StatusOr<std::unique_ptr<UcpWorker>> UcpWorker::Create(const UcpContext& context,
                                                             bool serialized) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = serialized ? UCS_THREAD_MODE_SERIALIZED : UCS_THREAD_MODE_SINGLE;
  ucp_worker_h worker = nullptr;
  SY_UCX_RETURN_IF_ERROR(ucp_worker_create(context.get(), &params, &worker));
  return std::unique_ptr<UcpWorker>(new UcpWorker(worker));
}

UcpWorker::~UcpWorker() { ucp_worker_destroy(worker_); }

absl::StatusOr<std::string> UcpWorker::Address() const {
  ucp_address_t* address = nullptr;
  size_t length = 0;
  SY_UCX_RETURN_IF_ERROR(ucp_worker_get_address(worker_, &address, &length));
  std::string blob(reinterpret_cast<const char*>(address), length);
  ucp_worker_release_address(worker_, address);
  return blob;
}

absl::Status UcpWorker::Flush(absl::Time deadline) {
  ucp_request_param_t params{};
  const ucs_status_ptr_t result = ucp_worker_flush_nbx(worker_, &params);
  if (UCS_PTR_IS_ERR(result)) {
    return UcsError(UCS_PTR_STATUS(result), "ucp_worker_flush_nbx", __FILE__, __LINE__);
  }
  if (result == nullptr) return absl::OkStatus();
  UcpRequest request(result);
  while (request.Status() == UCS_INPROGRESS) {
    if (absl::Now() >= deadline) return absl::DeadlineExceededError("ucp_worker_flush_nbx");
    Progress();
  }
  return absl::OkStatus();
}

UcpRequest& UcpRequest::operator=(UcpRequest&& other) noexcept {
  if (this != &other) {
    Reset();
    request_ = other.Release();
  }
  return *this;
}

void UcpRequest::Reset() {
  if (request_ != nullptr) ucp_request_free(std::exchange(request_, nullptr));
}

absl::StatusOr<std::unique_ptr<UcpEndpoint>> UcpEndpoint::Create(UcpWorker* worker,
                                                                 const std::string& remote_address,
                                                                 ucp_err_handler_cb_t on_error,
                                                                 void* arg) {
  if (remote_address.empty()) return absl::InvalidArgumentError("empty UCX worker address");
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(remote_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = on_error;
  params.err_handler.arg = arg;
  ucp_ep_h ep = nullptr;
  SY_UCX_RETURN_IF_ERROR(ucp_ep_create(worker->get(), &params, &ep));
  return std::unique_ptr<UcpEndpoint>(new UcpEndpoint(worker, ep));
}

UcpEndpoint::~UcpEndpoint() { Close(/*flush=*/false, absl::InfinitePast()); }

void UcpEndpoint::Close(bool flush, absl::Time deadline) {
  if (ep_ == nullptr) return;
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  params.flags = flush ? 0 : UCP_EP_CLOSE_FLAG_FORCE;
  const ucs_status_ptr_t result = ucp_ep_close_nbx(std::exchange(ep_, nullptr), &params);
  if (!UCS_PTR_IS_PTR(result)) return;  // closed at once (or failed: nothing left to wait for)
  UcpRequest request(result);
  while (request.Status() == UCS_INPROGRESS && absl::Now() < deadline) worker_->Progress();
  if (request.Status() != UCS_INPROGRESS) return;
  if (flush) SY_LOG(WARNING) << "UCX endpoint close did not finish in time; it goes on";
  close_request_ = std::move(request);
}

bool UcpEndpoint::closing() const {
  return !close_request_.empty() && close_request_.Status() == UCS_INPROGRESS;
}

}  // namespace sy::transport::ucx
