// One forward pass of an MoE decoder over a batch of sequences.
//
// The batch is flattened: tokens of every sequence back to back, each with
// its position and KV slot; per sequence a query range, context length and
// block table (the layout kernels::PagedAttention reads). Prefill chunks and
// single decode tokens mix freely in one batch. Logits are computed only for
// the rows the caller asks for.
//
// The runner owns the dense weights, in its context's memory and dtype (the
// host fp32 tensors as they are on the CPU; uploaded as bf16 or fp32 for
// CUDA, freeing the host copies); the routed experts of MoE layers go
// through an ExpertExecutor, which sees activations in the same memory and
// dtype. Not thread-safe: one engine thread drives it.
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

// Where and in which element type a runner computes.
struct RunnerOptions {
  kernels::Context ctx;                         // host by default
  kernels::DType dtype = kernels::DType::kF32;  // activations, weights and KV cache
  // CUDA: replay decode-only steps of up to this many sequences as CUDA
  // graphs (one per batch-size bucket); 0 turns graphs off.
  int64_t max_graph_batch = 256;
  // CUDA graphs need a fixed block-table width: the longest context a
  // sequence can reach (the engine's max_model_len).
  int64_t max_context = 0;
};

// Device-side view of a batch (pointers into the runner's upload buffer).
struct DeviceBatch {
  const int32_t* tokens = nullptr;
  const int32_t* positions = nullptr;
  const int32_t* slots = nullptr;
  const int32_t* q_start = nullptr;
  const int32_t* context_lens = nullptr;
  const int32_t* block_tables = nullptr;
  const int32_t* logit_rows = nullptr;
  int64_t num_tokens = 0, num_seqs = 0, num_logit_rows = 0;
  int64_t max_blocks_per_seq = 0, max_q_len = 0, max_context_len = 0;
};

class ModelRunner {
 public:
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      const model::ModelConfig& cfg, model::DenseWeights weights,
      std::unique_ptr<ExpertExecutor> experts, const kernels::Context& ctx);
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      const model::ModelConfig& cfg, model::DenseWeights weights,
      std::unique_ptr<ExpertExecutor> experts, const RunnerOptions& options);

  // Runs the batch, writing k/v into `cache`, and returns logits
  // [logit_rows.size(), vocab_size] in `logits` (host memory; copied from
  // the device for CUDA).
  absl::Status Forward(const ForwardBatch& batch, KvCache& cache, std::vector<float>* logits);

  // Runs the batch and samples one token per logit row on the device
  // (kernels::SampleTokens): `params` has one entry per logit row. Decode-only
  // batches on CUDA replay a captured graph of the whole step. `logprobs`
  // (may be null) receives each chosen token's raw log-probability.
  absl::Status ForwardSample(const ForwardBatch& batch, KvCache& cache,
                             const std::vector<kernels::SampleParams>& params,
                             std::vector<int32_t>* tokens, std::vector<float>* logprobs);

  const model::ModelConfig& config() const { return cfg_; }
  const kernels::Context& ctx() const { return ctx_; }
  kernels::DType dtype() const { return dtype_; }
  // Bytes of dense weights in the runner's memory.
  int64_t weight_bytes() const { return weight_bytes_; }
  int64_t graphs_captured() const { return graphs_captured_; }
  // The longest context a sequence can reach (the engine's max_model_len):
  // sets the block-table width of captured decode graphs.
  void SetMaxContext(int64_t tokens) { options_.max_context = tokens; }
  int64_t max_context() const { return options_.max_context; }

 private:
  struct MlpPtrs {
    const void* gate_up = nullptr;
    const void* down = nullptr;
  };
  struct LayerPtrs {
    const void *input_norm = nullptr, *post_attn_norm = nullptr;
    const void *qkv = nullptr, *qkv_bias = nullptr, *q_norm = nullptr, *k_norm = nullptr;
    const void *q_proj = nullptr, *q_a_proj = nullptr, *q_a_norm = nullptr, *q_b_proj = nullptr;
    const void *kv_a_proj = nullptr, *kv_a_norm = nullptr, *w_uk_t = nullptr, *w_uv = nullptr;
    const void *o_proj = nullptr, *o_bias = nullptr;
    bool is_moe = false;
    MlpPtrs dense, shared;
    const void* router = nullptr;
    const float* correction_bias = nullptr;  // fp32 always
    const void* shared_gate = nullptr;
  };
  struct Graph {
    int64_t bucket = 0;
    int64_t generation = -1;  // scratch + workspace generation at capture
    std::unique_ptr<kernels::DeviceGraph> graph;
    kernels::DeviceBuffer meta;    // the batch's int32 metadata
    kernels::DeviceBuffer params;  // [bucket] SampleParams
    kernels::DeviceBuffer out;     // [bucket] tokens, then [bucket] logprobs
    DeviceBatch batch;
  };

  ModelRunner(const model::ModelConfig& cfg, std::unique_ptr<ExpertExecutor> experts,
              const RunnerOptions& options, model::RopeTables rope);
  absl::Status Upload(model::DenseWeights& w);
  absl::StatusOr<const void*> Put(model::Tensor& t, bool keep_f32 = false);
  absl::Status Grow(kernels::DeviceBuffer& b, int64_t elems, int64_t elem_bytes);
  // Copies `rows` sampled tokens and their logprobs back from `out`
  // ([stride] tokens, then [stride] logprobs) and waits for them.
  absl::Status ReadSampled(const kernels::DeviceBuffer& out, int64_t stride, int64_t rows,
                           std::vector<int32_t>* tokens, std::vector<float>* logprobs);
  int64_t Generation() const;

  // Validates token ids, copies the batch's metadata to `dst` (device) and
  // returns the device view.
  absl::StatusOr<DeviceBatch> StageBatch(const ForwardBatch& batch, int64_t pad_to_seqs,
                                         int64_t table_width, kernels::DeviceBuffer& dst);
  // Queues the whole forward pass; the logits end in logits_ (fp32 device).
  absl::Status Run(const DeviceBatch& b, KvCache& cache);
  absl::Status Attention(int64_t layer, const DeviceBatch& b, KvCache& cache, const void* x,
                         void* out);
  absl::Status AttentionGqa(int64_t layer, const DeviceBatch& b, KvCache& cache, const void* x,
                            void* out);
  absl::Status AttentionMla(int64_t layer, const DeviceBatch& b, KvCache& cache, const void* x,
                            void* out);
  absl::Status FeedForward(int64_t layer, int64_t num_tokens, const void* x, void* out);
  absl::Status Mlp(const MlpPtrs& w, int64_t num_tokens, int64_t inter, const void* x, void* out);
  absl::Status GraphStep(const ForwardBatch& batch, KvCache& cache,
                         const std::vector<kernels::SampleParams>& params,
                         std::vector<int32_t>* tokens, std::vector<float>* logprobs);

  model::ModelConfig cfg_;
  std::unique_ptr<ExpertExecutor> experts_;
  kernels::Context ctx_;
  kernels::DType dtype_;
  RunnerOptions options_;
  model::RopeTables rope_;
  const float* inv_freq_ = nullptr;  // in ctx_ memory

  // CPU fp32 keeps the host tensors and points into them; otherwise owned_
  // holds the uploaded copies.
  model::DenseWeights host_;
  std::vector<kernels::DeviceBuffer> owned_;
  const void* embed_ = nullptr;
  const void* final_norm_ = nullptr;
  const void* lm_head_ = nullptr;
  std::vector<LayerPtrs> layers_;
  int64_t weight_bytes_ = 0;

  // Activation scratch in ctx_ memory, grown on demand (growth bumps
  // scratch_generation_, which makes captured graphs re-capture).
  kernels::DeviceBuffer meta_;
  kernels::DeviceBuffer hidden_, normed_, attn_out_, ffn_out_;
  kernels::DeviceBuffer qkv_, q_, k_, v_, o_, q_lat_, o_lat_, lora_, kv_lat_;
  kernels::DeviceBuffer mlp_a_, mlp_b_, router_logits_, topk_w_, shared_out_, shared_gate_;
  kernels::DeviceBuffer topk_ids_, final_rows_, logits_;
  kernels::DeviceBuffer sample_params_, sample_out_;
  int64_t scratch_generation_ = 0;
  std::vector<int32_t> staging_;

  std::vector<Graph> graphs_;
  int64_t graphs_captured_ = 0;
};

}  // namespace sy::engine
