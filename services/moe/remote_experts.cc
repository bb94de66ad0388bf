#include "services/moe/remote_experts.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "services/moe/moe_wire.h"

namespace sy::moe {
namespace {

// On the step thread, adopting a reform: endpoints to the re-formed mesh's
// members (a replacement's new address); none listed, nothing to do.
void ConnectReformed(transport::Transport& transport,
                     const std::vector<transport::PeerAddress>& peers) {
  if (peers.empty()) return;
  if (absl::Status st = transport.Connect(peers); !st.ok()) {
    SY_LOG(ERROR) << "rank " << transport.rank() << ": connecting the re-formed mesh: " << st;
  }
}

}  // namespace

RemoteExpertExecutor::RemoteExpertExecutor(const model::ModelConfig& cfg, eplb::Placement placement,
                                           MeshRanks ranks, transport::Transport* transport,
                                           absl::Duration timeout, int64_t generation)
    : cfg_(cfg),
      placement_(std::move(placement)),
      ranks_(std::move(ranks)),
      transport_(transport),
      timeout_(timeout) {
  next_replica_.resize(placement_.layers.size());
  leader_ = !ranks_.attention.empty() && transport_ != nullptr &&
            transport_->rank() == ranks_.attention[0];
  generation_.store(generation);
  serving_epoch_.store(placement_.epoch);
  ResizeScratch();
}

absl::Status RemoteExpertExecutor::Run(int64_t layer, const void* hidden_v, int64_t num_tokens,
                                       const int32_t* topk_ids, const float* topk_weights,
                                       int64_t top_k, void* out_v) {
  const auto* hidden = static_cast<const float*>(hidden_v);
  auto* out = static_cast<float*>(out_v);
  const int32_t moe_index = placement_.MoeIndex(static_cast<int32_t>(layer));
  if (moe_index < 0) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not in the placement"));
  }
  // A forward pass visits the MoE layers in increasing order: going back to
  // an earlier (or the same) layer starts the next step.
  if (moe_index <= last_moe_index_) ++step_;
  if (last_moe_index_ < 0 || moe_index <= last_moe_index_) SY_RETURN_IF_ERROR(BeginStep());
  last_moe_index_ = moe_index;
  absl::Status st = Exchange(moe_index, hidden, num_tokens, topk_ids, topk_weights, top_k, out);
  if (moe_index == static_cast<int32_t>(placement_.layers.size()) - 1) {
    ++step_;
    last_moe_index_ = -1;
    last_step_mesh_rows_ = mesh_rows_;
    mesh_rows_ = 0;
    last_step_phases_ = phases_;
    phases_ = {};
  }
  return st;
}

void ReformMailbox::Post(MeshReform reform, int64_t current, transport::Transport* transport) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t newest = pending_.has_value() ? pending_->generation : current;
  if (reform.generation <= newest) return;
  pending_ = std::move(reform);
  transport->Interrupt();
  cv_.notify_all();
}

std::optional<MeshReform> ReformMailbox::Take(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] { return pending_.has_value(); });
  std::optional<MeshReform> out = std::move(pending_);
  pending_.reset();
  return out;
}

void ReformMailbox::Adopted(transport::Transport* transport) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!pending_.has_value()) transport->ClearInterrupt();
}

void RemoteExpertExecutor::ResizeScratch() {
  const size_t n = ranks_.experts.size();
  slots_.resize(n);
  rows_.resize(n);
  row_token_.resize(n);
  row_weight_.resize(n);
  send_.resize(n);
}

void RemoteExpertExecutor::RequestReform(MeshReform reform) {
  reforms_.Post(std::move(reform), generation_.load(), transport_);
}

bool RemoteExpertExecutor::ApplyReform() {
  return transport_->interrupted() && AwaitReform(absl::ZeroDuration());
}

bool RemoteExpertExecutor::AwaitReform(absl::Duration timeout) {
  std::optional<MeshReform> reform = reforms_.Take(timeout);
  if (!reform.has_value()) return false;
  Adopt(*std::move(reform));
  reforms_.Adopted(transport_);
  return true;
}

void RemoteExpertExecutor::Adopt(MeshReform reform) {
  ConnectReformed(*transport_, reform.peers);
  placement_ = std::move(reform.placement);
  ranks_ = std::move(reform.ranks);
  generation_.store(reform.generation);
  leader_ = !ranks_.attention.empty() && transport_->rank() == ranks_.attention[0];
  switch_ = Switch{};
  {
    std::lock_guard<std::mutex> lock(offer_mu_);
    if (offered_.has_value() && offered_->epoch <= placement_.epoch) offered_.reset();
  }
  step_ = 0;
  last_moe_index_ = -1;
  mesh_rows_ = last_step_mesh_rows_ = 0;
  next_replica_.assign(placement_.layers.size(), {});
  ResizeScratch();
  serving_epoch_.store(placement_.epoch);
  SY_LOG(INFO) << "attention worker rank " << transport_->rank() << ": mesh re-formed (generation "
               << generation_.load() << "), serving placement epoch " << placement_.epoch
               << " with " << ranks_.attention.size() << " attention workers";
}

void RemoteExpertExecutor::OfferPlacement(eplb::Placement next) {
  std::lock_guard<std::mutex> lock(offer_mu_);
  offered_ = std::move(next);
  offer_cv_.notify_all();
}

absl::Status RemoteExpertExecutor::BeginStep() {
  phases_ = {};  // a step abandoned half way counts nothing
  if (switch_.pending() && step_ >= switch_.step) {
    std::unique_lock<std::mutex> lock(offer_mu_);
    const int64_t want = switch_.epoch;
    if (!offer_cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout_),
                            [&] { return offered_.has_value() && offered_->epoch == want; })) {
      return absl::DeadlineExceededError(
          absl::StrCat("the mesh switches to placement epoch ", want, " at step ", switch_.step,
                       ", but this attention worker was not given that placement in time"));
    }
    placement_ = std::move(*offered_);
    offered_.reset();
    lock.unlock();
    SY_LOG(INFO) << "attention worker rank " << transport_->rank() << ": serving placement epoch "
                 << placement_.epoch << " from step " << step_;
    switch_ = Switch{};
    serving_epoch_.store(placement_.epoch);
  }
  if (leader_ && !switch_.pending()) {
    std::lock_guard<std::mutex> lock(offer_mu_);
    if (offered_.has_value() && offered_->epoch > placement_.epoch) {
      // Announced in this step's dispatches; every worker switches at the next.
      switch_ = Switch{offered_->epoch, step_ + 1};
      SY_LOG(INFO) << "leader: the mesh switches to placement epoch " << switch_.epoch
                   << " at step " << switch_.step;
    }
  }
  return absl::OkStatus();
}

absl::Status RemoteExpertExecutor::RunEmptyStep() {
  for (int32_t i = 0; i < static_cast<int32_t>(placement_.layers.size()); ++i) {
    SY_RETURN_IF_ERROR(
        Run(placement_.layers[i], nullptr, 0, nullptr, nullptr, cfg_.top_k, nullptr));
  }
  return absl::OkStatus();
}

absl::Status RemoteExpertExecutor::Exchange(int32_t moe_index, const float* hidden,
                                            int64_t num_tokens, const int32_t* topk_ids,
                                            const float* topk_weights, int64_t top_k, float* out) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const int64_t H = cfg_.hidden_size;
  const size_t num_ew = ranks_.experts.size();
  for (size_t w = 0; w < num_ew; ++w) {
    slots_[w].clear();
    rows_[w].clear();
    row_token_[w].clear();
    row_weight_[w].clear();
  }
  const auto& log2phy = placement_.log2phy[moe_index];
  std::vector<uint32_t>& next_replica = next_replica_[moe_index];
  next_replica.resize(static_cast<size_t>(placement_.num_logical), 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t k = 0; k < top_k; ++k) {
      const int32_t e = topk_ids[t * top_k + k];
      if (e < 0 || e >= placement_.num_logical) {
        return absl::InvalidArgumentError(absl::StrCat("expert id ", e, " out of range"));
      }
      const auto& replicas = log2phy[e];
      // Replicas are equivalent: each expert's rows go round-robin over its
      // replicas, across tokens and steps, so every replica gets an equal
      // share whatever the batch sizes (what the planner's scores assume).
      const int32_t slot = replicas[next_replica[e]++ % replicas.size()];
      const int32_t w = placement_.WorkerOfSlot(slot);
      if (ranks_.experts[w] < 0) {
        return absl::UnavailableError(absl::StrCat("expert ", e, "'s slot ", slot,
                                                   " is on expert worker ", w,
                                                   ", which is out of the mesh"));
      }
      slots_[w].push_back(slot);  // global slot id: the receiver checks it is its own
      rows_[w].insert(rows_[w].end(), hidden + t * H, hidden + (t + 1) * H);
      row_token_[w].push_back(static_cast<int32_t>(t));
      row_weight_[w].push_back(topk_weights[t * top_k + k]);
    }
  }
  // Expert workers out of the mesh (dropped, or not yet admitted) take no
  // part.
  std::vector<transport::SendItem> sends;
  std::vector<int32_t> from, workers;
  for (size_t w = 0; w < num_ew; ++w) {
    if (ranks_.experts[w] < 0) continue;
    EncodeDispatch(placement_.epoch, switch_, slots_[w], rows_[w], &send_[w]);
    sends.push_back({ranks_.experts[w], send_[w].data(), send_[w].size()});
    from.push_back(ranks_.experts[w]);
    workers.push_back(static_cast<int32_t>(w));
  }
  SY_RETURN_IF_ERROR(Annotate(
      transport_->Exchange(StepTag(generation_, step_, moe_index, Phase::kDispatch), sends, {},
                           &recv_, timeout_),
      absl::StrCat("MoE dispatch, step ", step_, " layer ", placement_.layers[moe_index])));
  const auto t1 = Clock::now();
  SY_RETURN_IF_ERROR(
      Annotate(transport_->Exchange(StepTag(generation_, step_, moe_index, Phase::kCombine), {},
                                    from, &recv_, timeout_),
               absl::StrCat("MoE combine, step ", step_, " layer ", placement_.layers[moe_index])));
  const auto t2 = Clock::now();
  if (num_tokens > 0) std::memset(out, 0, sizeof(float) * num_tokens * H);
  for (size_t i = 0; i < workers.size(); ++i) {
    const int32_t w = workers[i];
    const float* rows = nullptr;
    uint32_t mesh_rows = 0;
    Switch next;
    SY_RETURN_IF_ERROR(Annotate(
        DecodeCombine(recv_[i], placement_.epoch, static_cast<uint32_t>(row_token_[w].size()), H,
                      &rows, &mesh_rows, &next),
        absl::StrCat("from expert worker ", w)));
    // The leader's switch, echoed by the expert workers.
    if (next.pending() && !switch_.pending() && next.epoch > placement_.epoch &&
        next.step > step_) {
      switch_ = next;
    }
    mesh_rows_ += mesh_rows;
    for (size_t r = 0; r < row_token_[w].size(); ++r) {
      float* dst = out + static_cast<int64_t>(row_token_[w][r]) * H;
      const float* src = rows + r * H;
      const float wt = row_weight_[w][r];
      for (int64_t c = 0; c < H; ++c) dst[c] += wt * src[c];
    }
  }
  phases_.dispatch += std::chrono::duration<double>(t1 - t0).count();
  phases_.expert_wait += std::chrono::duration<double>(t2 - t1).count();
  phases_.combine += std::chrono::duration<double>(Clock::now() - t2).count();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ExpertServer>> ExpertServer::Create(
    const model::ModelConfig& cfg, const eplb::Placement& placement, int32_t worker_index,
    MeshRanks ranks, transport::Transport* transport, const model::Checkpoint* ckpt,
    uint64_t dummy_seed, absl::Duration timeout, const kernels::Context& ctx, int64_t generation) {
  if (worker_index < 0 || worker_index >= placement.num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("expert worker index ", worker_index,
                                                   " outside the placement's ",
                                                   placement.num_workers, " workers"));
  }
  std::unique_ptr<ExpertServer> s(new ExpertServer());
  s->cfg_ = cfg;
  s->worker_index_ = worker_index;
  s->ranks_ = std::move(ranks);
  s->transport_ = transport;
  s->timeout_ = timeout;
  s->ctx_ = ctx;
  s->ckpt_ = ckpt;
  s->dummy_seed_ = dummy_seed;
  s->generation_.store(generation);
  StageStats stats;
  SY_ASSIGN_OR_RETURN(s->cur_, s->Build(placement, {}, {}, /*budget=*/0, &stats));
  s->serving_epoch_.store(placement.epoch);
  return s;
}

absl::StatusOr<model::MlpWeights> ExpertServer::Load(int32_t layer, int32_t expert) const {
  if (ckpt_ != nullptr) return model::LoadExpert(cfg_, *ckpt_, layer, expert);
  return model::DummyExpert(cfg_, layer, expert, dummy_seed_);
}

namespace {
int64_t WeightBytes(const model::MlpWeights& w) {
  return static_cast<int64_t>(sizeof(float)) * (w.gate_up.numel() + w.down.numel());
}
}  // namespace

absl::StatusOr<std::shared_ptr<ExpertServer::Generation>> ExpertServer::Build(
    const eplb::Placement& placement, const std::vector<const Generation*>& reuse,
    const ExpertFetcher& fetch, int64_t budget, StageStats* stats) {
  // Every expert of a layer has the same size: the budget is checked before
  // each load, not after loading everything.
  const int64_t expert_size =
      static_cast<int64_t>(sizeof(float)) * 3 * cfg_.hidden_size * cfg_.moe_intermediate_size;
  if (worker_index_ >= placement.num_workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement epoch ", placement.epoch, " has ", placement.num_workers,
                     " expert workers; this is worker ", worker_index_));
  }
  auto gen = std::make_shared<Generation>();
  gen->placement = placement;
  const int32_t n = placement.NumSlotsOf(worker_index_), begin = placement.SlotBegin(worker_index_);
  gen->slots.resize(placement.layers.size());
  gen->ptrs.resize(placement.layers.size());
  const auto start = std::chrono::steady_clock::now();
  for (size_t l = 0; l < placement.layers.size(); ++l) {
    const int32_t layer = placement.layers[l];
    // The experts this worker serves in this layer now.
    std::vector<std::pair<int32_t, std::shared_ptr<const model::MlpWeights>>> held;
    for (const Generation* g : reuse) {
      const int32_t rl = g->placement.MoeIndex(layer);
      if (rl < 0) continue;
      const int32_t rb = g->placement.SlotBegin(worker_index_);
      for (size_t i = 0; i < g->slots[rl].size(); ++i) {
        held.emplace_back(g->placement.phy2log[rl][rb + i], g->slots[rl][i]);
      }
    }
    for (int32_t i = 0; i < n; ++i) {
      const int32_t expert = placement.phy2log[l][begin + i];
      std::shared_ptr<const model::MlpWeights> w;
      for (const auto& [e, p] : held) {
        if (e == expert) {
          w = p;
          break;
        }
      }
      if (w != nullptr) {
        ++stats->kept_experts;
      } else {
        if (budget > 0 && stats->fetched_bytes + expert_size > budget) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "staging placement epoch ", placement.epoch, " needs more than the ", budget,
              " bytes of expert weights the memory limit leaves beside the serving ones (",
              stats->fetched_bytes, " bytes before expert ", expert, " of layer ", layer, ")"));
        }
        absl::StatusOr<model::MlpWeights> loaded =
            fetch ? fetch(layer, expert) : Load(layer, expert);
        if (!loaded.ok()) {
          return Annotate(loaded.status(),
                          absl::StrCat("loading expert ", expert, " of layer ", layer,
                                       " for placement epoch ", placement.epoch));
        }
        ++stats->fetched_experts;
        stats->fetched_bytes += WeightBytes(*loaded);
        w = std::make_shared<const model::MlpWeights>(*std::move(loaded));
        held.emplace_back(expert, w);  // a second replica on this worker shares it
      }
      gen->slots[l].push_back(std::move(w));
    }
    // What the grouped FFN reads: the gate_up then the down pointers.
    for (const auto& w : gen->slots[l]) gen->ptrs[l].push_back(w->gate_up.ptr());
    for (const auto& w : gen->slots[l]) gen->ptrs[l].push_back(w->down.ptr());
    if (reuse.empty()) {
      SY_LOG(INFO) << "expert worker " << worker_index_ << ": loaded " << n << " slots of layer "
                   << layer << " (" << l + 1 << "/" << placement.layers.size() << ")";
    }
  }
  stats->epoch = placement.epoch;
  stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return gen;
}

absl::StatusOr<StageStats> ExpertServer::Stage(const eplb::Placement& next,
                                               const ExpertFetcher& fetch) {
  std::shared_ptr<Generation> cur;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cur = cur_;
    if (staged_ != nullptr && staged_->placement.epoch == next.epoch) {
      return absl::AlreadyExistsError(
          absl::StrCat("placement epoch ", next.epoch, " is already staged"));
    }
  }
  if (next.epoch <= cur->placement.epoch) {
    return absl::InvalidArgumentError(absl::StrCat("cannot stage placement epoch ", next.epoch,
                                                   ": this worker serves epoch ",
                                                   cur->placement.epoch));
  }
  if (auto st = next.Validate(); !st.ok()) return st;
  // What the memory limit leaves for new experts (at least a byte: a limit
  // already reached refuses the first one).
  const int64_t limit = memory_limit_.load();
  const int64_t budget = limit > 0 ? std::max<int64_t>(limit - expert_bytes(), 1) : 0;
  StageStats stats;
  absl::StatusOr<std::shared_ptr<Generation>> gen = Build(next, {cur.get()}, fetch, budget, &stats);
  {
    std::lock_guard<std::mutex> lock(totals_mu_);
    ++(gen.ok() ? totals_.stages : totals_.stage_failures);
    if (gen.ok()) {
      totals_.staged_experts += stats.fetched_experts;
      totals_.staged_bytes += stats.fetched_bytes;
      totals_.kept_experts += stats.kept_experts;
      totals_.stage_seconds += stats.seconds;
    }
  }
  if (!gen.ok()) return gen.status();
  std::lock_guard<std::mutex> lock(mu_);
  staged_ = *std::move(gen);
  SY_LOG(INFO) << "expert worker " << worker_index_ << ": staged placement epoch " << next.epoch
               << " (" << stats.fetched_experts << " experts loaded, " << stats.fetched_bytes
               << " bytes, " << stats.kept_experts << " kept, " << stats.seconds << " s)";
  return stats;
}

ExpertServer::Totals ExpertServer::totals() const {
  std::lock_guard<std::mutex> lock(totals_mu_);
  return totals_;
}

void ExpertServer::DropStaged(int64_t epoch) {
  std::lock_guard<std::mutex> lock(mu_);
  if (staged_ != nullptr && staged_->placement.epoch == epoch) {
    staged_.reset();
    SY_LOG(INFO) << "expert worker " << worker_index_ << ": dropped staged placement epoch "
                 << epoch;
  }
}

eplb::Placement ExpertServer::serving_placement() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cur_->placement;
}

std::shared_ptr<const model::MlpWeights> ExpertServer::Held(int32_t layer, int32_t expert) const {
  std::lock_guard<std::mutex> lock(mu_);
  const eplb::Placement& p = cur_->placement;
  const int32_t l = p.MoeIndex(layer);
  if (l < 0) return nullptr;
  for (int32_t i = 0; i < p.NumSlotsOf(worker_index_); ++i) {
    if (p.phy2log[l][p.SlotBegin(worker_index_) + i] == expert) return cur_->slots[l][i];
  }
  return nullptr;
}

int64_t ExpertServer::staged_epoch() const {
  std::lock_guard<std::mutex> lock(mu_);
  return staged_ != nullptr ? staged_->placement.epoch : 0;
}

int64_t ExpertServer::expert_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<const model::MlpWeights*> seen;
  int64_t bytes = 0;
  for (const Generation* g : {cur_.get(), staged_.get()}) {
    if (g == nullptr) continue;
    for (const auto& layer : g->slots) {
      for (const auto& w : layer) {
        if (seen.insert(w.get()).second) bytes += WeightBytes(*w);
      }
    }
  }
  return bytes;
}

void ExpertServer::RequestReform(MeshReform reform) {
  reforms_.Post(std::move(reform), generation_.load(), transport_);
}

absl::StatusOr<bool> ExpertServer::ApplyReform() {
  if (!transport_->interrupted()) return false;
  return AwaitReform(absl::ZeroDuration());
}

absl::StatusOr<bool> ExpertServer::AwaitReform(absl::Duration timeout) {
  std::optional<MeshReform> reform = reforms_.Take(timeout);
  if (!reform.has_value()) return false;
  std::shared_ptr<Generation> cur, staged;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cur = cur_;
    staged = staged_;
  }
  std::vector<const Generation*> reuse = {cur.get()};
  if (staged != nullptr) reuse.push_back(staged.get());
  StageStats stats;
  absl::StatusOr<std::shared_ptr<Generation>> built =
      Build(reform->placement, reuse, {}, /*budget=*/0, &stats);
  if (!built.ok()) {
    return Annotate(built.status(),
                    absl::StrCat("expert worker ", worker_index_, ": adopting the re-formed mesh"));
  }
  std::shared_ptr<Generation> gen = *std::move(built);
  FlushChunk();  // the old epoch's partial chunk
  {
    std::lock_guard<std::mutex> lock(mu_);
    cur_ = std::move(gen);
    staged_.reset();
    serving_epoch_.store(cur_->placement.epoch);
  }
  ConnectReformed(*transport_, reform->peers);
  ranks_ = std::move(reform->ranks);
  generation_.store(reform->generation);
  switch_ = Switch{};
  step_ = 0;
  chunk_ = LoadDelta{};
  reforms_.Adopted(transport_);
  SY_LOG(INFO) << "expert worker " << worker_index_ << ": mesh re-formed (generation "
               << generation_.load() << "), serving placement epoch " << serving_epoch() << " ("
               << stats.kept_experts << " experts kept, " << stats.fetched_experts << " loaded)";
  return true;
}

absl::Status ExpertServer::ServeStep() {
  if (switch_.pending() && step_ >= switch_.step) {
    std::lock_guard<std::mutex> lock(mu_);
    if (staged_ == nullptr || staged_->placement.epoch != switch_.epoch) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert worker ", worker_index_, ": the mesh switches to placement epoch ", switch_.epoch,
          " at step ", switch_.step, ", which this worker has not staged"));
    }
    cur_ = std::move(staged_);  // the old generation's unshared experts are freed here
    staged_.reset();
    serving_epoch_.store(cur_->placement.epoch);
    SY_LOG(INFO) << "expert worker " << worker_index_ << ": serving placement epoch "
                 << cur_->placement.epoch << " from step " << step_;
    switch_ = Switch{};
  }
  // The routed-experts step adds each layer's counts to the chunk; a full
  // chunk, or the last step before a switch, goes to the reporter.
  if (chunk_.steps == 0) {
    chunk_.epoch = cur_->placement.epoch;
    chunk_.first_step = static_cast<int64_t>(step_);
    chunk_.slot_tokens.assign(cur_->placement.layers.size(),
                              std::vector<int64_t>(cur_->placement.NumSlotsOf(worker_index_), 0));
  }
  const size_t layers = cur_->placement.layers.size();
  step_compute_ = step_wait_ = 0;
  step_rows_ = 0;
  step_layer_rows_.assign(layers, 0);
  for (int32_t i = 0; i < static_cast<int32_t>(layers); ++i) {
    SY_RETURN_IF_ERROR(ServeLayer(i));
  }
  {
    std::lock_guard<std::mutex> lock(totals_mu_);
    totals_.rows_per_layer.resize(layers, 0);
    for (size_t i = 0; i < layers; ++i) totals_.rows_per_layer[i] += step_layer_rows_[i];
    ++totals_.steps;
    totals_.compute_seconds += step_compute_;
    totals_.wait_seconds += step_wait_;
  }
  if (step_observer_) step_observer_(step_compute_, step_rows_);
  ++chunk_.steps;
  ++step_;
  if (chunk_.steps == kLoadChunkSteps || (switch_.pending() && step_ >= switch_.step)) {
    FlushChunk();
  }
  return absl::OkStatus();
}

void ExpertServer::FlushChunk() {
  if (chunk_.steps == 0) return;
  std::lock_guard<std::mutex> lock(load_mu_);
  pending_load_.push_back(std::move(chunk_));
  chunk_ = LoadDelta{};
}

std::vector<ExpertServer::LoadDelta> ExpertServer::TakeLoad() {
  std::lock_guard<std::mutex> lock(load_mu_);
  std::vector<LoadDelta> out;
  out.swap(pending_load_);
  return out;
}

absl::Status ExpertServer::ServeLayer(int32_t moe_index) {
  const int64_t H = cfg_.hidden_size, I = cfg_.moe_intermediate_size;
  const eplb::Placement& placement = cur_->placement;
  const int32_t spw = placement.NumSlotsOf(worker_index_);
  const int32_t slot_begin = placement.SlotBegin(worker_index_);
  using Clock = std::chrono::steady_clock;
  const auto wait_start = Clock::now();
  SY_RETURN_IF_ERROR(
      Annotate(transport_->Exchange(StepTag(generation_, step_, moe_index, Phase::kDispatch), {},
                                    ranks_.attention, &recv_, timeout_),
               absl::StrCat("expert worker ", worker_index_, " dispatch, step ", step_)));
  step_wait_ += std::chrono::duration<double>(Clock::now() - wait_start).count();
  const size_t num_aw = ranks_.attention.size();
  send_.resize(num_aw);
  std::vector<transport::SendItem> sends(num_aw);
  std::vector<DispatchView> views(num_aw);
  uint32_t mesh_rows = 0;
  for (size_t a = 0; a < num_aw; ++a) {
    absl::Status st = Annotate(
        DecodeDispatch(recv_[a], H, placement.epoch, slot_begin, slot_begin + spw, &views[a]),
        absl::StrCat("expert worker ", worker_index_, " from rank ", ranks_.attention[a]));
    if (st.ok() && a == 0 && views[a].next.pending() && !switch_.pending()) {
      // The leader announces a switch: it must be to the staged placement,
      // at a later step.
      const Switch next = views[a].next;
      if (next.step <= step_ || next.epoch <= placement.epoch || staged_epoch() != next.epoch) {
        return absl::FailedPreconditionError(absl::StrCat(
            "expert worker ", worker_index_, ": the leader announces placement epoch ", next.epoch,
            " from step ", next.step, " at step ", step_, ", but this worker serves epoch ",
            placement.epoch, " and has staged epoch ", staged_epoch()));
      }
      switch_ = next;
    }
    if (absl::IsFailedPrecondition(st)) {
      // Another placement epoch: answer every attention worker with this
      // worker's epoch and no rows, so they fail at once on the mismatch
      // instead of waiting out the timeout; compute nothing.
      for (size_t w = 0; w < num_aw; ++w) {
        EncodeCombine(placement.epoch, switch_, nullptr, 0, 0, H, &send_[w]);
        sends[w] = {ranks_.attention[w], send_[w].data(), send_[w].size()};
      }
      (void)transport_->Exchange(StepTag(generation_, step_, moe_index, Phase::kCombine), sends, {},
                                 &recv_, timeout_);
      return st;
    }
    SY_RETURN_IF_ERROR(st);
    mesh_rows += views[a].num_rows;
  }
  // The rows of every attention worker together, then the routed-experts
  // step shared with the single-process engine (engine::RoutedExperts): one
  // grouped FFN per layer over the whole mesh's rows for each slot, outputs
  // back in arrival order (top-k 1, weight 1: unweighted; the attention
  // workers apply the router weights).
  std::vector<int64_t> base(num_aw + 1, 0);
  for (size_t a = 0; a < num_aw; ++a) base[a + 1] = base[a] + views[a].num_rows;
  const int64_t total = base[num_aw];
  gathered_.resize(static_cast<size_t>(total) * H);
  local_slot_.resize(static_cast<size_t>(total));
  for (size_t a = 0; a < num_aw; ++a) {
    if (views[a].num_rows == 0) continue;  // (empty buffers may be null: no memcpy)
    std::memcpy(gathered_.data() + base[a] * H, views[a].rows,
                sizeof(float) * views[a].num_rows * H);
    for (uint32_t r = 0; r < views[a].num_rows; ++r) {
      local_slot_[base[a] + r] = views[a].slots[r] - slot_begin;
    }
  }
  if (ones_.size() < static_cast<size_t>(total)) ones_.resize(static_cast<size_t>(total), 1.0f);
  scattered_.resize(static_cast<size_t>(total) * H);
  const std::vector<const void*>& ptrs = cur_->ptrs[moe_index];
  const auto compute_start = Clock::now();
  SY_RETURN_IF_ERROR(routed_.Run(
      ctx_, kernels::DType::kF32, gathered_.data(), total, local_slot_.data(), 1, ones_.data(), spw,
      ptrs.data(), ptrs.data() + spw, H, I, scattered_.data(), &chunk_.slot_tokens[moe_index]));
  step_compute_ += std::chrono::duration<double>(Clock::now() - compute_start).count();
  step_rows_ += total;
  step_layer_rows_[static_cast<size_t>(moe_index)] += total;
  for (size_t w = 0; w < num_aw; ++w) {
    EncodeCombine(placement.epoch, switch_, scattered_.data() + base[w] * H, views[w].num_rows,
                  mesh_rows, H, &send_[w]);
    sends[w] = {ranks_.attention[w], send_[w].data(), send_[w].size()};
  }
  return Annotate(transport_->Exchange(StepTag(generation_, step_, moe_index, Phase::kCombine),
                                       sends, {}, &recv_, timeout_),
                  absl::StrCat("expert worker ", worker_index_, " combine, step ", step_));
}

}  // namespace sy::moe
