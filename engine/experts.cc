#include "engine/experts.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::engine {

LocalExpertExecutor::LocalExpertExecutor(const model::ModelConfig& cfg, const kernels::Context& ctx,
                                         kernels::DType dtype)
    : cfg_(cfg),
      ctx_(ctx),
      dtype_(dtype),
      on_device_(ctx.device != kernels::Device::kCpu),
      experts_(cfg.num_layers) {
  if (on_device_) device_layers_.resize(cfg.num_layers);
}

absl::Status LocalExpertExecutor::AddExpert(int64_t layer, int64_t expert, model::MlpWeights w) {
  if (!on_device_) {
    experts_[layer][expert] = std::move(w);
    return absl::OkStatus();
  }
  const int64_t E = cfg_.num_experts, H = cfg_.hidden_size, I = cfg_.moe_intermediate_size;
  const int64_t es = kernels::DTypeSize(dtype_);
  DeviceLayer& d = device_layers_[layer];
  if (d.gate_up.empty()) {
    SY_ASSIGN_OR_RETURN(d.gate_up, kernels::DeviceBuffer::Allocate(ctx_, E * 2 * I * H * es));
    SY_ASSIGN_OR_RETURN(d.down, kernels::DeviceBuffer::Allocate(ctx_, E * H * I * es));
    std::vector<const void*> ptrs(static_cast<size_t>(2 * E));
    for (int64_t e = 0; e < E; ++e) {
      ptrs[e] = d.gate_up.as<char>() + e * 2 * I * H * es;
      ptrs[E + e] = d.down.as<char>() + e * H * I * es;
    }
    SY_ASSIGN_OR_RETURN(
        d.ptrs, kernels::DeviceBuffer::Allocate(ctx_, 2 * E * static_cast<int64_t>(sizeof(void*))));
    SY_RETURN_IF_ERROR(kernels::CopyToDevice(ctx_, d.ptrs.data(), ptrs.data(),
                                             2 * E * static_cast<int64_t>(sizeof(void*))));
  }
  if (w.gate_up.numel() != 2 * I * H || w.down.numel() != H * I) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert ", expert, " of layer ", layer, " has unexpected shapes"));
  }
  SY_RETURN_IF_ERROR(kernels::UploadAs(ctx_, dtype_, w.gate_up.ptr(),
                                       d.gate_up.as<char>() + expert * 2 * I * H * es, 2 * I * H));
  SY_RETURN_IF_ERROR(kernels::UploadAs(ctx_, dtype_, w.down.ptr(),
                                       d.down.as<char>() + expert * H * I * es, H * I));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LocalExpertExecutor>> LocalExpertExecutor::Load(
    const model::ModelConfig& cfg, const model::Checkpoint& ckpt, const kernels::Context& ctx,
    kernels::DType dtype) {
  std::unique_ptr<LocalExpertExecutor> ex(new LocalExpertExecutor(cfg, ctx, dtype));
  const int64_t num_moe = cfg.num_moe_layers();
  int64_t done = 0;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    if (!cfg.layer_is_moe[l]) continue;
    ex->experts_[l].resize(ex->on_device_ ? 0 : cfg.num_experts);
    for (int64_t e = 0; e < cfg.num_experts; ++e) {
      SY_ASSIGN_OR_RETURN(model::MlpWeights w, model::LoadExpert(cfg, ckpt, l, e));
      SY_RETURN_IF_ERROR(ex->AddExpert(l, e, std::move(w)));
    }
    ++done;
    SY_LOG(INFO) << "experts: loaded layer " << l << " (" << done << "/" << num_moe << ")";
  }
  return ex;
}

absl::StatusOr<std::unique_ptr<LocalExpertExecutor>> LocalExpertExecutor::Dummy(
    const model::ModelConfig& cfg, uint64_t seed, const kernels::Context& ctx,
    kernels::DType dtype) {
  std::unique_ptr<LocalExpertExecutor> ex(new LocalExpertExecutor(cfg, ctx, dtype));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    if (!cfg.layer_is_moe[l]) continue;
    ex->experts_[l].resize(ex->on_device_ ? 0 : cfg.num_experts);
    for (int64_t e = 0; e < cfg.num_experts; ++e) {
      SY_RETURN_IF_ERROR(ex->AddExpert(l, e, model::DummyExpert(cfg, l, e, seed)));
    }
    SY_LOG(INFO) << "experts: filled layer " << l << " with dummy weights";
  }
  return ex;
}

absl::Status LocalExpertExecutor::GrowScratch(kernels::DeviceBuffer& b, int64_t bytes) {
  SY_ASSIGN_OR_RETURN(const bool grew, b.Grow(ctx_, bytes));
  scratch_generation_ += grew ? 1 : 0;
  return absl::OkStatus();
}

absl::Status LocalExpertExecutor::RunOnDevice(int64_t layer, const void* hidden, int64_t num_tokens,
                                              const int32_t* topk_ids, const float* topk_weights,
                                              int64_t top_k, void* out) {
  const int64_t E = cfg_.num_experts, H = cfg_.hidden_size, I = cfg_.moe_intermediate_size;
  const int64_t rows = num_tokens * top_k, es = kernels::DTypeSize(dtype_);
  if (device_layers_[layer].gate_up.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has no routed experts"));
  }
  if (num_tokens == 0) return absl::OkStatus();
  SY_RETURN_IF_ERROR(GrowScratch(d_gathered_, std::max<int64_t>(rows, 1) * H * es));
  SY_RETURN_IF_ERROR(GrowScratch(d_expert_out_, std::max<int64_t>(rows, 1) * H * es));
  SY_RETURN_IF_ERROR(GrowScratch(d_row_pos_, std::max<int64_t>(rows, 1) * 4));
  SY_RETURN_IF_ERROR(GrowScratch(d_offsets_, (E + 1) * 8));
  const DeviceLayer& d = device_layers_[layer];
  const auto* ptrs = d.ptrs.as<const void*>();
  SY_RETURN_IF_ERROR(kernels::MoePermute(ctx_, dtype_, hidden, num_tokens, H, topk_ids, top_k, E,
                                         d_offsets_.as<int64_t>(), d_row_pos_.as<int32_t>(),
                                         d_gathered_.data()));
  SY_RETURN_IF_ERROR(kernels::GroupedExpertFfn(ctx_, dtype_, d_gathered_.data(),
                                               d_offsets_.as<int64_t>(), E, rows, ptrs, ptrs + E, H,
                                               I, d_expert_out_.data()));
  return kernels::MoeCombine(ctx_, dtype_, d_expert_out_.data(), d_row_pos_.as<int32_t>(),
                             topk_weights, num_tokens, top_k, H, out);
}

absl::Status LocalExpertExecutor::Run(int64_t layer, const void* hidden_v, int64_t num_tokens,
                                      const int32_t* topk_ids, const float* topk_weights,
                                      int64_t top_k, void* out_v) {
  if (layer < 0 || layer >= cfg_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has no routed experts"));
  }
  if (on_device_) {
    return RunOnDevice(layer, hidden_v, num_tokens, topk_ids, topk_weights, top_k, out_v);
  }
  if (experts_[layer].empty()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has no routed experts"));
  }
  const auto* hidden = static_cast<const float*>(hidden_v);
  auto* out = static_cast<float*>(out_v);
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
      ctx_, kernels::DType::kF32, gathered_.data(), offsets_.data(), E, rows, gate_up_ptrs_.data(),
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
