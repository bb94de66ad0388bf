#include "services/attention_worker/attention_worker_core.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/log.h"

namespace sy::attention_worker {

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
                                 std::shared_ptr<UpdateSink> sink) {
  std::lock_guard<std::mutex> lock(mu_);
  Command c;
  c.request = std::move(request);
  c.sink = std::move(sink);
  inbox_.push_back(std::move(c));
  cv_.notify_all();
}

void AttentionWorkerCore::Cancel(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Command c;
  c.cancel = true;
  c.cancel_id = id;
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
  for (Command& c : commands) {
    if (c.cancel) {
      // NotFound: already finished (or never admitted); nothing to do.
      (void)engine_->Cancel(c.cancel_id);
      continue;
    }
    const std::string id = c.request.id;
    absl::Status st = engine_->Add(std::move(c.request));
    if (!st.ok()) {
      c.sink->OnError(st);
      continue;
    }
    sinks_[id] = std::move(c.sink);
    ++admitted;
  }
  return admitted;
}

void AttentionWorkerCore::Publish() {
  const engine::EngineStats s = engine_->stats();
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.running = s.running;
  stats_.waiting = s.waiting;
  stats_.kv_blocks_total = s.kv_blocks_total;
  stats_.kv_blocks_free = s.kv_blocks_free;
  stats_.steps = s.steps;
  stats_.mesh_steps = mesh_steps_;
}

void AttentionWorkerCore::FailAll(const std::string& why) {
  for (auto& [id, sink] : sinks_) {
    engine::RequestUpdate u;
    u.id = id;
    u.finish = engine::FinishReason::kError;
    u.error = why;
    u.error_code = absl::StatusCode::kUnavailable;
    sink->OnUpdate(u);
  }
  sinks_.clear();
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
  FailAll(why);
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
    if (!c.cancel) c.sink->OnError(status);
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
      for (const auto& u : *updates) {
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
