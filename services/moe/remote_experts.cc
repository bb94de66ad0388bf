#include "services/moe/remote_experts.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "services/moe/moe_wire.h"

namespace sy::moe {

RemoteExpertExecutor::RemoteExpertExecutor(const model::ModelConfig& cfg, eplb::Placement placement,
                                           MeshRanks ranks, transport::Transport* transport,
                                           absl::Duration timeout)
    : cfg_(cfg),
      placement_(std::move(placement)),
      ranks_(std::move(ranks)),
      transport_(transport),
      timeout_(timeout) {
  const size_t n = ranks_.experts.size();
  slots_.resize(n);
  rows_.resize(n);
  row_token_.resize(n);
  row_weight_.resize(n);
  send_.resize(n);
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
  last_moe_index_ = moe_index;
  absl::Status st = Exchange(moe_index, hidden, num_tokens, topk_ids, topk_weights, top_k, out);
  if (moe_index == static_cast<int32_t>(placement_.layers.size()) - 1) {
    ++step_;
    last_moe_index_ = -1;
    last_step_mesh_rows_ = mesh_rows_;
    mesh_rows_ = 0;
  }
  return st;
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
  const int64_t H = cfg_.hidden_size;
  const size_t num_ew = ranks_.experts.size();
  for (size_t w = 0; w < num_ew; ++w) {
    slots_[w].clear();
    rows_[w].clear();
    row_token_[w].clear();
    row_weight_[w].clear();
  }
  const auto& log2phy = placement_.log2phy[moe_index];
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t k = 0; k < top_k; ++k) {
      const int32_t e = topk_ids[t * top_k + k];
      if (e < 0 || e >= placement_.num_logical) {
        return absl::InvalidArgumentError(absl::StrCat("expert id ", e, " out of range"));
      }
      const auto& replicas = log2phy[e];
      // Replicas are equivalent; rotate through them to spread the load.
      const int32_t slot = replicas[(spread_ + t) % replicas.size()];
      const int32_t w = placement_.WorkerOfSlot(slot);
      slots_[w].push_back(slot);  // global slot id: the receiver checks it is its own
      rows_[w].insert(rows_[w].end(), hidden + t * H, hidden + (t + 1) * H);
      row_token_[w].push_back(static_cast<int32_t>(t));
      row_weight_[w].push_back(topk_weights[t * top_k + k]);
    }
  }
  ++spread_;
  std::vector<transport::SendItem> sends(num_ew);
  for (size_t w = 0; w < num_ew; ++w) {
    EncodeDispatch(placement_.epoch, slots_[w], rows_[w], &send_[w]);
    sends[w] = {ranks_.experts[w], send_[w].data(), send_[w].size()};
  }
  SY_RETURN_IF_ERROR(Annotate(
      transport_->Exchange(StepTag(step_, moe_index, Phase::kDispatch), sends, {}, &recv_,
                           timeout_),
      absl::StrCat("MoE dispatch, step ", step_, " layer ", placement_.layers[moe_index])));
  SY_RETURN_IF_ERROR(
      Annotate(transport_->Exchange(StepTag(step_, moe_index, Phase::kCombine), {}, ranks_.experts,
                                    &recv_, timeout_),
               absl::StrCat("MoE combine, step ", step_, " layer ", placement_.layers[moe_index])));
  if (num_tokens > 0) std::memset(out, 0, sizeof(float) * num_tokens * H);
  for (size_t w = 0; w < num_ew; ++w) {
    const float* rows = nullptr;
    uint32_t mesh_rows = 0;
    SY_RETURN_IF_ERROR(
        Annotate(DecodeCombine(recv_[w], placement_.epoch,
                               static_cast<uint32_t>(row_token_[w].size()), H, &rows, &mesh_rows),
                 absl::StrCat("from expert worker ", w)));
    mesh_rows_ += mesh_rows;
    for (size_t r = 0; r < row_token_[w].size(); ++r) {
      float* dst = out + static_cast<int64_t>(row_token_[w][r]) * H;
      const float* src = rows + r * H;
      const float wt = row_weight_[w][r];
      for (int64_t c = 0; c < H; ++c) dst[c] += wt * src[c];
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ExpertServer>> ExpertServer::Create(
    const model::ModelConfig& cfg, const eplb::Placement& placement, int32_t worker_index,
    MeshRanks ranks, transport::Transport* transport, const model::Checkpoint* ckpt,
    uint64_t dummy_seed, absl::Duration timeout, const kernels::Context& ctx) {
  if (worker_index < 0 || worker_index >= placement.num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("expert worker index ", worker_index,
                                                   " outside the placement's ",
                                                   placement.num_workers, " workers"));
  }
  std::unique_ptr<ExpertServer> s(new ExpertServer());
  s->cfg_ = cfg;
  s->placement_ = placement;
  s->worker_index_ = worker_index;
  s->ranks_ = std::move(ranks);
  s->transport_ = transport;
  s->timeout_ = timeout;
  s->ctx_ = ctx;
  const int32_t spw = placement.NumSlotsOf(worker_index);
  s->slots_.resize(placement.layers.size());
  s->load_.assign(placement.layers.size(), std::vector<int64_t>(spw, 0));
  for (size_t l = 0; l < placement.layers.size(); ++l) {
    for (int32_t i = 0; i < spw; ++i) {
      const int32_t expert = placement.phy2log[l][placement.SlotBegin(worker_index) + i];
      if (ckpt != nullptr) {
        SY_ASSIGN_OR_RETURN(model::MlpWeights w,
                            model::LoadExpert(cfg, *ckpt, placement.layers[l], expert));
        s->slots_[l].push_back(std::move(w));
      } else {
        s->slots_[l].push_back(model::DummyExpert(cfg, placement.layers[l], expert, dummy_seed));
      }
    }
    SY_LOG(INFO) << "expert worker " << worker_index << ": loaded " << spw << " slots of layer "
                 << placement.layers[l] << " (" << l + 1 << "/" << placement.layers.size() << ")";
  }
  // What the grouped FFN reads: per layer the gate_up then the down pointers.
  s->weight_ptrs_.resize(placement.layers.size());
  for (size_t l = 0; l < placement.layers.size(); ++l) {
    for (const model::MlpWeights& w : s->slots_[l]) s->weight_ptrs_[l].push_back(w.gate_up.ptr());
    for (const model::MlpWeights& w : s->slots_[l]) s->weight_ptrs_[l].push_back(w.down.ptr());
  }
  return s;
}

absl::Status ExpertServer::ServeStep() {
  for (int32_t i = 0; i < static_cast<int32_t>(placement_.layers.size()); ++i) {
    SY_RETURN_IF_ERROR(ServeLayer(i));
  }
  ++step_;
  return absl::OkStatus();
}

absl::Status ExpertServer::ServeLayer(int32_t moe_index) {
  const int64_t H = cfg_.hidden_size, I = cfg_.moe_intermediate_size;
  const int32_t spw = placement_.NumSlotsOf(worker_index_);
  const int32_t slot_begin = placement_.SlotBegin(worker_index_);
  SY_RETURN_IF_ERROR(
      Annotate(transport_->Exchange(StepTag(step_, moe_index, Phase::kDispatch), {},
                                    ranks_.attention, &recv_, timeout_),
               absl::StrCat("expert worker ", worker_index_, " dispatch, step ", step_)));
  const size_t num_aw = ranks_.attention.size();
  send_.resize(num_aw);
  std::vector<transport::SendItem> sends(num_aw);
  std::vector<DispatchView> views(num_aw);
  uint32_t mesh_rows = 0;
  for (size_t a = 0; a < num_aw; ++a) {
    absl::Status st = Annotate(
        DecodeDispatch(recv_[a], H, placement_.epoch, slot_begin, slot_begin + spw, &views[a]),
        absl::StrCat("expert worker ", worker_index_, " from rank ", ranks_.attention[a]));
    if (absl::IsFailedPrecondition(st)) {
      // Another placement epoch: answer every attention worker with this
      // worker's epoch and no rows, so they fail at once on the mismatch
      // instead of waiting out the timeout; compute nothing.
      for (size_t w = 0; w < num_aw; ++w) {
        EncodeCombine(placement_.epoch, nullptr, 0, 0, H, &send_[w]);
        sends[w] = {ranks_.attention[w], send_[w].data(), send_[w].size()};
      }
      (void)transport_->Exchange(StepTag(step_, moe_index, Phase::kCombine), sends, {}, &recv_,
                                 timeout_);
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
    std::memcpy(gathered_.data() + base[a] * H, views[a].rows,
                sizeof(float) * views[a].num_rows * H);
    for (uint32_t r = 0; r < views[a].num_rows; ++r) {
      local_slot_[base[a] + r] = views[a].slots[r] - slot_begin;
    }
  }
  if (ones_.size() < static_cast<size_t>(total)) ones_.resize(static_cast<size_t>(total), 1.0f);
  scattered_.resize(static_cast<size_t>(total) * H);
  const std::vector<const void*>& ptrs = weight_ptrs_[moe_index];
  SY_RETURN_IF_ERROR(routed_.Run(ctx_, kernels::DType::kF32, gathered_.data(), total,
                                 local_slot_.data(), 1, ones_.data(), spw, ptrs.data(),
                                 ptrs.data() + spw, H, I, scattered_.data(), &load_[moe_index]));
  for (size_t w = 0; w < num_aw; ++w) {
    EncodeCombine(placement_.epoch, scattered_.data() + base[w] * H, views[w].num_rows, mesh_rows,
                  H, &send_[w]);
    sends[w] = {ranks_.attention[w], send_[w].data(), send_[w].size()};
  }
  return Annotate(
      transport_->Exchange(StepTag(step_, moe_index, Phase::kCombine), sends, {}, &recv_, timeout_),
      absl::StrCat("expert worker ", worker_index_, " combine, step ", step_));
}

}  // namespace sy::moe
