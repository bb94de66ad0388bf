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
      experts_(cfg.num_layers),
      host_ptrs_(cfg.num_layers) {
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

absl::Status RoutedExperts::Grow(const kernels::Context& ctx, kernels::DeviceBuffer& b,
                                 int64_t bytes) {
  SY_ASSIGN_OR_RETURN(const bool grew, b.Grow(ctx, bytes));
  generation_ += grew ? 1 : 0;
  return absl::OkStatus();
}

absl::Status RoutedExperts::Run(const kernels::Context& ctx, kernels::DType dtype, const void* x,
                                int64_t num_tokens, const int32_t* ids, int64_t top_k,
                                const float* weights, int64_t num_experts,
                                const void* const* gate_up, const void* const* down, int64_t hidden,
                                int64_t inter, void* out, std::vector<int64_t>* counts) {
  if (num_tokens == 0) return absl::OkStatus();
  const int64_t rows = num_tokens * top_k, es = kernels::DTypeSize(dtype);
  SY_RETURN_IF_ERROR(Grow(ctx, gathered_, rows * hidden * es));
  SY_RETURN_IF_ERROR(Grow(ctx, expert_out_, rows * hidden * es));
  SY_RETURN_IF_ERROR(Grow(ctx, row_pos_, rows * 4));
  SY_RETURN_IF_ERROR(Grow(ctx, offsets_, (num_experts + 1) * 8));
  SY_RETURN_IF_ERROR(kernels::MoePermute(ctx, dtype, x, num_tokens, hidden, ids, top_k, num_experts,
                                         offsets_.as<int64_t>(), row_pos_.as<int32_t>(),
                                         gathered_.data()));
  SY_RETURN_IF_ERROR(kernels::GroupedExpertFfn(ctx, dtype, gathered_.data(), offsets_.as<int64_t>(),
                                               num_experts, rows, gate_up, down, hidden, inter,
                                               expert_out_.data()));
  SY_RETURN_IF_ERROR(kernels::MoeCombine(ctx, dtype, expert_out_.data(), row_pos_.as<int32_t>(),
                                         weights, num_tokens, top_k, hidden, out));
  if (counts != nullptr) {
    std::vector<int64_t> off(static_cast<size_t>(num_experts + 1));
    SY_RETURN_IF_ERROR(
        kernels::CopyToHost(ctx, off.data(), offsets_.data(), (num_experts + 1) * 8));
    counts->resize(static_cast<size_t>(num_experts), 0);
    for (int64_t e = 0; e < num_experts; ++e) (*counts)[e] += off[e + 1] - off[e];
  }
  return absl::OkStatus();
}

absl::Status LocalExpertExecutor::Run(int64_t layer, const void* hidden, int64_t num_tokens,
                                      const int32_t* topk_ids, const float* topk_weights,
                                      int64_t top_k, void* out) {
  if (layer < 0 || layer >= cfg_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has no routed experts"));
  }
  const int64_t E = cfg_.num_experts;
  const void* const* gate_up;
  const void* const* down;
  if (on_device_) {
    if (device_layers_[layer].gate_up.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has no routed experts"));
    }
    gate_up = device_layers_[layer].ptrs.as<const void*>();
    down = gate_up + E;
  } else {
    if (experts_[layer].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has no routed experts"));
    }
    std::vector<const void*>& ptrs = host_ptrs_[layer];
    if (ptrs.empty()) {
      for (int64_t e = 0; e < E; ++e) ptrs.push_back(experts_[layer][e].gate_up.ptr());
      for (int64_t e = 0; e < E; ++e) ptrs.push_back(experts_[layer][e].down.ptr());
    }
    gate_up = ptrs.data();  // (MoePermute rejects ids outside [0, E) on the CPU)
    down = gate_up + E;
  }
  return routed_.Run(ctx_, dtype_, hidden, num_tokens, topk_ids, top_k, topk_weights, E, gate_up,
                     down, cfg_.hidden_size, cfg_.moe_intermediate_size, out);
}

}  // namespace sy::engine
