#include "engine/loader.h"

#include <unistd.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::engine {

absl::StatusOr<std::unique_ptr<ModelRunner>> LoadModelRunner(const ModelSource& source,
                                                             const kernels::Context& ctx) {
  RunnerOptions options;
  options.ctx = ctx;
  return LoadModelRunner(source, options);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> LoadModelRunner(const ModelSource& source,
                                                             const RunnerOptions& options) {
  const kernels::Context& ctx = options.ctx;
  const auto t0 = std::chrono::steady_clock::now();
  SY_ASSIGN_OR_RETURN(model::ModelConfig cfg, model::LoadModelConfig(source.dir));
  SY_LOG(INFO) << "model " << cfg.architecture << ": " << cfg.num_layers << " layers ("
               << cfg.num_moe_layers() << " MoE, " << cfg.num_experts << " experts, top-"
               << cfg.top_k << "), hidden " << cfg.hidden_size << ", vocab " << cfg.vocab_size;
  // Refuse before allocating what the device cannot hold.
  const double need = static_cast<double>(kernels::DTypeSize(options.dtype)) *
                      static_cast<double>(model::EstimateParameterCount(cfg));
  if (ctx.device == kernels::Device::kCpu) {
    const double have =
        static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    if (have > 0 && need > have) {
      return absl::ResourceExhaustedError(absl::StrCat(
          cfg.source, ": the model needs about ", static_cast<int64_t>(need / (1 << 20)),
          " MiB of fp32 weights; this machine has ", static_cast<int64_t>(have / (1 << 20)),
          " MiB of memory"));
    }
  } else {
    SY_ASSIGN_OR_RETURN(kernels::DeviceInfo info, kernels::GetDeviceInfo(ctx));
    if (need > static_cast<double>(info.free_memory)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          cfg.source, ": the model needs about ", static_cast<int64_t>(need / (1 << 20)),
          " MiB of ", kernels::DTypeName(options.dtype), " weights; ", info.name, " has ",
          info.free_memory >> 20, " MiB free"));
    }
    SY_LOG(INFO) << "device " << info.name << " (" << info.total_memory / (1 << 20)
                 << " MiB), weights as " << kernels::DTypeName(options.dtype);
  }
  model::DenseWeights dense;
  std::unique_ptr<ExpertExecutor> experts;
  if (source.load_format == "dummy") {
    SY_LOG(INFO) << "load_format dummy: random weights (seed " << source.dummy_seed << ")";
    dense = model::DummyDenseWeights(cfg, source.dummy_seed);
    SY_ASSIGN_OR_RETURN(experts,
                        LocalExpertExecutor::Dummy(cfg, source.dummy_seed, ctx, options.dtype));
  } else if (source.load_format == "auto") {
    SY_ASSIGN_OR_RETURN(std::unique_ptr<model::Checkpoint> ckpt,
                        model::Checkpoint::Open(source.dir));
    SY_ASSIGN_OR_RETURN(dense, model::LoadDenseWeights(cfg, *ckpt));
    SY_ASSIGN_OR_RETURN(experts, LocalExpertExecutor::Load(cfg, *ckpt, ctx, options.dtype));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("load_format '", source.load_format, "' is not supported (auto, dummy)"));
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  SY_LOG(INFO) << "weights ready in " << static_cast<int64_t>(ms) << " ms";
  return ModelRunner::Create(cfg, std::move(dense), std::move(experts), options);
}

}  // namespace sy::engine
