#include "engine/kv_cache.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::engine {

BlockAllocator::BlockAllocator(int32_t num_blocks)
    : num_total_(num_blocks), in_use_(num_blocks, false) {
  free_.reserve(num_blocks);
  // Hand out low ids first (pop from the back).
  for (int32_t i = num_blocks - 1; i >= 0; --i) free_.push_back(i);
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int64_t n) {
  if (n < 0 || n > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: ", n, " blocks requested, ", free_.size(), " free"));
  }
  std::vector<int32_t> out(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  for (int32_t b : out) in_use_[b] = true;
  return out;
}

void BlockAllocator::Free(const std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) {
    SY_CHECK(b >= 0 && b < num_total_ && in_use_[b]) << "double free of KV block " << b;
    in_use_[b] = false;
    free_.push_back(b);
  }
}

KvCache::KvCache(int64_t block_size, int64_t num_blocks, int64_t k_row, int64_t v_row,
                 bool shared_kv, kernels::DType dtype)
    : block_size_(block_size),
      num_blocks_(num_blocks),
      k_row_(k_row),
      v_row_(v_row),
      shared_kv_(shared_kv),
      dtype_(dtype),
      allocator_(static_cast<int32_t>(num_blocks)) {}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const model::ModelConfig& cfg,
                                                         const KvCacheOptions& options) {
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError("kv cache: block_size must be positive");
  }
  if (options.block_size > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError("kv cache: kv_block_size must be <= 1048576 tokens");
  }
  int64_t k_row, v_row;
  bool shared = false;
  if (cfg.attention == model::AttentionKind::kMla) {
    k_row = cfg.kv_lora_rank + cfg.qk_rope_head_dim;
    v_row = k_row;
    shared = true;
  } else {
    k_row = cfg.num_kv_heads * cfg.head_dim;
    v_row = k_row;
  }
  const int64_t elem = kernels::DTypeSize(options.dtype);
  const int64_t block_bytes =
      options.block_size * (k_row + (shared ? 0 : v_row)) * cfg.num_layers * elem;
  const bool on_gpu = options.ctx.device == kernels::Device::kCuda;
  int64_t num_blocks = options.num_blocks;
  if (num_blocks <= 0 && on_gpu && options.memory_fraction > 0) {
    if (options.memory_fraction > 0.98) {
      return absl::InvalidArgumentError("kv cache: memory_fraction must be in (0, 0.98]");
    }
    SY_ASSIGN_OR_RETURN(kernels::DeviceInfo info, kernels::GetDeviceInfo(options.ctx));
    num_blocks =
        static_cast<int64_t>(options.memory_fraction * static_cast<double>(info.free_memory)) /
        block_bytes;
    num_blocks = std::min<int64_t>(num_blocks, (int64_t{1} << 30) / options.block_size);
    if (num_blocks <= 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("kv cache: ", options.memory_fraction, " of the ", info.free_memory >> 20,
                       " MiB free on ", info.name, " holds no block of ", block_bytes, " bytes"));
    }
  }
  if (num_blocks <= 0) {
    if (options.max_tokens <= 0) {
      return absl::InvalidArgumentError("kv cache: set num_blocks or max_tokens");
    }
    num_blocks = (options.max_tokens + options.block_size - 1) / options.block_size;
  }
  if (num_blocks > (int64_t{1} << 30) / options.block_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv cache: ", num_blocks, " blocks of ", options.block_size,
                     " tokens exceed 2^30 token slots; lower kv_blocks or kv_block_size"));
  }
  const double bytes = static_cast<double>(num_blocks) * static_cast<double>(block_bytes);
  if (!on_gpu) {
    const double have =
        static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    if (have > 0 && bytes > have / 2) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "kv cache: ", num_blocks, " blocks of ", options.block_size, " tokens need ",
          static_cast<int64_t>(bytes / (1 << 20)), " MiB, more than half of this machine's ",
          static_cast<int64_t>(have / (1 << 20)), " MiB; lower kv_blocks or the context limit"));
    }
  }
  std::unique_ptr<KvCache> cache(
      new KvCache(options.block_size, num_blocks, k_row, v_row, shared, options.dtype));
  const int64_t slots = options.block_size * num_blocks;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    for (int pass = 0; pass < (shared ? 1 : 2); ++pass) {
      const int64_t n = slots * (pass == 0 ? k_row : v_row) * elem;
      SY_ASSIGN_OR_RETURN(kernels::DeviceBuffer b, kernels::DeviceBuffer::Allocate(options.ctx, n));
      // Zeros: padded rows of a captured decode step read finite values.
      SY_RETURN_IF_ERROR(kernels::Memset(options.ctx, b.data(), 0, n));
      (pass == 0 ? cache->k_ : cache->v_).push_back(std::move(b));
    }
  }
  return cache;
}

int64_t KvCache::bytes() const {
  const int64_t slots = block_size_ * num_blocks_;
  const int64_t per_layer = slots * (k_row_ + (shared_kv_ ? 0 : v_row_));
  return per_layer * static_cast<int64_t>(k_.size()) * kernels::DTypeSize(dtype_);
}

}  // namespace sy::engine
