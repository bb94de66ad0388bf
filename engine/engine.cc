#include "engine/engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::engine {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", what));
}

}  // namespace

std::string_view FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

Engine::Engine(std::unique_ptr<ModelRunner> runner, std::unique_ptr<KvCache> cache,
               const EngineOptions& options, int64_t max_model_len)
    : runner_(std::move(runner)),
      cache_(std::move(cache)),
      options_(options),
      max_model_len_(max_model_len) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<ModelRunner> runner,
                                                       const EngineOptions& options) {
  if (runner == nullptr) return absl::InvalidArgumentError("engine needs a model runner");
  const model::ModelConfig& cfg = runner->config();
  int64_t max_len = options.max_model_len > 0 ? options.max_model_len : cfg.max_position_embeddings;
  if (max_len > cfg.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_model_len (", max_len, ") exceeds the model's max_position_embeddings (",
                     cfg.max_position_embeddings, ")"));
  }
  if (options.max_num_seqs <= 0) return FieldError("max_num_seqs", "must be positive");
  if (options.max_batched_tokens <= 0) return FieldError("max_batched_tokens", "must be positive");
  KvCacheOptions kv = options.kv;
  kv.ctx = runner->ctx();
  kv.dtype = runner->dtype();
  const bool by_fraction = kv.memory_fraction > 0 && kv.ctx.device == kernels::Device::kCuda;
  if (kv.num_blocks <= 0 && kv.max_tokens <= 0 && !by_fraction) {
    // Default: room for max_num_seqs sequences of full length, capped at 64k tokens.
    kv.max_tokens = options.max_num_seqs > 65536 / max_len ? 65536 : options.max_num_seqs * max_len;
    kv.max_tokens = std::max<int64_t>(kv.max_tokens, max_len);
  }
  SY_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, KvCache::Create(cfg, kv));
  SY_LOG(INFO) << "KV cache: " << cache->num_blocks() << " blocks of " << cache->block_size()
               << " tokens, " << cache->bytes() / (1 << 20) << " MiB";
  if (runner->max_context() <= 0) runner->SetMaxContext(max_len);
  return std::unique_ptr<Engine>(new Engine(std::move(runner), std::move(cache), options, max_len));
}

int64_t Engine::BlocksForTokens(int64_t tokens) const {
  return (tokens + cache_->block_size() - 1) / cache_->block_size();
}

// The blocks an admission takes: the whole request's (kReserve), or those
// of the first step (kOnDemand).
int64_t Engine::BlocksFor(const Sequence& s) const {
  if (options_.kv_admission == KvAdmission::kReserve) {
    return BlocksForTokens(static_cast<int64_t>(s.req.prompt.size()) +
                           s.req.stopping.max_new_tokens);
  }
  return BlocksForTokens(s.step_tokens());
}

void Engine::Preempt(size_t i) {
  Sequence& s = *running_[i];
  SY_LOG(DEBUG) << "preempting request " << s.req.id << " after " << s.output.size() << " tokens ("
                << s.blocks.size() << " KV blocks)";
  cache_->allocator().Free(s.blocks);
  s.blocks.clear();
  s.num_cached = 0;  // recomputed from its prompt and output when admitted again
  ++preemptions_;
  waiting_.push_front(std::move(running_[i]));
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
}

void Engine::GrowRunning() {
  // Oldest first: under pressure the newest admissions give way.
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence& s = *running_[i];
    const int64_t need =
        BlocksForTokens(s.num_cached + s.step_tokens()) - static_cast<int64_t>(s.blocks.size());
    if (need <= 0) continue;
    while (true) {
      auto more = cache_->allocator().Allocate(need);
      if (more.ok()) {
        s.blocks.insert(s.blocks.end(), more->begin(), more->end());
        break;
      }
      // Validate() guarantees a lone sequence fits the cache, so there is
      // always a newer sequence to preempt, or this one is the newest.
      const size_t victim = running_.size() - 1;
      Preempt(victim);
      if (victim == i) break;
    }
    if (i >= running_.size() || running_[i].get() != &s) break;  // s itself was preempted
  }
}

absl::Status Engine::Validate(const GenerationRequest& r) const {
  const model::ModelConfig& cfg = config();
  if (r.prompt.empty()) return FieldError("prompt", "must not be empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= cfg.vocab_size) {
      return FieldError(
          absl::StrCat("prompt[", i, "]"),
          absl::StrCat("= ", r.prompt[i], " is outside the vocabulary [0, ", cfg.vocab_size, ")"));
    }
  }
  const StoppingParams& st = r.stopping;
  if (st.max_new_tokens < 1) return FieldError("stopping.max_new_tokens", "must be >= 1");
  if (st.max_new_tokens > options_.max_new_tokens_limit) {
    return FieldError("stopping.max_new_tokens",
                      absl::StrCat("(", st.max_new_tokens, ") exceeds the limit of ",
                                   options_.max_new_tokens_limit));
  }
  if (st.min_new_tokens < 0 || st.min_new_tokens > st.max_new_tokens) {
    return FieldError("stopping.min_new_tokens", "must be in [0, max_new_tokens]");
  }
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + st.max_new_tokens;
  if (total > max_model_len_) {
    return FieldError("prompt", absl::StrCat("(", r.prompt.size(), " tokens) + max_new_tokens (",
                                             st.max_new_tokens, ") exceeds the context limit of ",
                                             max_model_len_, " tokens"));
  }
  for (size_t i = 0; i < st.stop_token_ids.size(); ++i) {
    if (st.stop_token_ids[i] < 0 || st.stop_token_ids[i] >= cfg.vocab_size) {
      return FieldError(absl::StrCat("stopping.stop_token_ids[", i, "]"),
                        "is outside the vocabulary");
    }
  }
  if (r.logprobs < -1 || r.logprobs > options_.max_logprobs) {
    return FieldError("logprobs",
                      absl::StrCat("must be in [0, ", options_.max_logprobs, "] (or -1 for none)"));
  }
  if (r.prompt_logprobs < -1 || r.prompt_logprobs > options_.max_logprobs) {
    return FieldError("prompt_logprobs",
                      absl::StrCat("must be in [0, ", options_.max_logprobs, "] (or -1 for none)"));
  }
  // Prompt logprobs need the logits of every prompt row at once.
  constexpr int64_t kMaxPromptLogitFloats = int64_t{1} << 27;  // 512 MiB
  if (r.prompt_logprobs >= 0 &&
      static_cast<int64_t>(r.prompt.size()) * cfg.vocab_size > kMaxPromptLogitFloats) {
    return FieldError(
        "prompt_logprobs",
        absl::StrCat("needs the logits of every prompt token; at most ",
                     kMaxPromptLogitFloats / cfg.vocab_size,
                     " prompt tokens with this vocabulary (got ", r.prompt.size(), ")"));
  }
  SY_RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));
  const int64_t blocks = (total + cache_->block_size() - 1) / cache_->block_size();
  if (blocks > cache_->num_blocks()) {
    return FieldError("prompt", absl::StrCat("with max_new_tokens needs ", blocks,
                                             " KV blocks; the cache has ", cache_->num_blocks()));
  }
  return absl::OkStatus();
}

absl::Status Engine::Add(GenerationRequest request) {
  SY_RETURN_IF_ERROR(Validate(request));
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request queue is full (", options_.max_waiting, " waiting)"));
  }
  if (!request.id.empty()) {
    auto same = [&](const SeqPtr& s) { return s->req.id == request.id; };
    if (std::any_of(waiting_.begin(), waiting_.end(), same) ||
        std::any_of(running_.begin(), running_.end(), same)) {
      return absl::AlreadyExistsError(absl::StrCat("request id '", request.id, "' is in flight"));
    }
  }
  auto s = std::make_unique<Sequence>();
  s->req = std::move(request);
  s->arrival = Clock::now();
  s->rng.seed(s->req.sampling.has_seed ? s->req.sampling.seed : std::random_device{}());
  // The device sampler's counter-based draws: the request's seed, or one
  // from its RNG.
  s->device_seed = s->req.sampling.has_seed ? s->req.sampling.seed : s->rng();
  s->stop_ids = s->req.stopping.stop_token_ids;
  if (!s->req.stopping.ignore_eos) {
    for (int32_t eos : config().eos_token_ids) s->stop_ids.push_back(eos);
  }
  waiting_.push_back(std::move(s));
  return absl::OkStatus();
}

absl::Status Engine::Cancel(const std::string& id) {
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if ((*it)->req.id == id) {
      RequestUpdate u;
      Finish(**it, FinishReason::kCancelled, &u);
      pending_.push_back(std::move(u));
      waiting_.erase(it);
      return absl::OkStatus();
    }
  }
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if ((*it)->req.id == id) {
      RequestUpdate u;
      Finish(**it, FinishReason::kCancelled, &u);
      pending_.push_back(std::move(u));
      running_.erase(it);
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat("no live request with id '", id, "'"));
}

void Engine::Finish(Sequence& s, FinishReason reason, RequestUpdate* update) {
  update->id = s.req.id;
  update->finish = reason;
  if (!s.blocks.empty()) {
    cache_->allocator().Free(s.blocks);
    s.blocks.clear();
  }
  const auto now = Clock::now();
  RequestTimings t;
  t.queue_ms = s.started ? Ms(s.arrival, s.scheduled) : Ms(s.arrival, now);
  t.ttft_ms = s.output.empty() ? 0.0 : Ms(s.arrival, s.first_token);
  t.total_ms = Ms(s.arrival, now);
  t.prompt_tokens = static_cast<int64_t>(s.req.prompt.size());
  t.output_tokens = static_cast<int64_t>(s.output.size());
  update->timings = t;
}

void Engine::Admit(std::vector<Sequence*>* prefills) {
  int64_t tokens = static_cast<int64_t>(running_.size());
  const int64_t reserve = options_.kv_admission == KvAdmission::kReserve ? 0
                          : options_.kv_admission_reserve_blocks >= 0
                              ? options_.kv_admission_reserve_blocks
                              : std::max<int64_t>(1, cache_->num_blocks() / 100);
  while (!waiting_.empty()) {
    Sequence& s = *waiting_.front();
    if (static_cast<int64_t>(running_.size()) >= options_.max_num_seqs) break;
    const int64_t p = s.step_tokens();
    // The budget may be exceeded by a lone prompt so long prompts still run,
    // and by a preempted sequence's recompute, which would otherwise wait for
    // the whole batch to drain when it is longer than the budget leaves.
    if (tokens + p > options_.max_batched_tokens && tokens > 0 && s.output.empty()) break;
    const int64_t n = BlocksFor(s);
    // The reserve is kept only while something runs: a lone request always
    // gets in (Validate() checked that it fits the whole cache).
    if (!running_.empty() && cache_->allocator().num_free() - n < reserve) break;
    auto blocks = cache_->allocator().Allocate(n);
    if (!blocks.ok()) break;  // wait for running sequences to finish
    s.blocks = *std::move(blocks);
    if (!s.started) s.scheduled = Clock::now();
    s.started = true;
    tokens += p;
    prefills->push_back(&s);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

bool IsMeshFailure(const absl::Status& status) {
  return absl::IsAborted(status) || absl::IsUnavailable(status) ||
         absl::IsDeadlineExceeded(status) || absl::IsFailedPrecondition(status);
}

absl::StatusOr<std::vector<RequestUpdate>> Engine::Step() {
  std::vector<RequestUpdate> updates = std::move(pending_);
  pending_.clear();
  // Decodes are the sequences already running; prefills are admitted now.
  if (options_.kv_admission == KvAdmission::kOnDemand) GrowRunning();
  std::vector<Sequence*> decodes;
  for (auto& s : running_) decodes.push_back(s.get());
  std::vector<Sequence*> prefills;
  Admit(&prefills);
  if (decodes.empty() && prefills.empty()) return updates;

  // Build the flattened batch.
  const int64_t bs = cache_->block_size();
  ForwardBatch b;
  std::vector<Sequence*> order = decodes;
  order.insert(order.end(), prefills.begin(), prefills.end());
  int64_t max_blocks = 0;
  for (Sequence* s : order) max_blocks = std::max<int64_t>(max_blocks, s->blocks.size());
  b.max_blocks_per_seq = max_blocks;
  b.q_start.push_back(0);
  struct Rows {
    int64_t first;  // first logit row of this sequence
    int64_t count;
  };
  std::vector<Rows> rows;
  for (Sequence* s : order) {
    const bool is_prefill = s->num_cached == 0;
    std::vector<int32_t> new_tokens;
    if (is_prefill) {
      // A preempted sequence recomputes its output's keys and values too.
      new_tokens = s->req.prompt;
      new_tokens.insert(new_tokens.end(), s->output.begin(), s->output.end());
    } else {
      new_tokens.push_back(s->output.back());
    }
    const int64_t first_row_token = b.num_tokens();
    for (size_t i = 0; i < new_tokens.size(); ++i) {
      const int64_t pos = s->num_cached + static_cast<int64_t>(i);
      b.tokens.push_back(new_tokens[i]);
      b.positions.push_back(static_cast<int32_t>(pos));
      b.slots.push_back(static_cast<int32_t>(s->blocks[pos / bs] * bs + pos % bs));
    }
    s->num_cached += static_cast<int64_t>(new_tokens.size());
    b.q_start.push_back(static_cast<int32_t>(b.num_tokens()));
    b.context_lens.push_back(static_cast<int32_t>(s->num_cached));
    for (int64_t i = 0; i < max_blocks; ++i) {
      b.block_tables.push_back(i < static_cast<int64_t>(s->blocks.size()) ? s->blocks[i] : 0);
    }
    Rows r{static_cast<int64_t>(b.logit_rows.size()), 1};
    if (is_prefill && s->req.prompt_logprobs >= 0 && s->output.empty()) {
      r.count = static_cast<int64_t>(new_tokens.size());
      for (int64_t i = 0; i < r.count; ++i) {
        b.logit_rows.push_back(static_cast<int32_t>(first_row_token + i));
      }
    } else {
      b.logit_rows.push_back(static_cast<int32_t>(b.num_tokens() - 1));
    }
    rows.push_back(r);
  }

  // On a GPU, steps whose every sequence needs only the chosen token (no
  // penalties, no stop-token masking, no top-N or prompt logprobs) sample on
  // the device and copy back token ids instead of [rows, vocab] logits.
  bool device_sampling = runner_->ctx().device == kernels::Device::kCuda;
  for (size_t i = 0; i < order.size() && device_sampling; ++i) {
    const Sequence& s = *order[i];
    const SamplingParams& sp = s.req.sampling;
    const bool below_min = static_cast<int64_t>(s.output.size()) < s.req.stopping.min_new_tokens &&
                           !s.stop_ids.empty();
    device_sampling = rows[i].count == 1 && sp.repetition_penalty == 1.0f &&
                      sp.presence_penalty == 0.0f && sp.frequency_penalty == 0.0f && !below_min &&
                      s.req.logprobs <= 0 && s.req.prompt_logprobs < 0;
  }
  std::vector<int32_t> device_tokens;
  std::vector<float> device_logprobs;
  absl::Status st;
  const auto forward_start = Clock::now();
  if (device_sampling) {
    std::vector<kernels::SampleParams> params(order.size());
    for (size_t i = 0; i < order.size(); ++i) {
      Sequence& s = *order[i];
      kernels::SampleParams& p = params[i];
      p.temperature = s.req.sampling.temperature;
      p.top_k = s.req.sampling.top_k;
      p.top_p = s.req.sampling.top_p;
      p.min_p = s.req.sampling.min_p;
      p.seed = s.device_seed;
      p.step = static_cast<uint64_t>(s.output.size());
    }
    st = runner_->ForwardSample(b, *cache_, params, &device_tokens, &device_logprobs);
  } else {
    st = runner_->Forward(b, *cache_, &logits_);
  }
  const auto forward_end = Clock::now();
  ++steps_;
  if (!st.ok() && options_.keep_batch_on_mesh_failure && IsMeshFailure(st)) {
    // Undo the step: the sequences run again once the mesh is back.
    for (size_t i = 0; i < order.size(); ++i) {
      order[i]->num_cached = b.context_lens[i] - (b.q_start[i + 1] - b.q_start[i]);
    }
    for (RequestUpdate& u : updates) pending_.push_back(std::move(u));
    SY_LOG(WARNING) << "step " << steps_ << ": the expert mesh failed (" << st << "); "
                    << order.size() << " sequences kept for the retry";
    return st;
  }
  if (!st.ok()) {
    // A failed forward pass fails the sequences in it, not the engine.
    SY_LOG(ERROR) << "step " << steps_ << ": forward failed: " << st;
    for (Sequence* s : order) {
      RequestUpdate u;
      Finish(*s, FinishReason::kError, &u);
      u.error = std::string(st.message());
      u.error_code = st.code();
      updates.push_back(std::move(u));
    }
    running_.clear();
    return updates;
  }

  const int64_t V = config().vocab_size;
  const auto now = Clock::now();
  std::vector<Sequence*> done;
  for (size_t i = 0; i < order.size(); ++i) {
    Sequence& s = *order[i];
    RequestUpdate u;
    u.id = s.req.id;
    const float* last =
        device_sampling ? nullptr : logits_.data() + (rows[i].first + rows[i].count - 1) * V;
    if (!device_sampling &&
        (rows[i].count > 1 || (s.req.prompt_logprobs >= 0 && s.output.empty()))) {
      std::vector<std::optional<TokenLogprob>> pl(s.req.prompt.size());
      for (int64_t j = 1; j < static_cast<int64_t>(s.req.prompt.size()); ++j) {
        pl[j] = ComputeLogprob(logits_.data() + (rows[i].first + j - 1) * V, V, s.req.prompt[j],
                               s.req.prompt_logprobs);
      }
      u.prompt_logprobs = std::move(pl);
    }
    const bool below_min = static_cast<int64_t>(s.output.size()) < s.req.stopping.min_new_tokens;
    static const std::vector<int32_t> kNone;
    const int32_t token = device_sampling
                              ? device_tokens[i]
                              : Sampler::Sample(last, V, s.req.sampling, s.req.prompt, s.output,
                                                below_min ? s.stop_ids : kNone, s.rng, &scratch_);
    if (s.output.empty()) s.first_token = now;
    s.output.push_back(token);
    u.new_tokens.push_back(token);
    if (s.req.logprobs >= 0) {
      u.new_logprobs.push_back(device_sampling ? TokenLogprob{token, device_logprobs[i], {}}
                                               : ComputeLogprob(last, V, token, s.req.logprobs));
    }
    const bool is_stop = std::find(s.stop_ids.begin(), s.stop_ids.end(), token) != s.stop_ids.end();
    if (is_stop && !below_min) {
      Finish(s, FinishReason::kStop, &u);
      done.push_back(&s);
    } else if (static_cast<int64_t>(s.output.size()) >= s.req.stopping.max_new_tokens) {
      Finish(s, FinishReason::kLength, &u);
      done.push_back(&s);
    }
    updates.push_back(std::move(u));
  }
  if (!done.empty()) {
    std::erase_if(running_, [&](const SeqPtr& s) {
      return std::find(done.begin(), done.end(), s.get()) != done.end();
    });
  }
  last_step_.sequences = static_cast<int64_t>(order.size());
  last_step_.prefills = static_cast<int64_t>(prefills.size());
  last_step_.tokens = b.num_tokens();
  last_step_.forward_seconds = std::chrono::duration<double>(forward_end - forward_start).count();
  last_step_.sample_seconds = std::chrono::duration<double>(Clock::now() - forward_end).count();
  return updates;
}

EngineStats Engine::stats() const {
  EngineStats s;
  s.running = static_cast<int64_t>(running_.size());
  s.waiting = static_cast<int64_t>(waiting_.size());
  s.kv_blocks_total = cache_->allocator().num_total();
  s.kv_blocks_free = cache_->allocator().num_free();
  s.steps = steps_;
  s.preemptions = preemptions_;
  return s;
}

}  // namespace sy::engine
