#include "services/router/router_core.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::router {
namespace {

std::string RandomPrefix() {
  std::random_device rd;
  const uint64_t bits = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return absl::StrFormat("r%08x", static_cast<uint32_t>(bits ^ (bits >> 32)));
}

}  // namespace

void RouterCall::Cancel() {
  std::shared_ptr<BackendCall> call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    call = call_;
  }
  if (call != nullptr) call->Cancel();
}

void RouterCall::Attach(std::shared_ptr<BackendCall> call) {
  bool cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    call_ = call;
    cancel = cancelled_;
  }
  // Cancelled before the backend call existed: pass it on now.
  if (cancel && call != nullptr) call->Cancel();
}

RouterCore::RouterCore(const RouterCoreOptions& options, BackendFactory factory)
    : options_(options), factory_(std::move(factory)), id_prefix_(RandomPrefix()) {}

RouterCore::~RouterCore() {
  std::vector<std::shared_ptr<RouterCall>> handles;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, f] : in_flight_) {
      if (auto h = f.handle.lock()) handles.push_back(std::move(h));
    }
  }
  for (auto& h : handles) h->Cancel();
  std::unique_lock<std::mutex> lock(mu_);
  drained_.wait(lock, [this] { return in_flight_.empty(); });
}

bool RouterCore::SetBackends(const std::vector<std::string>& addresses) {
  std::lock_guard<std::mutex> membership_lock(membership_mu_);
  std::map<std::string, std::shared_ptr<Backend>> next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& a : addresses) {
      if (a.empty() || next.count(a) > 0) continue;
      auto it = backends_.find(a);
      if (it != backends_.end()) next[a] = it->second;
    }
  }
  // New backends are made outside the lock (a factory may be slow).
  std::vector<std::string> added, removed;
  for (const std::string& a : addresses) {
    if (a.empty() || next.count(a) > 0) continue;
    auto b = std::make_shared<Backend>();
    b->impl = factory_(a);
    next[a] = std::move(b);
    added.push_back(a);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [a, b] : backends_) {
    if (next.count(a) == 0) removed.push_back(a);
  }
  backends_ = std::move(next);
  for (const auto& a : added) SY_LOG(INFO) << "router: attention worker added: " << a;
  for (const auto& a : removed) SY_LOG(INFO) << "router: attention worker removed: " << a;
  return !backends_.empty();
}

bool RouterCore::serving() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !backends_.empty();
}

std::string RouterCore::NextRequestIdLocked() { return absl::StrCat(id_prefix_, "-", next_id_++); }

std::shared_ptr<RouterCore::Backend> RouterCore::PickBackendLocked() {
  std::vector<std::shared_ptr<Backend>> all;
  all.reserve(backends_.size());
  for (const auto& [a, b] : backends_) all.push_back(b);
  if (all.empty()) return nullptr;
  const size_t start = next_pick_++ % all.size();
  std::shared_ptr<Backend> best;
  for (size_t k = 0; k < all.size(); ++k) {
    const auto& b = all[(start + k) % all.size()];
    if (best == nullptr || b->outstanding < best->outstanding ||
        (b->outstanding == best->outstanding && b->in_flight < best->in_flight)) {
      best = b;
    }
  }
  return best;
}

absl::StatusOr<std::shared_ptr<RouterCall>> RouterCore::Submit(engine::GenerationRequest request,
                                                               Deadline deadline,
                                                               BackendCallbacks callbacks) {
  SY_RETURN_IF_ERROR(api::ValidateRequest(request, options_.limits));
  std::shared_ptr<Backend> backend;
  std::shared_ptr<RouterCall> handle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (backends_.empty()) {
      return absl::UnavailableError("no attention worker is available");
    }
    if (static_cast<int64_t>(in_flight_.size()) >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat("the router is at its limit of ",
                                                       options_.max_queue,
                                                       " requests in flight; retry later"));
    }
    if (request.id.empty()) {
      request.id = NextRequestIdLocked();
    } else if (in_flight_.count(request.id) > 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("request_id '", request.id, "' is already in flight"));
    }
    backend = PickBackendLocked();
    InFlight f;
    f.backend = backend;
    f.prompt_tokens = static_cast<int64_t>(request.prompt.size());
    f.max_new_tokens = request.stopping.max_new_tokens;
    f.charged = f.prompt_tokens + f.max_new_tokens;
    handle = std::shared_ptr<RouterCall>(new RouterCall(request.id, backend->impl->address()));
    f.handle = handle;
    backend->outstanding += f.charged;
    backend->in_flight += 1;
    in_flight_.emplace(request.id, std::move(f));
  }
  SY_LOG(DEBUG) << "router: request " << request.id << " -> " << handle->backend_address();

  // The wrappers keep the load accounting, then hand over to the caller. The
  // core outlives every call (its destructor waits), so `this` stays valid
  // until OnDone has run; nothing touches the core after that.
  BackendCallbacks wrapped;
  wrapped.on_update = [this, id = request.id,
                       on_update = std::move(callbacks.on_update)](engine::RequestUpdate u) {
    OnUpdate(id, u);
    on_update(std::move(u));
  };
  wrapped.on_done = [this, id = request.id, on_done = std::move(callbacks.on_done)](
                        absl::Status status) { on_done(OnDone(id, std::move(status))); };
  std::shared_ptr<BackendCall> call = backend->impl->Start(request, deadline, std::move(wrapped));
  handle->Attach(std::move(call));
  return handle;
}

void RouterCore::OnUpdate(const std::string& id, const engine::RequestUpdate& update) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(id);
  if (it == in_flight_.end()) return;
  InFlight& f = it->second;
  f.produced += static_cast<int64_t>(update.new_tokens.size());
  const int64_t now = f.prompt_tokens + std::max<int64_t>(0, f.max_new_tokens - f.produced);
  f.backend->outstanding -= f.charged - now;
  f.charged = now;
  if (update.finish != engine::FinishReason::kNone) f.finished = true;
}

absl::Status RouterCore::OnDone(const std::string& id, absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(id);
  if (it == in_flight_.end()) return status;
  if (status.ok() && !it->second.finished) {
    status =
        absl::InternalError(absl::StrCat("attention worker ", it->second.backend->impl->address(),
                                         " ended request ", id, " without a finish reason"));
  }
  it->second.backend->outstanding -= it->second.charged;
  it->second.backend->in_flight -= 1;
  in_flight_.erase(it);
  // Notified under the lock: the destructor may free the core as soon as it
  // sees the map empty, and it cannot before this lock is released.
  if (in_flight_.empty()) drained_.notify_all();
  return status;
}

std::vector<RouterCore::BackendLoad> RouterCore::Loads() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<BackendLoad> out;
  for (const auto& [a, b] : backends_) out.push_back({a, b->outstanding, b->in_flight});
  return out;
}

int64_t RouterCore::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(in_flight_.size());
}

}  // namespace sy::router
