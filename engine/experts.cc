#include "engine/experts.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::engine {

LocalExpertExecutor::LocalExpertExecutor(const model::ModelConfig& cfg, const kernels::Context& ctx)
    : cfg_(cfg), ctx_(ctx), experts_(cfg.num_layers) {}

absl::StatusOr<std::unique_ptr<LocalExpertExecutor>> LocalExpertExecutor::Load(
    const model::ModelConfig& cfg, const model::Checkpoint& ckpt, const kernels::Context& ctx) {
  std::unique_ptr<LocalExpertExecutor> ex(new LocalExpertExecutor(cfg, ctx));
  const int64_t num_moe = cfg.num_moe_layers();
  int64_t done = 0;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    if (!cfg.layer_is_moe[l]) continue;
    ex->experts_[l].resize(cfg.num_experts);
    for (int64_t e = 0; e < cfg.num_experts; ++e) {
      SY_ASSIGN_OR_RETURN(ex->experts_[l][e], model::LoadExpert(cfg, ckpt, l, e));
    }
    ++done;
    SY_LOG(INFO) << "experts: loaded layer " << l << " (" << done << "/" << num_moe << ")";
  }
  return ex;
}

std::unique_ptr<LocalExpertExecutor> LocalExpertExecutor::Dummy(const model::ModelConfig& cfg,
                                                                uint64_t seed,
                                                                const kernels::Context& ctx) {
  std::unique_ptr<LocalExpertExecutor> ex(new LocalExpertExecutor(cfg, ctx));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    if (!cfg.layer_is_moe[l]) continue;
    ex->experts_[l].resize(cfg.num_experts);
    for (int64_t e = 0; e < cfg.num_experts; ++e) {
      ex->experts_[l][e] = model::DummyExpert(cfg, l, e, seed);
    }
    SY_LOG(INFO) << "experts: filled layer " << l << " with dummy weights";
  }
  return ex;
}

absl::Status LocalExpertExecutor::Run(int64_t layer, const float* hidden, int64_t num_tokens,
                                      const int32_t* topk_ids, const float* topk_weights,
                                      int64_t top_k, float* out) {
  if (layer < 0 || layer >= cfg_.num_layers || experts_[layer].empty()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has no routed experts"));
  }
  const int64_t E = cfg_.num_experts, H = cfg_.hidden_size;
  const int64_t rows = num_tokens * top_k;
  // Counting sort of (token, k) pairs by expert.
  offsets_.assign(E + 1, 0);
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t e = topk_ids[i];
    if (e < 0 || e >= E) {
      return absl::InvalidArgumentError(absl::StrCat("expert id ", e, " out of range"));
    }
    ++offsets_[e + 1];
  }
  for (int64_t e = 0; e < E; ++e) offsets_[e + 1] += offsets_[e];
  std::vector<int64_t> cursor(offsets_.begin(), offsets_.end() - 1);
  row_token_.resize(rows);
  row_weight_.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t pos = cursor[topk_ids[i]]++;
    row_token_[pos] = static_cast<int32_t>(i / top_k);
    row_weight_[pos] = topk_weights[i];
  }
  gathered_.resize(rows * H);
  SY_RETURN_IF_ERROR(kernels::Embedding(ctx_, kernels::DType::kF32, row_token_.data(), rows, hidden,
                                        num_tokens, H, gathered_.data()));
  gate_up_ptrs_.resize(E);
  down_ptrs_.resize(E);
  for (int64_t e = 0; e < E; ++e) {
    gate_up_ptrs_[e] = experts_[layer][e].gate_up.ptr();
    down_ptrs_[e] = experts_[layer][e].down.ptr();
  }
  expert_out_.resize(rows * H);
  SY_RETURN_IF_ERROR(kernels::GroupedExpertFfn(
      ctx_, kernels::DType::kF32, gathered_.data(), offsets_.data(), E, gate_up_ptrs_.data(),
      down_ptrs_.data(), H, cfg_.moe_intermediate_size, expert_out_.data()));
  // Combine: weighted sum per token, in expert order (as the reference does).
  std::memset(out, 0, sizeof(float) * num_tokens * H);
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = out + static_cast<int64_t>(row_token_[r]) * H;
    const float* src = expert_out_.data() + r * H;
    const float w = row_weight_[r];
    for (int64_t c = 0; c < H; ++c) dst[c] += w * src[c];
  }
  return absl::OkStatus();
}

}  // namespace sy::engine
