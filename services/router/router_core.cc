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

uint64_t RendezvousScore(const std::string& id, const std::string& address) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  auto add = [&h](unsigned char c) { h = (h ^ c) * 0x100000001b3ull; };
  for (const char c : id) add(static_cast<unsigned char>(c));
  add(0xff);  // no id/address split collides with another
  for (const char c : address) add(static_cast<unsigned char>(c));
  // splitmix64's finaliser: FNV alone ranks addresses that differ in the last
  // character by that character.
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

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

bool RouterCall::cancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
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

std::shared_ptr<RouterCore::Backend> RouterCore::PickStickyLocked(
    const std::string& id, const std::vector<std::string>& exclude) {
  std::shared_ptr<Backend> best;
  uint64_t best_score = 0;
  for (const auto& [a, b] : backends_) {
    if (std::find(exclude.begin(), exclude.end(), a) != exclude.end()) continue;
    const uint64_t score = RendezvousScore(id, a);
    if (best == nullptr || score > best_score) {
      best = b;
      best_score = score;
    }
  }
  return best;
}

std::shared_ptr<RouterCore::Backend> RouterCore::PickBackendLocked(
    const std::vector<std::string>& exclude) {
  std::vector<std::shared_ptr<Backend>> all;
  all.reserve(backends_.size());
  for (const auto& [a, b] : backends_) {
    if (std::find(exclude.begin(), exclude.end(), a) == exclude.end()) all.push_back(b);
  }
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
    if (draining_) {
      return absl::UnavailableError("the router is shutting down; retry through another router");
    }
    if (backends_.empty()) {
      return absl::UnavailableError("no attention worker is available");
    }
    if (static_cast<int64_t>(in_flight_.size()) >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat("the router is at its limit of ",
                                                       options_.max_queue,
                                                       " requests in flight; retry later"));
    }
    const bool sticky = options_.sticky_client_ids && !request.id.empty();
    if (request.id.empty()) {
      request.id = NextRequestIdLocked();
    } else if (in_flight_.count(request.id) > 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("request_id '", request.id, "' is already in flight"));
    }
    request.dedup = sticky;
    backend = sticky ? PickStickyLocked(request.id) : PickBackendLocked();
    InFlight f;
    f.sticky = sticky;
    f.backend = backend;
    f.request = request;
    f.charged = f.outstanding();
    f.deadline = deadline;
    f.caller = std::make_shared<BackendCallbacks>(std::move(callbacks));
    f.tried.push_back(backend->impl->address());
    f.arrival = std::chrono::steady_clock::now();
    handle = std::shared_ptr<RouterCall>(new RouterCall(request.id, backend->impl->address()));
    f.handle = handle;
    backend->outstanding += f.charged;
    backend->in_flight += 1;
    in_flight_.emplace(request.id, std::move(f));
  }
  SY_LOG(DEBUG) << "router: request " << request.id << " -> " << handle->backend_address();
  StartAttempt(request.id, 0, request, deadline, backend, handle);
  return handle;
}

void RouterCore::StartAttempt(const std::string& id, int attempt,
                              const engine::GenerationRequest& request, Deadline deadline,
                              const std::shared_ptr<Backend>& backend,
                              const std::shared_ptr<RouterCall>& handle) {
  // The wrappers keep the load accounting, then hand over to the caller. The
  // core outlives every call (its destructor waits), so `this` stays valid
  // until the last OnDone has run; nothing touches the core after that.
  std::shared_ptr<BackendCallbacks> caller;
  {
    std::lock_guard<std::mutex> lock(mu_);
    caller = in_flight_.at(id).caller;
  }
  BackendCallbacks wrapped;
  wrapped.on_update = [this, id, attempt, caller](engine::RequestUpdate u) {
    OnUpdate(id, attempt, &u);
    caller->on_update(std::move(u));
  };
  wrapped.on_done = [this, id, attempt, caller](absl::Status status) {
    std::optional<absl::Status> done = OnDone(id, attempt, std::move(status));
    if (done.has_value()) caller->on_done(*std::move(done));
  };
  std::shared_ptr<BackendCall> call = backend->impl->Start(request, deadline, std::move(wrapped));
  handle->Attach(std::move(call));
}

void RouterCore::OnUpdate(const std::string& id, int attempt, engine::RequestUpdate* update) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(id);
  if (it == in_flight_.end() || it->second.attempt != attempt) return;
  InFlight& f = it->second;
  f.tokens.insert(f.tokens.end(), update->new_tokens.begin(), update->new_tokens.end());
  if (f.ttft_ms < 0 && !update->new_tokens.empty()) {
    f.ttft_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - f.arrival)
            .count();
  }
  const int64_t now = f.outstanding();
  f.backend->outstanding -= f.charged - now;
  f.charged = now;
  if (update->finish != engine::FinishReason::kNone) f.finished = true;
  if (attempt > 0) {
    // The caller asked about its own prompt, and got its prompt logprobs
    // from the first backend; the usage and timings cover the whole request.
    update->prompt_logprobs.reset();
    if (update->timings.has_value()) {
      update->timings->prompt_tokens = static_cast<int64_t>(f.request.prompt.size());
      update->timings->output_tokens = f.produced();
      update->timings->ttft_ms = f.ttft_ms < 0 ? 0 : f.ttft_ms;
      update->timings->total_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - f.arrival)
              .count();
    }
  }
}

std::optional<absl::Status> RouterCore::OnDone(const std::string& id, int attempt,
                                               absl::Status status) {
  std::shared_ptr<Backend> next;
  std::shared_ptr<RouterCall> handle;
  engine::GenerationRequest again;
  Deadline deadline;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_flight_.find(id);
    if (it == in_flight_.end() || it->second.attempt != attempt) return status;
    InFlight& f = it->second;
    handle = f.handle.lock();
    const std::string failed = f.backend->impl->address();
    // Re-submitted only with tokens left to generate (the finish comes with
    // the last one).
    if (absl::IsUnavailable(status) && !f.finished && attempt < kMaxResubmits &&
        f.produced() < f.request.stopping.max_new_tokens && handle != nullptr &&
        !handle->cancelled()) {
      next = f.sticky ? PickStickyLocked(id, f.tried) : PickBackendLocked(f.tried);
    }
    if (next != nullptr) {
      // Re-submit: the prompt and the tokens streamed so far, the rest of
      // the budget.
      again = f.request;
      again.prompt.insert(again.prompt.end(), f.tokens.begin(), f.tokens.end());
      const auto produced = static_cast<int32_t>(f.produced());
      again.stopping.max_new_tokens = f.request.stopping.max_new_tokens - produced;
      again.stopping.min_new_tokens = std::max(0, f.request.stopping.min_new_tokens - produced);
      again.prompt_logprobs = -1;
      // Not the request the client sent: a retry of its id must not match it
      // (the worker runs it without keeping it; see router_core.h).
      again.dedup = false;
      deadline = f.deadline;
      f.backend->outstanding -= f.charged;
      f.backend->in_flight -= 1;
      f.backend = next;
      f.charged = f.outstanding();
      next->outstanding += f.charged;
      next->in_flight += 1;
      f.tried.push_back(next->impl->address());
      f.attempt = attempt + 1;
      SY_LOG(WARNING) << "router: request " << id << " failed on " << failed << " (" << status
                      << ") after " << f.produced() << " tokens; re-submitting it to "
                      << next->impl->address();
    } else {
      if (status.ok() && !f.finished) {
        status = absl::InternalError(absl::StrCat("attention worker ", failed, " ended request ",
                                                  id, " without a finish reason"));
      }
      f.backend->outstanding -= f.charged;
      f.backend->in_flight -= 1;
      in_flight_.erase(it);
      // Notified under the lock: the destructor may free the core as soon
      // as it sees the map empty, and it cannot before this lock is released.
      if (in_flight_.empty()) drained_.notify_all();
      return status;
    }
  }
  StartAttempt(id, attempt + 1, again, deadline, next, handle);
  return std::nullopt;
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

void RouterCore::StopAdmitting() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

RouterCore::Counts RouterCore::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  Counts c;
  c.in_flight = static_cast<int64_t>(in_flight_.size());
  for (const auto& [id, f] : in_flight_) {
    if (f.tokens.empty() && !f.finished) ++c.waiting_first_token;
  }
  return c;
}

}  // namespace sy::router
