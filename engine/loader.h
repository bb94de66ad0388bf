// Builds a ModelRunner from a model directory: config.json plus either the
// checkpoint's safetensors (load_format "auto") or random weights of the
// configured shapes (load_format "dummy", no checkpoint needed).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model_runner.h"

namespace sy::engine {

struct ModelSource {
  std::string dir;                   // holds config.json (and the checkpoint for "auto")
  std::string load_format = "auto";  // auto | dummy
  uint64_t dummy_seed = 0;
};

absl::StatusOr<std::unique_ptr<ModelRunner>> LoadModelRunner(const ModelSource& source,
                                                             const kernels::Context& ctx);
// With the device, dtype and graph settings of `options`: for CUDA the
// weights go to device memory as they are read (one tensor or expert at a
// time on the host).
absl::StatusOr<std::unique_ptr<ModelRunner>> LoadModelRunner(const ModelSource& source,
                                                             const RunnerOptions& options);

}  // namespace sy::engine
