// The single-process engine: request queue, continuous batching over a paged
// KV cache, sampling and stopping.
//
// Each Step() runs one forward pass over a batch built from the running
// sequences (one decode token each) plus newly admitted prompts (whole-prompt
// prefill). Sequences join and leave between steps. Requests wait in FIFO
// order (bounded by max_waiting) and are admitted, by default, once the KV
// blocks for their prompt are free with a reserve left over
// (KvAdmission::kOnDemand): blocks for generated tokens are taken as the
// sequence grows, so the cache is not held idle by worst-case reservations.
// When a running sequence needs a block and none is free, the most recently
// admitted sequence is preempted: its blocks are freed and it goes back to
// the front of the queue with its tokens, to be recomputed (one prefill of
// prompt + output) when it is admitted again; a step never fails for want of
// KV memory, and the sequence goes on with the same sampler state (the same
// tokens, up to the rounding of recomputed keys and values).
// KvAdmission::kReserve admits only when prompt + max_new_tokens fit, and
// never preempts. Not thread-safe: the owner drives Add(), Cancel() and
// Step() from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"

namespace sy::engine {

struct StoppingParams {
  int32_t max_new_tokens = 16;
  int32_t min_new_tokens = 0;
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS
  bool ignore_eos = false;
};

struct GenerationRequest {
  std::string id;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StoppingParams stopping;
  int32_t logprobs = -1;         // -1: none; N >= 0: chosen token + top-N
  int32_t prompt_logprobs = -1;  // -1: none; N >= 0: per prompt token + top-N
  // Not used by the engine: the router sets it for a request whose id the
  // client chose (not for a failover re-submission), and the attention
  // worker then de-duplicates retries of that id (attention_worker_core.h).
  bool dedup = false;
};

enum class FinishReason { kNone, kLength, kStop, kCancelled, kError };
std::string_view FinishReasonName(FinishReason r);

struct RequestTimings {
  // Filled when a request finishes.
  double queue_ms = 0;  // arrival -> first scheduled
  double ttft_ms = 0;   // arrival -> first token
  double total_ms = 0;  // arrival -> finished
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
};

// What one Step() produced for one request.
struct RequestUpdate {
  std::string id;
  std::vector<int32_t> new_tokens;
  std::vector<TokenLogprob> new_logprobs;  // parallel to new_tokens when logprobs >= 0
  // Set once, on the step that ran the prompt, when prompt_logprobs >= 0;
  // entry 0 is empty (nothing precedes the first token).
  std::optional<std::vector<std::optional<TokenLogprob>>> prompt_logprobs;
  FinishReason finish = FinishReason::kNone;
  std::string error;  // with kError
  // With kError: what failed (the forward pass's status code; Unavailable
  // when the mesh failed or the worker is shutting down).
  absl::StatusCode error_code = absl::StatusCode::kInternal;
  std::optional<RequestTimings> timings;  // set when finish != kNone
};

enum class KvAdmission {
  kOnDemand,  // admit on the prompt's blocks (plus a reserve); preempt under pressure
  kReserve,   // admit on prompt + max_new_tokens blocks; never preempt
};

struct EngineOptions {
  int64_t max_model_len = 0;            // 0: model's max_position_embeddings
  int64_t max_num_seqs = 64;            // running sequences per step
  int64_t max_batched_tokens = 8192;    // tokens per forward pass (prefill budget)
  int64_t max_waiting = 1024;           // queued requests before Add() refuses
  int64_t max_new_tokens_limit = 4096;  // largest max_new_tokens a request may ask
  int32_t max_logprobs = 20;            // largest top-N for logprobs / prompt_logprobs
  KvCacheOptions kv;
  KvAdmission kv_admission = KvAdmission::kOnDemand;
  // kOnDemand: blocks left free after an admission at least (-1: 1% of the
  // cache, at least one), so that admitting a prompt does not preempt at
  // once the sequences already running.
  int64_t kv_admission_reserve_blocks = -1;
  // A forward pass that fails because the expert mesh failed (the expert
  // executor's Aborted, Unavailable, DeadlineExceeded or FailedPrecondition)
  // leaves every sequence as it was before the step, and Step() returns that
  // error: the caller re-forms the mesh and steps again, and the step is
  // recomputed (same tokens; the KV rows it wrote are written again). Off:
  // such a step fails its sequences, like any failed forward pass.
  bool keep_batch_on_mesh_failure = false;
};

// The errors keep_batch_on_mesh_failure keeps the batch for.
bool IsMeshFailure(const absl::Status& status);

struct EngineStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;
  int64_t steps = 0;
  int64_t preemptions = 0;  // sequences preempted for KV blocks so far
};

// What the last Step() that ran a forward pass did.
struct StepRecord {
  int64_t sequences = 0;  // in the batch
  int64_t prefills = 0;   // of them, admitted this step (a prompt or a recompute)
  int64_t tokens = 0;     // rows of the forward pass
  // The model's forward pass (with the sampling on the device when the step
  // samples there), and what follows on the host: sampling from the logits,
  // logprobs, stop checks, the updates.
  double forward_seconds = 0;
  double sample_seconds = 0;
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<ModelRunner> runner,
                                                        const EngineOptions& options);

  // Validates and queues a request. InvalidArgument names the bad field;
  // ResourceExhausted when the queue is full; AlreadyExists for a live id.
  absl::Status Add(GenerationRequest request);
  // Stops a waiting or running request; its KV blocks are freed at once and
  // the next Step() reports it finished with kCancelled. NotFound if unknown.
  absl::Status Cancel(const std::string& id);
  // Runs one step. Returns the updates of every request that produced a token
  // or finished; with keep_batch_on_mesh_failure, a mesh failure's error
  // (nothing changed: the next Step() runs the same batch).
  absl::StatusOr<std::vector<RequestUpdate>> Step();

  bool HasWork() const { return !waiting_.empty() || !running_.empty() || !pending_.empty(); }
  EngineStats stats() const;
  // Valid once stats().steps > 0; read it right after the Step() that
  // advanced stats().steps.
  const StepRecord& last_step() const { return last_step_; }
  const model::ModelConfig& config() const { return runner_->config(); }
  int64_t max_model_len() const { return max_model_len_; }

 private:
  struct Sequence {
    GenerationRequest req;
    std::vector<int32_t> output;
    std::vector<int32_t> blocks;
    int64_t num_cached = 0;  // tokens whose k/v are in the cache
    std::mt19937_64 rng;
    uint64_t device_seed = 0;
    std::vector<int32_t> stop_ids;
    std::chrono::steady_clock::time_point arrival, scheduled, first_token;
    bool started = false;

    // Tokens the next step feeds: the prompt and any output so far (a first
    // prefill, or the recompute of a preempted sequence), else the last
    // output token.
    int64_t step_tokens() const {
      return num_cached == 0 ? static_cast<int64_t>(req.prompt.size() + output.size()) : 1;
    }
  };
  using SeqPtr = std::unique_ptr<Sequence>;

  Engine(std::unique_ptr<ModelRunner> runner, std::unique_ptr<KvCache> cache,
         const EngineOptions& options, int64_t max_model_len);

  absl::Status Validate(const GenerationRequest& r) const;
  int64_t BlocksFor(const Sequence& s) const;
  int64_t BlocksForTokens(int64_t tokens) const;
  // Gives every running sequence the blocks its next step writes, preempting
  // the most recently admitted ones while none are free.
  void GrowRunning();
  // Frees running_[i]'s blocks and puts it back at the front of the queue.
  void Preempt(size_t i);
  void Admit(std::vector<Sequence*>* prefills);
  void Finish(Sequence& s, FinishReason reason, RequestUpdate* update);

  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<KvCache> cache_;
  EngineOptions options_;
  int64_t max_model_len_;
  std::deque<SeqPtr> waiting_;
  std::vector<SeqPtr> running_;
  std::vector<RequestUpdate> pending_;  // cancellations to report
  int64_t steps_ = 0;
  StepRecord last_step_;
  int64_t preemptions_ = 0;
  std::vector<float> logits_;
  std::vector<float> scratch_;
};

}  // namespace sy::engine
