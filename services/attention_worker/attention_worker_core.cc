#include "services/attention_worker/attention_worker_core.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/log.h"

namespace sy::attention_worker {
namespace {

// Whether a retry asks for the same generation (everything but the id).
bool SameRequest(const engine::GenerationRequest& a, const engine::GenerationRequest& b) {
  const engine::SamplingParams &x = a.sampling, &y = b.sampling;
  const engine::StoppingParams &p = a.stopping, &q = b.stopping;
  return a.prompt == b.prompt && a.logprobs == b.logprobs &&
         a.prompt_logprobs == b.prompt_logprobs && x.temperature == y.temperature &&
         x.top_k == y.top_k && x.top_p == y.top_p && x.min_p == y.min_p &&
         x.repetition_penalty == y.repetition_penalty && x.presence_penalty == y.presence_penalty &&
         x.frequency_penalty == y.frequency_penalty && x.has_seed == y.has_seed &&
         (!x.has_seed || x.seed == y.seed) && p.max_new_tokens == q.max_new_tokens &&
         p.min_new_tokens == q.min_new_tokens && p.stop_token_ids == q.stop_token_ids &&
         p.ignore_eos == q.ignore_eos;
}

void Merge(const engine::RequestUpdate& u, engine::RequestUpdate* into) {
  into->new_tokens.insert(into->new_tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
  into->new_logprobs.insert(into->new_logprobs.end(), u.new_logprobs.begin(), u.new_logprobs.end());
  if (u.prompt_logprobs.has_value()) into->prompt_logprobs = u.prompt_logprobs;
  into->finish = u.finish;
  into->error = u.error;
  into->error_code = u.error_code;
  if (u.timings.has_value()) into->timings = u.timings;
}

}  // namespace

AttentionWorkerCore::AttentionWorkerCore(std::unique_ptr<engine::Engine> engine,
                                         moe::RemoteExpertExecutor* mesh,
                                         const AttentionWorkerCoreOptions& options)
    : engine_(std::move(engine)),
      mesh_(mesh),
      options_(options),
      model_config_(engine_->config()),
      max_model_len_(engine_->max_model_len()) {
  Publish();
}

void AttentionWorkerCore::Submit(engine::GenerationRequest request,
                                 std::shared_ptr<UpdateSink> sink, absl::Time deadline) {
  std::lock_guard<std::mutex> lock(mu_);
  Command c;
  c.request = std::move(request);
  c.sink = std::move(sink);
  c.deadline = deadline;
  inbox_.push_back(std::move(c));
  cv_.notify_all();
}

void AttentionWorkerCore::Cancel(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Command c;
  c.kind = Command::kCancel;
  c.id = id;
  inbox_.push_back(std::move(c));
  cv_.notify_all();
}

void AttentionWorkerCore::Release(const std::string& id, const UpdateSink* sink, bool cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  Command c;
  c.kind = Command::kRelease;
  c.id = id;
  c.released = sink;
  c.cancel = cancel;
  inbox_.push_back(std::move(c));
  cv_.notify_all();
}

WorkerStatsSnapshot AttentionWorkerCore::stats() const {
  WorkerStatsSnapshot s;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    s = stats_;
  }
  std::lock_guard<std::mutex> lock(mu_);
  s.wakes_received = wakes_received_;
  s.dedup_replayed = dedup_replayed_;
  s.dedup_attached = dedup_attached_;
  s.pauses_cut_by_wake = pauses_cut_by_wake_;
  return s;
}

void AttentionWorkerCore::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stop_.store(true);
  cv_.notify_all();
}

void AttentionWorkerCore::Wake() {
  std::lock_guard<std::mutex> lock(mu_);
  woken_ = true;
  ++wakes_received_;
  cv_.notify_all();
}

int AttentionWorkerCore::Drain() {
  int admitted = 0;
  std::deque<Command> commands;
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands.swap(inbox_);
  }
  if (dedup()) ExpireRecords();
  for (Command& c : commands) {
    if (c.kind == Command::kCancel) {
      // NotFound: already finished, or not submitted yet (the router's
      // Cancel can overtake its Generate): the tombstone makes the stream's
      // end cancel the request then. A cancelled request leaves no output
      // for a retry.
      if (absl::IsNotFound(engine_->Cancel(c.id)) && dedup()) {
        tombstones_[c.id] = absl::Now();
        tombstone_order_.emplace_back(absl::Now(), c.id);
      }
      auto r = records_.find(c.id);
      if (r != records_.end() && !r->second.finished) {
        detached_.erase(c.id);
        records_.erase(r);
      }
      continue;
    }
    if (c.kind == Command::kRelease) {
      auto s = sinks_.find(c.id);
      if (s == sinks_.end() || s->second.get() != c.released) continue;
      sinks_.erase(s);
      auto r = records_.find(c.id);
      const bool cancelled = tombstones_.erase(c.id) > 0;
      if (c.cancel || cancelled || r == records_.end() || r->second.finished) {
        (void)engine_->Cancel(c.id);
        if (r != records_.end() && !r->second.finished) records_.erase(r);
        continue;
      }
      detached_.insert(c.id);
      SY_LOG(INFO) << "request " << c.id
                   << ": its stream ended without a cancel; running it on (until its deadline) "
                      "for a retry to attach to";
      continue;
    }
    const std::string id = c.request.id;
    // Only requests the router marked (client-chosen ids) are kept.
    const bool keep = dedup() && c.request.dedup && !id.empty();
    if (keep) {
      auto r = records_.find(id);
      if (r != records_.end()) {
        Resubmitted(c, r->second);
        continue;
      }
    }
    engine::GenerationRequest kept;
    if (keep) kept = c.request;
    absl::Status st = engine_->Add(std::move(c.request));
    if (!st.ok()) {
      c.sink->OnError(st);
      continue;
    }
    sinks_[id] = std::move(c.sink);
    if (keep) {
      Record& r = records_[id];
      r.request = std::move(kept);
      r.output.id = id;
      r.deadline = c.deadline;
      r.generation = next_generation_++;
    }
    ++admitted;
  }
  return admitted;
}

void AttentionWorkerCore::Resubmitted(Command& c, Record& r) {
  const std::string& id = r.output.id;
  if (!SameRequest(r.request, c.request)) {
    c.sink->OnError(absl::AlreadyExistsError(
        absl::StrCat("request_id '", id, "' was used for a different request within the last ",
                     absl::FormatDuration(options_.dedup_window), "; use a new request_id")));
    return;
  }
  if (r.finished) {
    // The whole result at once: the retry gets what the first got.
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++dedup_replayed_;
    }
    c.sink->OnUpdate(r.output);
    return;
  }
  // Running: the retry takes the request over from the stream it is on, if
  // any (a stream still open is a router that has not noticed yet, or a
  // second client with the same id and request), and gets what was produced
  // so far, then the rest live.
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++dedup_attached_;
  }
  auto s = sinks_.find(id);
  if (s != sinks_.end()) {
    s->second->OnError(absl::AbortedError(
        absl::StrCat("request_id '", id, "' was taken over by a retry of the same request")));
  }
  engine::RequestUpdate so_far = r.output;
  if (!so_far.new_tokens.empty() || so_far.prompt_logprobs.has_value()) {
    c.sink->OnUpdate(so_far);
  }
  sinks_[id] = std::move(c.sink);
  detached_.erase(id);
  r.deadline = c.deadline;
  SY_LOG(INFO) << "request " << id << ": a retry attached after " << so_far.new_tokens.size()
               << " tokens";
}

void AttentionWorkerCore::RecordUpdate(const engine::RequestUpdate& u) {
  auto it = records_.find(u.id);
  if (it == records_.end()) return;
  Record& r = it->second;
  Merge(u, &r.output);
  if (u.finish == engine::FinishReason::kNone) return;
  detached_.erase(u.id);
  if (u.finish == engine::FinishReason::kLength || u.finish == engine::FinishReason::kStop) {
    r.finished = true;
    kept_order_.emplace_back(absl::Now(), u.id, r.generation);
  } else {
    records_.erase(it);  // no result to give a retry: it runs again
  }
}

void AttentionWorkerCore::ExpireRecords() {
  const absl::Time now = absl::Now();
  while (!tombstone_order_.empty() && now - tombstone_order_.front().first > kTombstoneLife) {
    auto t = tombstones_.find(tombstone_order_.front().second);
    if (t != tombstones_.end() && t->second == tombstone_order_.front().first) tombstones_.erase(t);
    tombstone_order_.pop_front();
  }
  while (!kept_order_.empty()) {
    const auto& [at, id, generation] = kept_order_.front();
    const bool full = static_cast<int64_t>(kept_order_.size()) > options_.dedup_max_kept;
    if (!full && now - at < options_.dedup_window) break;
    auto r = records_.find(id);
    if (r != records_.end() && r->second.generation == generation) records_.erase(r);
    kept_order_.pop_front();
  }
  for (auto it = detached_.begin(); it != detached_.end();) {
    auto r = records_.find(*it);
    if (r == records_.end()) {
      it = detached_.erase(it);
      continue;
    }
    if (r->second.deadline <= now) {
      SY_LOG(INFO) << "request " << *it << ": deadline passed while it ran without a stream";
      (void)engine_->Cancel(*it);
      records_.erase(r);
      it = detached_.erase(it);
      continue;
    }
    ++it;
  }
}

void AttentionWorkerCore::CancelDetached() {
  for (const std::string& id : detached_) {
    (void)engine_->Cancel(id);
    records_.erase(id);
  }
  detached_.clear();
}

void AttentionWorkerCore::Publish() {
  const engine::EngineStats s = engine_->stats();
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.running = s.running;
  stats_.waiting = s.waiting;
  stats_.kv_blocks_total = s.kv_blocks_total;
  stats_.kv_blocks_free = s.kv_blocks_free;
  stats_.steps = s.steps;
  stats_.preemptions = s.preemptions;
  stats_.mesh_steps = mesh_steps_;
  stats_.detached = static_cast<int64_t>(detached_.size());
}

void AttentionWorkerCore::FailAll(const std::string& why) {
  for (auto& [id, sink] : sinks_) {
    engine::RequestUpdate u;
    u.id = id;
    u.finish = engine::FinishReason::kError;
    u.error = why;
    u.error_code = absl::StatusCode::kUnavailable;
    sink->OnUpdate(u);
    auto r = records_.find(id);
    if (r != records_.end() && !r->second.finished) records_.erase(r);
  }
  sinks_.clear();
  CancelDetached();
}

bool AttentionWorkerCore::RecoverMesh(const absl::Status& failure) {
  if (mesh_ == nullptr || stop_.load()) return false;
  auto report = [&] {
    if (options_.on_mesh_failure) options_.on_mesh_failure(mesh_->serving_epoch(), failure);
  };
  if (!absl::IsAborted(failure)) {
    SY_LOG(WARNING) << "mesh step failed (" << failure
                    << "); waiting for the coordinator to re-form the mesh";
    report();
  }
  // Stop() ends the wait within a slice.
  constexpr absl::Duration kSlice = absl::Milliseconds(100);
  for (absl::Duration waited; waited < options_.reform_wait && !stop_.load(); waited += kSlice) {
    if (mesh_->AwaitReform(kSlice)) {
      SY_LOG(INFO) << "mesh re-formed at epoch " << mesh_->serving_epoch() << "; retrying the step";
      return true;
    }
  }
  if (stop_.load()) return false;
  // No re-formed mesh in time: the survivors cannot serve every expert
  // (until a replacement joins) or the coordinator is away. The live
  // requests fail now, so their clients can go elsewhere, and new ones are
  // refused; the worker stays, so that the mesh can be whole again.
  const std::string why = absl::StrCat("the mesh cannot serve: no re-formed mesh came within ",
                                       absl::FormatDuration(options_.reform_wait),
                                       " of a failed step (", failure.message(), ")");
  SY_LOG(ERROR) << why << "; failing " << sinks_.size()
                << " live requests with UNAVAILABLE and waiting for the mesh to be whole again";
  for (const auto& entry : sinks_) (void)engine_->Cancel(entry.first);  // frees their KV blocks
  FailAll(why);  // and the requests running without a stream
  Publish();
  const absl::Status refused = absl::UnavailableError(why);
  absl::Duration since_report;
  while (!stop_.load()) {
    RefuseQueued(refused);
    if (mesh_->AwaitReform(kSlice)) {
      SY_LOG(INFO) << "mesh re-formed at epoch " << mesh_->serving_epoch() << "; serving again";
      return true;
    }
    // Remind the coordinator now and then (it re-forms once it can).
    since_report += kSlice;
    if (since_report >= options_.reform_wait) {
      report();
      since_report = absl::ZeroDuration();
    }
  }
  return false;
}

void AttentionWorkerCore::RefuseQueued(const absl::Status& status) {
  std::deque<Command> commands;
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands.swap(inbox_);
  }
  for (Command& c : commands) {
    if (c.kind == Command::kSubmit) c.sink->OnError(status);
  }
}

absl::Status AttentionWorkerCore::Run() {
  while (!stop_.load()) {
    if (mesh_ != nullptr) mesh_->ApplyReform();
    const int admitted = Drain();
    // The other attention workers may be deep in an idle pause: ask them to
    // join the next mesh step now rather than when their pauses end.
    if (admitted > 0 && mesh_ != nullptr && mesh_->last_step_mesh_rows() == 0 &&
        options_.wake_peers) {
      options_.wake_peers();
    }
    bool ran_forward = false;
    if (engine_->HasWork()) {
      const int64_t before = engine_->stats().steps;
      const auto step_start = std::chrono::steady_clock::now();
      auto updates = engine_->Step();
      if (!updates.ok()) {
        // The engine kept the batch (a mesh failure): step again on the
        // re-formed mesh.
        if (engine::IsMeshFailure(updates.status()) && RecoverMesh(updates.status())) {
          Publish();
          continue;
        }
        FailAll(std::string(updates.status().message()));
        return updates.status();
      }
      ran_forward = engine_->stats().steps != before;
      if (ran_forward && options_.on_step) {
        StepTimes t;
        t.step = engine_->last_step();
        t.total_seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
        if (mesh_ != nullptr) t.moe = mesh_->last_step_phases();
        options_.on_step(t);
      }
      for (const auto& u : *updates) {
        if (dedup()) RecordUpdate(u);
        auto it = sinks_.find(u.id);
        if (it == sinks_.end()) continue;
        it->second->OnUpdate(u);
        if (u.finish != engine::FinishReason::kNone) sinks_.erase(it);
      }
      if (ran_forward && mesh_ != nullptr) ++mesh_steps_;
    }
    if (mesh_ != nullptr && !ran_forward) {
      // Take part in the mesh step without tokens.
      absl::Status st = mesh_->RunEmptyStep();
      if (!st.ok() && RecoverMesh(st)) {
        Publish();
        continue;
      }
      if (!st.ok()) {
        SY_LOG(ERROR) << "mesh step failed: " << st;
        FailAll(std::string(st.message()));
        Publish();
        return st;
      }
      ++mesh_steps_;
      // Keep pace with busy peers; back off while the whole mesh is idle.
      if (mesh_->last_step_mesh_rows() > 0) {
        idle_sleep_us_ = options_.idle_sleep_us;
      } else {
        const int64_t next =
            std::max({2 * idle_sleep_us_, kIdleBackoffStartUs, options_.idle_sleep_us});
        idle_sleep_us_ = std::min(next, options_.max_idle_sleep_us);
      }
      if (!engine_->HasWork() && idle_sleep_us_ > 0) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, std::chrono::microseconds(idle_sleep_us_),
                     [this] { return !inbox_.empty() || stop_.load() || woken_; });
        if (woken_) {
          // A Wake that came mid-step ends the next pause at once: this
          // worker's peers are busy either way.
          woken_ = false;
          ++pauses_cut_by_wake_;
          idle_sleep_us_ = options_.idle_sleep_us;  // a peer is busy now
        }
      }
    } else if (mesh_ == nullptr && !engine_->HasWork()) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(50),
                   [this] { return !inbox_.empty() || stop_.load(); });
    }
    Publish();
  }
  FailAll("attention worker shutting down");
  return absl::OkStatus();
}

}  // namespace sy::attention_worker
