// Paged KV cache: fixed-size blocks of token slots shared by all sequences,
// with a block table per sequence.
//
// Storage per layer is one array of `num_blocks * block_size` rows. GQA rows
// hold the keys (and, in a second array, the values) of every kv head; MLA
// rows hold the compressed latent (kv_a_layernorm'd c_kv followed by the
// roped k_pe), which both the absorbed decode form and the expanded form can
// read. The cache is owned by one engine thread; it is not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/device.h"
#include "model/config.h"

namespace sy::engine {

// Hands out block ids. All-or-nothing allocation, so a sequence never holds a
// partial reservation.
class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_blocks);

  // `n` free block ids, or ResourceExhausted (nothing taken) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n);
  // Returns blocks to the pool. Freeing a block twice is a programmer error.
  void Free(const std::vector<int32_t>& blocks);

  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_total() const { return num_total_; }

 private:
  int32_t num_total_;
  std::vector<int32_t> free_;
  std::vector<bool> in_use_;
};

struct KvCacheOptions {
  int64_t block_size = 16;  // tokens per block
  int64_t num_blocks = 0;   // 0: derive from memory_fraction, else from max_tokens
  int64_t max_tokens = 0;   // used when num_blocks == 0 and memory_fraction == 0
  // Where the cache lives and its element type (the model runner's).
  kernels::Context ctx;
  kernels::DType dtype = kernels::DType::kF32;
  // CUDA: when num_blocks == 0 and this is > 0, the cache takes this fraction
  // of the device memory that is free when it is created (after the weights).
  double memory_fraction = 0.0;
};

class KvCache {
 public:
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const model::ModelConfig& cfg,
                                                         const KvCacheOptions& options);

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  // Elements per token slot in the key / value arrays.
  int64_t k_row() const { return k_row_; }
  int64_t v_row() const { return v_row_; }
  // Layer storage in the options' context memory, of dtype(). MLA keeps a
  // single latent array: v() aliases k().
  void* k(int64_t layer) { return k_[layer].data(); }
  void* v(int64_t layer) { return shared_kv_ ? k_[layer].data() : v_[layer].data(); }
  kernels::DType dtype() const { return dtype_; }
  BlockAllocator& allocator() { return allocator_; }
  const BlockAllocator& allocator() const { return allocator_; }
  // Bytes of cache storage.
  int64_t bytes() const;

 private:
  KvCache(int64_t block_size, int64_t num_blocks, int64_t k_row, int64_t v_row, bool shared_kv,
          kernels::DType dtype);

  int64_t block_size_;
  int64_t num_blocks_;
  int64_t k_row_;
  int64_t v_row_;
  bool shared_kv_;
  kernels::DType dtype_;
  std::vector<kernels::DeviceBuffer> k_;
  std::vector<kernels::DeviceBuffer> v_;
  BlockAllocator allocator_;
};

}  // namespace sy::engine
