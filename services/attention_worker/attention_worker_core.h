// The attention worker's step loop, free of gRPC types.
//
// One thread (Run) owns the engine: it drains submitted requests and
// cancellations, runs engine steps, and hands every update to the request's
// sink. In a mesh, every loop iteration is one mesh step: when the engine has
// nothing to run, the worker still takes part with an empty step so expert
// workers and the other attention workers can proceed.
//
// Request de-duplication (AttentionWorkerCoreOptions::dedup_window), for the
// requests the router marks (GenerationRequest::dedup: client-chosen ids): a
// request whose stream broke without a cancel (its router died) runs on, its
// output kept; a request with the same id and the same contents that comes
// within the window (the client retrying through another router) attaches to
// it: it gets what was produced so far and then the rest live, or the whole
// result at once when the first has finished. A retry never starts the
// generation a second time while the first is running or kept. The window
// counts from the finish; a request that ended without a result (cancelled,
// deadline, failed) is forgotten, so its retry runs again.
//
// Submit/Cancel/Release/stats may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "services/moe/remote_experts.h"

namespace sy::attention_worker {

// Receives one request's results, on the step thread. After a call with
// finish != kNone, or OnError, no further calls come.
class UpdateSink {
 public:
  virtual ~UpdateSink() = default;
  virtual void OnUpdate(const engine::RequestUpdate& update) = 0;
  // The engine refused the request (validation, queue full, duplicate id).
  virtual void OnError(const absl::Status& status) = 0;
};

struct WorkerStatsSnapshot {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;
  int64_t steps = 0;
  int64_t mesh_steps = 0;
  int64_t wakes_received = 0;
  int64_t pauses_cut_by_wake = 0;
  // De-duplication: retries answered from a finished request's kept output,
  // retries attached to a running request, and requests running now with
  // no stream (their router went away).
  int64_t dedup_replayed = 0;
  int64_t dedup_attached = 0;
  int64_t detached = 0;
  int64_t preemptions = 0;  // the engine's (EngineStats::preemptions)
};

// One step that ran a forward pass, as AttentionWorkerCoreOptions::on_step
// sees it.
struct StepTimes {
  engine::StepRecord step;                      // batch, forward and host-side sampling seconds
  double total_seconds = 0;                     // Engine::Step() as a whole
  moe::RemoteExpertExecutor::PhaseSeconds moe;  // zero without a mesh
};

struct AttentionWorkerCoreOptions {
  // Pause after an empty mesh step while other attention workers are busy
  // (0: none; the transport's own wait paces the step). While the whole mesh
  // was idle the pause doubles, from at least kIdleBackoffStartUs, up to
  // max_idle_sleep_us.
  int64_t idle_sleep_us = 0;
  int64_t max_idle_sleep_us = 100000;
  // Called (from the step thread; must not block) when requests arrive while
  // the whole mesh is idle, to end the other attention workers' idle pauses
  // (their Wake()); empty with one attention worker or without a mesh.
  std::function<void()> wake_peers;
  // A mesh step failed (a peer gone or silent): called on the step thread
  // with the epoch served and the error, to report it to the coordinator.
  // The worker then waits up to reform_wait for the re-formed mesh, adopts
  // it and retries the step (the engine keeps the batch:
  // EngineOptions::keep_batch_on_mesh_failure). Without one in time (the
  // survivors cannot hold every expert until a replacement joins), every
  // live request fails with UNAVAILABLE, requests that arrive meanwhile are
  // refused with UNAVAILABLE, and the worker waits on (reporting again every
  // reform_wait) until the mesh is re-formed, then serves again.
  std::function<void(int64_t epoch, const absl::Status&)> on_mesh_failure;
  absl::Duration reform_wait = absl::Seconds(20);
  // How long a finished request's output is kept for retries of its id
  // (zero: no de-duplication; a broken stream cancels its request).
  absl::Duration dedup_window = absl::ZeroDuration();
  // Finished requests kept at most (the oldest go first beyond it).
  int64_t dedup_max_kept = 100000;
  // Called on the step thread after every step that ran a forward pass
  // (metrics; must not block).
  std::function<void(const StepTimes&)> on_step;
};

inline constexpr int64_t kIdleBackoffStartUs = 100;

class AttentionWorkerCore {
 public:
  // `mesh` (not owned; may be null for a local engine) is the executor inside
  // `engine`'s model runner, used for empty steps.
  AttentionWorkerCore(std::unique_ptr<engine::Engine> engine, moe::RemoteExpertExecutor* mesh,
                      const AttentionWorkerCoreOptions& options);

  // `deadline`: when a request left without a stream is cancelled (an
  // attached one is cancelled by its stream's deadline, through Release).
  void Submit(engine::GenerationRequest request, std::shared_ptr<UpdateSink> sink,
              absl::Time deadline = absl::InfiniteFuture());
  // The client cancelled request `id` (whichever stream it is on).
  void Cancel(const std::string& id);
  // `sink`'s stream ended before its request finished: with `cancel` (the
  // stream's deadline passed, or de-duplication is off) the request is
  // cancelled, otherwise it runs on without a stream for a retry to attach
  // to. A no-op when `sink` no longer carries the request (finished, or
  // taken over by a retry).
  void Release(const std::string& id, const UpdateSink* sink, bool cancel);
  WorkerStatsSnapshot stats() const;
  const model::ModelConfig& model_config() const { return model_config_; }
  int64_t max_model_len() const { return max_model_len_; }

  // The step loop; returns when Stop() is called (OK) or a step fails other
  // than by the mesh (the error). Live requests are finished with an error
  // either way.
  absl::Status Run();
  void Stop();
  // A peer has work: end the current idle pause (any thread).
  void Wake();

 private:
  struct Command {
    enum Kind { kSubmit, kCancel, kRelease } kind = kSubmit;
    engine::GenerationRequest request;
    std::string id;  // kCancel, kRelease
    std::shared_ptr<UpdateSink> sink;
    const UpdateSink* released = nullptr;  // kRelease
    bool cancel = false;                   // kRelease
    absl::Time deadline = absl::InfiniteFuture();
  };
  // A request's kept state (de-duplication only).
  struct Record {
    engine::GenerationRequest request;             // as first submitted, to match retries
    engine::RequestUpdate output;                  // everything produced so far, merged
    absl::Time deadline = absl::InfiniteFuture();  // applies while detached
    bool finished = false;                         // with a result, kept for the window
    uint64_t generation = 0;                       // tells a re-used id's record apart
  };

  bool dedup() const { return options_.dedup_window > absl::ZeroDuration(); }
  // Submit of a request whose id has a record: replays, attaches or refuses.
  void Resubmitted(Command& c, Record& r);
  // Keeps update `u` in its request's record (finish: kept or forgotten).
  void RecordUpdate(const engine::RequestUpdate& u);
  // Drops finished records past the window (or beyond dedup_max_kept) and
  // cancels detached requests past their deadline.
  void ExpireRecords();
  // Cancels every request without a stream (they fail with the others).
  void CancelDetached();

  // Admits queued requests and cancels; returns how many requests it admitted.
  int Drain();
  // After a failed mesh step: reports it and waits for a re-formed mesh
  // (true: adopted, step again; false: Stop() was called).
  bool RecoverMesh(const absl::Status& failure);
  // Refuses every queued request with `status` (cancels are dropped).
  void RefuseQueued(const absl::Status& status);
  void Publish();
  void FailAll(const std::string& why);

  std::unique_ptr<engine::Engine> engine_;
  moe::RemoteExpertExecutor* mesh_;
  const AttentionWorkerCoreOptions options_;
  const model::ModelConfig model_config_;
  const int64_t max_model_len_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Command> inbox_;
  // Set by Stop() from any thread, read by the loop; relaxed is not enough
  // for the cv wait predicate, so the loop reads it under mu_ there.
  std::atomic<bool> stop_{false};
  bool woken_ = false;              // guarded by mu_: Wake() since the last pause
  int64_t wakes_received_ = 0;      // guarded by mu_
  int64_t pauses_cut_by_wake_ = 0;  // guarded by mu_

  std::map<std::string, std::shared_ptr<UpdateSink>> sinks_;  // step thread only
  // De-duplication state, step thread only: records by id, the finished
  // ones in finish order (time, id, generation), the ids running detached.
  std::map<std::string, Record> records_;
  std::deque<std::tuple<absl::Time, std::string, uint64_t>> kept_order_;
  std::set<std::string> detached_;
  // Cancels of ids not (yet) known, for kTombstoneLife: the router's Cancel
  // may overtake its Generate, whose stream's end must then cancel it.
  static constexpr absl::Duration kTombstoneLife = absl::Seconds(10);
  std::map<std::string, absl::Time> tombstones_;
  std::deque<std::pair<absl::Time, std::string>> tombstone_order_;
  uint64_t next_generation_ = 0;
  int64_t dedup_replayed_ = 0;
  int64_t dedup_attached_ = 0;
  mutable std::mutex stats_mu_;
  WorkerStatsSnapshot stats_;
  int64_t mesh_steps_ = 0;
  int64_t idle_sleep_us_ = 0;  // current pause between empty steps
};

}  // namespace sy::attention_worker
