// One forward pass of an MoE decoder over a batch of sequences.
//
// The batch is flattened: tokens of every sequence back to back, each with
// its position and KV slot; per sequence a query range, context length and
// block table (the layout kernels::PagedAttention reads). Prefill chunks and
// single decode tokens mix freely in one batch. Logits are computed only for
// the rows the caller asks for.
//
// The runner owns the dense weights; the routed experts of MoE layers go
// through an ExpertExecutor. Not thread-safe: one engine thread drives it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/experts.h"
#include "engine/kv_cache.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/weights.h"

namespace sy::engine {

struct ForwardBatch {
  std::vector<int32_t> tokens;        // [num_tokens]
  std::vector<int32_t> positions;     // [num_tokens]
  std::vector<int32_t> slots;         // [num_tokens] KV slot each token's k/v is written to
  std::vector<int32_t> q_start;       // [num_seqs + 1]
  std::vector<int32_t> context_lens;  // [num_seqs] tokens in cache after this step
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;  // token indices whose logits are returned

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_seqs() const { return static_cast<int64_t>(context_lens.size()); }
};

// The batch of one sequence whose KV blocks are `blocks`: `tokens` at
// positions [start, start + tokens.size()), logits asked for every row.
ForwardBatch SingleSequenceBatch(const std::vector<int32_t>& tokens, int64_t start,
                                 const std::vector<int32_t>& blocks, int64_t block_size);

class ModelRunner {
 public:
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      const model::ModelConfig& cfg, model::DenseWeights weights,
      std::unique_ptr<ExpertExecutor> experts, const kernels::Context& ctx);

  // Runs the batch, writing k/v into `cache`, and returns logits
  // [logit_rows.size(), vocab_size] in `logits`.
  absl::Status Forward(const ForwardBatch& batch, KvCache& cache, std::vector<float>* logits);

  const model::ModelConfig& config() const { return cfg_; }

 private:
  ModelRunner(const model::ModelConfig& cfg, model::DenseWeights weights,
              std::unique_ptr<ExpertExecutor> experts, const kernels::Context& ctx,
              model::RopeTables rope);

  absl::Status Attention(int64_t layer, const ForwardBatch& batch, KvCache& cache, const float* x,
                         float* out);
  absl::Status AttentionGqa(int64_t layer, const ForwardBatch& batch, KvCache& cache,
                            const float* x, float* out);
  absl::Status AttentionMla(int64_t layer, const ForwardBatch& batch, KvCache& cache,
                            const float* x, float* out);
  absl::Status FeedForward(int64_t layer, int64_t num_tokens, const float* x, float* out);
  absl::Status Mlp(const model::MlpWeights& w, int64_t num_tokens, int64_t inter, const float* x,
                   float* out);

  model::ModelConfig cfg_;
  model::DenseWeights w_;
  std::unique_ptr<ExpertExecutor> experts_;
  kernels::Context ctx_;
  model::RopeTables rope_;
  // MLA: w_uk transposed per head to [H, kv_lora_rank, qk_nope_head_dim].
  std::vector<std::vector<float>> w_uk_t_;

  // Activation scratch, grown on demand.
  std::vector<float> hidden_, normed_, attn_out_, ffn_out_;
  std::vector<float> qkv_, q_, k_, v_, o_, q_lat_, o_lat_, lora_, kv_lat_;
  std::vector<float> mlp_a_, mlp_b_, router_logits_, topk_w_, shared_out_, shared_gate_;
  std::vector<int32_t> topk_ids_;
  std::vector<float> final_rows_;
};

}  // namespace sy::engine
