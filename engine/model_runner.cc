#include "engine/model_runner.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::engine {
namespace {

constexpr kernels::DType kF32 = kernels::DType::kF32;

// Decode batch sizes that get a CUDA graph each; a batch is padded up to the
// next one.
constexpr int64_t kGraphBuckets[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512};

}  // namespace

ForwardBatch SingleSequenceBatch(const std::vector<int32_t>& tokens, int64_t start,
                                 const std::vector<int32_t>& blocks, int64_t block_size) {
  ForwardBatch b;
  b.max_blocks_per_seq = static_cast<int64_t>(blocks.size());
  b.q_start = {0, static_cast<int32_t>(tokens.size())};
  b.context_lens = {static_cast<int32_t>(start + static_cast<int64_t>(tokens.size()))};
  b.block_tables = blocks;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t pos = start + static_cast<int64_t>(i);
    b.tokens.push_back(tokens[i]);
    b.positions.push_back(static_cast<int32_t>(pos));
    b.slots.push_back(
        static_cast<int32_t>(blocks[pos / block_size] * block_size + pos % block_size));
    b.logit_rows.push_back(static_cast<int32_t>(i));
  }
  return b;
}

ModelRunner::ModelRunner(const model::ModelConfig& cfg, std::unique_ptr<ExpertExecutor> experts,
                         const RunnerOptions& options, model::RopeTables rope)
    : cfg_(cfg),
      experts_(std::move(experts)),
      ctx_(options.ctx),
      dtype_(options.dtype),
      options_(options),
      rope_(std::move(rope)) {}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    const model::ModelConfig& cfg, model::DenseWeights weights,
    std::unique_ptr<ExpertExecutor> experts, const kernels::Context& ctx) {
  RunnerOptions options;
  options.ctx = ctx;
  return Create(cfg, std::move(weights), std::move(experts), options);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    const model::ModelConfig& cfg, model::DenseWeights weights,
    std::unique_ptr<ExpertExecutor> experts, const RunnerOptions& options) {
  if (static_cast<int64_t>(weights.layers.size()) != cfg.num_layers) {
    return absl::InvalidArgumentError("weights do not match the config's layer count");
  }
  if (experts == nullptr && cfg.num_moe_layers() > 0) {
    return absl::InvalidArgumentError("an MoE model needs an expert executor");
  }
  if (options.ctx.device == kernels::Device::kCpu && options.dtype != kF32) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", kernels::DTypeName(options.dtype),
                                                   " is not supported on the CPU (f32 only)"));
  }
  if (options.dtype == kernels::DType::kF16) {
    return absl::InvalidArgumentError("dtype f16 is not supported (bf16 or f32)");
  }
  SY_ASSIGN_OR_RETURN(model::RopeTables rope,
                      model::ComputeRopeTables(cfg.rope, cfg.max_position_embeddings));
  std::unique_ptr<ModelRunner> r(
      new ModelRunner(cfg, std::move(experts), options, std::move(rope)));
  SY_RETURN_IF_ERROR(r->Upload(weights));
  return r;
}

absl::StatusOr<const void*> ModelRunner::Put(model::Tensor& t, bool keep_f32) {
  if (t.empty()) return static_cast<const void*>(nullptr);
  if (ctx_.device == kernels::Device::kCpu) {
    weight_bytes_ += t.numel() * 4;
    return static_cast<const void*>(t.ptr());  // host_ keeps the data
  }
  const kernels::DType dt = keep_f32 ? kF32 : dtype_;
  SY_ASSIGN_OR_RETURN(kernels::DeviceBuffer b,
                      kernels::DeviceBuffer::Allocate(ctx_, t.numel() * kernels::DTypeSize(dt)));
  SY_RETURN_IF_ERROR(kernels::UploadAs(ctx_, dt, t.ptr(), b.data(), t.numel()));
  weight_bytes_ += b.bytes();
  const void* p = b.data();
  owned_.push_back(std::move(b));
  std::vector<float>().swap(t.data);  // the device copy is the weight now
  return p;
}

absl::Status ModelRunner::Upload(model::DenseWeights& weights) {
  host_ = std::move(weights);
  model::DenseWeights& w = host_;
  SY_ASSIGN_OR_RETURN(embed_, Put(w.embed));
  SY_ASSIGN_OR_RETURN(final_norm_, Put(w.final_norm));
  SY_ASSIGN_OR_RETURN(lm_head_, Put(w.lm_head));
  layers_.resize(cfg_.num_layers);
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    model::LayerWeights& lw = w.layers[l];
    model::AttentionWeights& a = lw.attn;
    LayerPtrs& p = layers_[l];
    if (cfg_.attention == model::AttentionKind::kMla) {
      // w_uk transposed per head to [H, kv_lora_rank, qk_nope_head_dim].
      const int64_t H = cfg_.num_heads, nope = cfg_.qk_nope_head_dim, r = cfg_.kv_lora_rank;
      model::Tensor t;
      t.shape = {H, r, nope};
      t.data.resize(H * r * nope);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < nope; ++i) {
          for (int64_t j = 0; j < r; ++j) {
            t.data[(h * r + j) * nope + i] = a.w_uk.data[(h * nope + i) * r + j];
          }
        }
      }
      a.w_uk = std::move(t);
      SY_ASSIGN_OR_RETURN(p.w_uk_t, Put(a.w_uk));
    }
    SY_ASSIGN_OR_RETURN(p.input_norm, Put(lw.input_norm));
    SY_ASSIGN_OR_RETURN(p.post_attn_norm, Put(lw.post_attn_norm));
    SY_ASSIGN_OR_RETURN(p.qkv, Put(a.qkv));
    SY_ASSIGN_OR_RETURN(p.qkv_bias, Put(a.qkv_bias));
    SY_ASSIGN_OR_RETURN(p.q_norm, Put(a.q_norm));
    SY_ASSIGN_OR_RETURN(p.k_norm, Put(a.k_norm));
    SY_ASSIGN_OR_RETURN(p.q_proj, Put(a.q_proj));
    SY_ASSIGN_OR_RETURN(p.q_a_proj, Put(a.q_a_proj));
    SY_ASSIGN_OR_RETURN(p.q_a_norm, Put(a.q_a_norm));
    SY_ASSIGN_OR_RETURN(p.q_b_proj, Put(a.q_b_proj));
    SY_ASSIGN_OR_RETURN(p.kv_a_proj, Put(a.kv_a_proj));
    SY_ASSIGN_OR_RETURN(p.kv_a_norm, Put(a.kv_a_norm));
    SY_ASSIGN_OR_RETURN(p.w_uv, Put(a.w_uv));
    SY_ASSIGN_OR_RETURN(p.o_proj, Put(a.o_proj));
    SY_ASSIGN_OR_RETURN(p.o_bias, Put(a.o_bias));
    p.is_moe = lw.is_moe;
    SY_ASSIGN_OR_RETURN(p.dense.gate_up, Put(lw.dense.gate_up));
    SY_ASSIGN_OR_RETURN(p.dense.down, Put(lw.dense.down));
    SY_ASSIGN_OR_RETURN(p.router, Put(lw.router));
    SY_ASSIGN_OR_RETURN(const void* bias, Put(lw.correction_bias, /*keep_f32=*/true));
    p.correction_bias = static_cast<const float*>(bias);
    SY_ASSIGN_OR_RETURN(p.shared.gate_up, Put(lw.shared.gate_up));
    SY_ASSIGN_OR_RETURN(p.shared.down, Put(lw.shared.down));
    SY_ASSIGN_OR_RETURN(p.shared_gate, Put(lw.shared_gate));
  }
  if (ctx_.device == kernels::Device::kCpu) {
    inv_freq_ = rope_.inv_freq.data();
  } else {
    const auto n = static_cast<int64_t>(rope_.inv_freq.size());
    SY_ASSIGN_OR_RETURN(kernels::DeviceBuffer b,
                        kernels::DeviceBuffer::Allocate(ctx_, std::max<int64_t>(n, 1) * 4));
    SY_RETURN_IF_ERROR(kernels::CopyToDevice(ctx_, b.data(), rope_.inv_freq.data(), n * 4));
    inv_freq_ = b.as<float>();
    owned_.push_back(std::move(b));
  }
  return absl::OkStatus();
}

absl::Status ModelRunner::Grow(kernels::DeviceBuffer& b, int64_t elems, int64_t elem_bytes) {
  SY_ASSIGN_OR_RETURN(const bool grew, b.Grow(ctx_, std::max<int64_t>(elems, 1) * elem_bytes));
  scratch_generation_ += grew ? 1 : 0;
  return absl::OkStatus();
}

absl::Status ModelRunner::ReadSampled(const kernels::DeviceBuffer& out, int64_t stride,
                                      int64_t rows, std::vector<int32_t>* tokens,
                                      std::vector<float>* logprobs) {
  std::vector<int32_t> host(static_cast<size_t>(2 * stride));
  SY_RETURN_IF_ERROR(kernels::CopyToHost(ctx_, host.data(), out.data(), 2 * stride * 4));
  tokens->assign(host.begin(), host.begin() + rows);
  if (logprobs != nullptr) {
    logprobs->resize(static_cast<size_t>(rows));
    std::memcpy(logprobs->data(), host.data() + stride, static_cast<size_t>(rows) * 4);
  }
  return absl::OkStatus();
}

int64_t ModelRunner::Generation() const {
  return scratch_generation_ + kernels::WorkspaceGeneration(ctx_) +
         (experts_ ? experts_->scratch_generation() : 0);
}

absl::StatusOr<DeviceBatch> ModelRunner::StageBatch(const ForwardBatch& batch, int64_t pad_to_seqs,
                                                    int64_t table_width,
                                                    kernels::DeviceBuffer& dst) {
  const int64_t V = cfg_.vocab_size;
  for (int32_t id : batch.tokens) {
    if (id < 0 || id >= V) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside vocabulary"));
    }
  }
  const int64_t S = batch.num_seqs(), T = batch.num_tokens();
  const auto R = static_cast<int64_t>(batch.logit_rows.size());
  const int64_t Sp = std::max(S, pad_to_seqs), pad = Sp - S;
  const int64_t Tp = T + pad, Rp = R + pad;
  const int64_t width = table_width > 0 ? table_width : batch.max_blocks_per_seq;
  if (batch.max_blocks_per_seq > width) {
    return absl::InvalidArgumentError("block table wider than the captured width");
  }
  staging_.assign(static_cast<size_t>(3 * Tp + (Sp + 1) + Sp + Sp * width + Rp), 0);
  int32_t* p = staging_.data();
  DeviceBatch d;
  d.num_tokens = Tp;
  d.num_seqs = Sp;
  d.num_logit_rows = Rp;
  d.max_blocks_per_seq = width;
  auto put = [&](const std::vector<int32_t>& v, int64_t n, int32_t fill) {
    int32_t* start = p;
    std::copy(v.begin(), v.end(), p);
    std::fill(p + v.size(), p + n, fill);
    p += n;
    return start;
  };
  int32_t* tokens = put(batch.tokens, Tp, 0);
  int32_t* positions = put(batch.positions, Tp, 0);
  int32_t* slots = put(batch.slots, Tp, -1);  // padding writes no KV
  int32_t* q_start = put(batch.q_start, Sp + 1, 0);
  for (int64_t s = S; s < Sp; ++s) q_start[s + 1] = q_start[s] + 1;
  // Padding sequences attend one (finite, zero-initialised or stale) slot.
  int32_t* context_lens = put(batch.context_lens, Sp, 1);
  int32_t* tables = p;
  for (int64_t s = 0; s < S; ++s) {
    std::copy(batch.block_tables.begin() + s * batch.max_blocks_per_seq,
              batch.block_tables.begin() + (s + 1) * batch.max_blocks_per_seq, p + s * width);
  }
  p += Sp * width;
  int32_t* logit_rows = put(batch.logit_rows, Rp, 0);
  for (int64_t i = 0; i < pad; ++i) logit_rows[R + i] = static_cast<int32_t>(T + i);
  for (int64_t s = 0; s < S; ++s) {
    d.max_q_len = std::max<int64_t>(d.max_q_len, q_start[s + 1] - q_start[s]);
    d.max_context_len = std::max<int64_t>(d.max_context_len, context_lens[s]);
  }
  if (pad > 0) d.max_q_len = std::max<int64_t>(d.max_q_len, 1);
  const int64_t bytes = static_cast<int64_t>(staging_.size() * sizeof(int32_t));
  SY_ASSIGN_OR_RETURN(const bool grew, dst.Grow(ctx_, bytes));
  scratch_generation_ += grew ? 1 : 0;
  SY_RETURN_IF_ERROR(kernels::CopyToDevice(ctx_, dst.data(), staging_.data(), bytes));
  auto* base = dst.as<int32_t>();
  auto at = [&](const int32_t* host) { return base + (host - staging_.data()); };
  d.tokens = at(tokens);
  d.positions = at(positions);
  d.slots = at(slots);
  d.q_start = at(q_start);
  d.context_lens = at(context_lens);
  d.block_tables = at(tables);
  d.logit_rows = at(logit_rows);
  return d;
}

absl::Status ModelRunner::Forward(const ForwardBatch& batch, KvCache& cache,
                                  std::vector<float>* logits) {
  if (batch.num_tokens() == 0) {
    logits->clear();
    return absl::OkStatus();
  }
  SY_ASSIGN_OR_RETURN(DeviceBatch d, StageBatch(batch, 0, 0, meta_));
  SY_RETURN_IF_ERROR(Run(d, cache));
  const int64_t n = d.num_logit_rows * cfg_.vocab_size;
  logits->resize(static_cast<size_t>(n));
  return kernels::CopyToHost(ctx_, logits->data(), logits_.data(), n * 4);
}

absl::Status ModelRunner::ForwardSample(const ForwardBatch& batch, KvCache& cache,
                                        const std::vector<kernels::SampleParams>& params,
                                        std::vector<int32_t>* tokens,
                                        std::vector<float>* logprobs) {
  const auto R = static_cast<int64_t>(batch.logit_rows.size());
  if (static_cast<int64_t>(params.size()) != R) {
    return absl::InvalidArgumentError("ForwardSample: one SampleParams per logit row");
  }
  tokens->clear();
  if (logprobs != nullptr) logprobs->clear();
  if (batch.num_tokens() == 0) return absl::OkStatus();
  const bool decode_only = batch.num_tokens() == batch.num_seqs() && R == batch.num_seqs();
  // Graphs only where the expert FFN runs without host synchronisation (the
  // small-M kernel, or the wgmma grouped GEMM on Hopper in bf16): elsewhere
  // its cuBLAS paths read the offsets on the host.
  const bool graph_friendly = cfg_.num_moe_layers() == 0 ||
                              kernels::GroupedExpertFfnGraphSafe(
                                  ctx_, dtype_, cfg_.num_experts, batch.num_seqs() * cfg_.top_k,
                                  cfg_.hidden_size, cfg_.moe_intermediate_size);
  if (ctx_.device == kernels::Device::kCuda && decode_only && options_.max_context > 0 &&
      graph_friendly && batch.num_seqs() <= options_.max_graph_batch &&
      batch.num_seqs() <= kGraphBuckets[std::size(kGraphBuckets) - 1]) {
    return GraphStep(batch, cache, params, tokens, logprobs);
  }
  SY_ASSIGN_OR_RETURN(DeviceBatch d, StageBatch(batch, 0, 0, meta_));
  SY_RETURN_IF_ERROR(Run(d, cache));
  SY_RETURN_IF_ERROR(Grow(sample_params_, R, sizeof(kernels::SampleParams)));
  SY_RETURN_IF_ERROR(Grow(sample_out_, 2 * R, 4));
  SY_RETURN_IF_ERROR(
      kernels::CopyToDevice(ctx_, sample_params_.data(), params.data(),
                            R * static_cast<int64_t>(sizeof(kernels::SampleParams))));
  auto* out_tokens = sample_out_.as<int32_t>();
  auto* out_logprobs = reinterpret_cast<float*>(out_tokens + R);
  SY_RETURN_IF_ERROR(kernels::SampleTokens(ctx_, logits_.as<float>(), R, cfg_.vocab_size,
                                           sample_params_.as<kernels::SampleParams>(), out_tokens,
                                           out_logprobs));
  return ReadSampled(sample_out_, R, R, tokens, logprobs);
}

absl::Status ModelRunner::GraphStep(const ForwardBatch& batch, KvCache& cache,
                                    const std::vector<kernels::SampleParams>& params,
                                    std::vector<int32_t>* tokens, std::vector<float>* logprobs) {
  const int64_t S = batch.num_seqs(), V = cfg_.vocab_size;
  int64_t bucket = 0;
  for (int64_t b : kGraphBuckets) {
    if (b >= S) {
      bucket = b;
      break;
    }
  }
  const int64_t width = (options_.max_context + cache.block_size() - 1) / cache.block_size();
  auto it = std::find_if(graphs_.begin(), graphs_.end(),
                         [&](const Graph& g) { return g.bucket == bucket; });
  if (it == graphs_.end()) {
    graphs_.emplace_back();
    it = graphs_.end() - 1;
    it->bucket = bucket;
    SY_RETURN_IF_ERROR(
        it->params.Reserve(ctx_, bucket * static_cast<int64_t>(sizeof(kernels::SampleParams))));
    SY_RETURN_IF_ERROR(it->out.Reserve(ctx_, 2 * bucket * 4));
  }
  Graph& g = *it;
  // Same buffer, same layout every step: the captured pointers stay valid.
  SY_ASSIGN_OR_RETURN(g.batch, StageBatch(batch, bucket, width, g.meta));
  g.batch.max_q_len = 1;
  g.batch.max_context_len = width * cache.block_size();
  std::vector<kernels::SampleParams> padded = params;
  padded.resize(static_cast<size_t>(bucket));  // padding rows: greedy
  SY_RETURN_IF_ERROR(
      kernels::CopyToDevice(ctx_, g.params.data(), padded.data(),
                            bucket * static_cast<int64_t>(sizeof(kernels::SampleParams))));
  auto* out_tokens = g.out.as<int32_t>();
  auto* out_logprobs = reinterpret_cast<float*>(out_tokens + bucket);
  auto body = [&]() -> absl::Status {
    SY_RETURN_IF_ERROR(Run(g.batch, cache));
    return kernels::SampleTokens(ctx_, logits_.as<float>(), bucket, V,
                                 g.params.as<kernels::SampleParams>(), out_tokens, out_logprobs);
  };
  if (g.graph == nullptr || g.generation != Generation()) {
    g.graph.reset();
    // One uncaptured run grows every buffer to this bucket's size (it also
    // computes this step: the replay below writes the same KV again).
    SY_RETURN_IF_ERROR(body());
    const int64_t gen = Generation();
    auto captured = kernels::DeviceGraph::Capture(ctx_, body);
    if (captured.ok() && gen == Generation()) {
      g.graph = *std::move(captured);
      g.generation = gen;
      ++graphs_captured_;
      SY_LOG(INFO) << "captured the decode step for batch " << bucket << " as a CUDA graph";
    } else {
      SY_LOG(WARNING) << "decode graph for batch " << bucket << " not captured ("
                      << (captured.ok() ? "buffers grew" : captured.status().ToString())
                      << "); running it uncaptured";
    }
  }
  if (g.graph != nullptr) SY_RETURN_IF_ERROR(g.graph->Launch(ctx_));
  return ReadSampled(g.out, bucket, S, tokens, logprobs);
}

absl::Status ModelRunner::Run(const DeviceBatch& b, KvCache& cache) {
  const int64_t T = b.num_tokens, H = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t es = kernels::DTypeSize(dtype_);
  const float eps = cfg_.rms_norm_eps;
  SY_RETURN_IF_ERROR(Grow(hidden_, T * H, es));
  SY_RETURN_IF_ERROR(Grow(normed_, T * H, es));
  SY_RETURN_IF_ERROR(Grow(attn_out_, T * H, es));
  SY_RETURN_IF_ERROR(Grow(ffn_out_, T * H, es));
  SY_RETURN_IF_ERROR(kernels::Embedding(ctx_, dtype_, b.tokens, T, embed_, V, H, hidden_.data()));
  SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, dtype_, hidden_.data(), H, layers_[0].input_norm,
                                      normed_.data(), H, T, H, eps));
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const LayerPtrs& lp = layers_[l];
    SY_RETURN_IF_ERROR(Attention(l, b, cache, normed_.data(), attn_out_.data()));
    SY_RETURN_IF_ERROR(kernels::AddRmsNorm(ctx_, dtype_, hidden_.data(), attn_out_.data(),
                                           lp.post_attn_norm, normed_.data(), T, H, eps));
    SY_RETURN_IF_ERROR(FeedForward(l, T, normed_.data(), ffn_out_.data()));
    if (l + 1 < cfg_.num_layers) {
      SY_RETURN_IF_ERROR(kernels::AddRmsNorm(ctx_, dtype_, hidden_.data(), ffn_out_.data(),
                                             layers_[l + 1].input_norm, normed_.data(), T, H, eps));
    } else {
      SY_RETURN_IF_ERROR(kernels::Add(ctx_, dtype_, hidden_.data(), ffn_out_.data(), T * H));
    }
  }
  const int64_t R = b.num_logit_rows;
  SY_RETURN_IF_ERROR(Grow(final_rows_, R * H, es));
  SY_RETURN_IF_ERROR(Grow(logits_, R * V, 4));
  // Gather the rows whose logits are asked for, then norm and lm_head.
  SY_RETURN_IF_ERROR(
      kernels::Embedding(ctx_, dtype_, b.logit_rows, R, hidden_.data(), T, H, final_rows_.data()));
  SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, dtype_, final_rows_.data(), H, final_norm_,
                                      final_rows_.data(), H, R, H, eps));
  return kernels::LinearF32Out(ctx_, dtype_, final_rows_.data(), lm_head_, logits_.as<float>(), R,
                               V, H);
}

absl::Status ModelRunner::Attention(int64_t layer, const DeviceBatch& b, KvCache& cache,
                                    const void* x, void* out) {
  if (cfg_.attention == model::AttentionKind::kMla) return AttentionMla(layer, b, cache, x, out);
  return AttentionGqa(layer, b, cache, x, out);
}

namespace {

kernels::AttentionBatch MakeAttentionBatch(const DeviceBatch& b, const KvCache& cache) {
  kernels::AttentionBatch ab;
  ab.num_seqs = b.num_seqs;
  ab.q_start = b.q_start;
  ab.context_lens = b.context_lens;
  ab.block_tables = b.block_tables;
  ab.max_blocks_per_seq = b.max_blocks_per_seq;
  ab.block_size = cache.block_size();
  ab.max_q_len = b.max_q_len;
  ab.max_context_len = b.max_context_len;
  ab.num_tokens = b.num_tokens;
  return ab;
}

char* At(kernels::DeviceBuffer& b, int64_t elem_offset, int64_t elem_bytes) {
  return b.as<char>() + elem_offset * elem_bytes;
}

}  // namespace

absl::Status ModelRunner::AttentionGqa(int64_t layer, const DeviceBatch& b, KvCache& cache,
                                       const void* x, void* out) {
  const LayerPtrs& a = layers_[layer];
  const int64_t T = b.num_tokens, Hd = cfg_.hidden_size, es = kernels::DTypeSize(dtype_);
  const int64_t NH = cfg_.num_heads, KV = cfg_.num_kv_heads, D = cfg_.head_dim;
  const int64_t row = (NH + 2 * KV) * D;
  SY_RETURN_IF_ERROR(Grow(qkv_, T * row, es));
  SY_RETURN_IF_ERROR(Grow(o_, T * NH * D, es));
  SY_RETURN_IF_ERROR(kernels::Linear(ctx_, dtype_, x, a.qkv, a.qkv_bias, qkv_.data(), T, row, Hd));
  // q, k and v are strided views of the fused qkv rows; with per-head q/k
  // norms (rows of `D` must be contiguous) q and k move to their own buffers
  // as they are normalised.
  void* q = At(qkv_, 0, es);
  void* k = At(qkv_, NH * D, es);
  const void* v = At(qkv_, (NH + KV) * D, es);
  int64_t q_stride = row, k_stride = row;
  if (cfg_.qk_norm) {
    SY_RETURN_IF_ERROR(Grow(q_, T * NH * D, es));
    SY_RETURN_IF_ERROR(Grow(k_, T * KV * D, es));
    SY_RETURN_IF_ERROR(kernels::Copy2D(ctx_, dtype_, q, row, q_.data(), NH * D, T, NH * D));
    SY_RETURN_IF_ERROR(kernels::Copy2D(ctx_, dtype_, k, row, k_.data(), KV * D, T, KV * D));
    SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, dtype_, q_.data(), D, a.q_norm, q_.data(), D, T * NH,
                                        D, cfg_.rms_norm_eps));
    SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, dtype_, k_.data(), D, a.k_norm, k_.data(), D, T * KV,
                                        D, cfg_.rms_norm_eps));
    q = q_.data();
    k = k_.data();
    q_stride = NH * D;
    k_stride = KV * D;
  }
  kernels::RopeParams rp;
  rp.rotary_dim = cfg_.rope.rotary_dim;
  rp.interleaved = cfg_.rope.interleaved;
  rp.inv_freq = inv_freq_;
  rp.attention_scaling = rope_.attention_scaling;
  SY_RETURN_IF_ERROR(kernels::Rope(ctx_, dtype_, q, T, NH, q_stride, D, b.positions, rp));
  SY_RETURN_IF_ERROR(kernels::Rope(ctx_, dtype_, k, T, KV, k_stride, D, b.positions, rp));
  SY_RETURN_IF_ERROR(
      kernels::CacheWrite(ctx_, dtype_, k, k_stride, T, KV * D, b.slots, cache.k(layer)));
  SY_RETURN_IF_ERROR(kernels::CacheWrite(ctx_, dtype_, v, row, T, KV * D, b.slots, cache.v(layer)));
  kernels::AttentionShape shape;
  shape.num_heads = NH;
  shape.num_kv_heads = KV;
  shape.head_dim = D;
  shape.v_dim = D;
  shape.q_stride = q_stride;
  shape.out_stride = NH * D;
  shape.k_slot_stride = cache.k_row();
  shape.v_slot_stride = cache.v_row();
  shape.scale = cfg_.softmax_scale;
  SY_RETURN_IF_ERROR(kernels::PagedAttention(ctx_, dtype_, q, cache.k(layer), cache.v(layer),
                                             o_.data(), MakeAttentionBatch(b, cache), shape));
  return kernels::Linear(ctx_, dtype_, o_.data(), a.o_proj, a.o_bias, out, T, Hd, NH * D);
}

// MLA in the absorbed form: the cache holds the normalised latent c_kv and
// the roped k_pe; queries are projected into latent space per head
// (q_nope . W_uk), attention runs as one shared "kv head" of size
// kv_lora_rank + rope, and the latent output is expanded by W_uv per head.
absl::Status ModelRunner::AttentionMla(int64_t layer, const DeviceBatch& b, KvCache& cache,
                                       const void* x, void* out) {
  const LayerPtrs& a = layers_[layer];
  const int64_t T = b.num_tokens, Hd = cfg_.hidden_size, NH = cfg_.num_heads;
  const int64_t es = kernels::DTypeSize(dtype_);
  const int64_t nope = cfg_.qk_nope_head_dim, rope = cfg_.qk_rope_head_dim;
  const int64_t qk = cfg_.head_dim, r = cfg_.kv_lora_rank, vd = cfg_.v_head_dim;
  const int64_t lat = r + rope;
  const float eps = cfg_.rms_norm_eps;
  SY_RETURN_IF_ERROR(Grow(q_, T * NH * qk, es));
  if (cfg_.q_lora_rank > 0) {
    const int64_t qr = cfg_.q_lora_rank;
    SY_RETURN_IF_ERROR(Grow(lora_, T * qr, es));
    SY_RETURN_IF_ERROR(
        kernels::Linear(ctx_, dtype_, x, a.q_a_proj, nullptr, lora_.data(), T, qr, Hd));
    SY_RETURN_IF_ERROR(
        kernels::RmsNorm(ctx_, dtype_, lora_.data(), qr, a.q_a_norm, lora_.data(), qr, T, qr, eps));
    SY_RETURN_IF_ERROR(kernels::Linear(ctx_, dtype_, lora_.data(), a.q_b_proj, nullptr, q_.data(),
                                       T, NH * qk, qr));
  } else {
    SY_RETURN_IF_ERROR(
        kernels::Linear(ctx_, dtype_, x, a.q_proj, nullptr, q_.data(), T, NH * qk, Hd));
  }
  SY_RETURN_IF_ERROR(Grow(kv_lat_, T * lat, es));
  SY_RETURN_IF_ERROR(
      kernels::Linear(ctx_, dtype_, x, a.kv_a_proj, nullptr, kv_lat_.data(), T, lat, Hd));
  SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, dtype_, kv_lat_.data(), lat, a.kv_a_norm,
                                      kv_lat_.data(), lat, T, r, eps));
  kernels::RopeParams rp;
  rp.rotary_dim = cfg_.rope.rotary_dim;
  rp.interleaved = cfg_.rope.interleaved;
  rp.inv_freq = inv_freq_;
  rp.attention_scaling = rope_.attention_scaling;
  SY_RETURN_IF_ERROR(
      kernels::Rope(ctx_, dtype_, At(q_, nope, es), T, NH, NH * qk, qk, b.positions, rp));
  SY_RETURN_IF_ERROR(
      kernels::Rope(ctx_, dtype_, At(kv_lat_, r, es), T, 1, lat, lat, b.positions, rp));
  SY_RETURN_IF_ERROR(
      kernels::CacheWrite(ctx_, dtype_, kv_lat_.data(), lat, T, lat, b.slots, cache.k(layer)));
  // q_lat[t, h] = [q_nope[t, h] . W_uk[h], q_pe[t, h]]
  SY_RETURN_IF_ERROR(Grow(q_lat_, T * NH * lat, es));
  SY_RETURN_IF_ERROR(kernels::BatchedLinear(ctx_, dtype_, q_.data(), NH * qk, qk, a.w_uk_t,
                                            r * nope, q_lat_.data(), NH * lat, lat, NH, T, r,
                                            nope));
  SY_RETURN_IF_ERROR(
      kernels::Copy2D(ctx_, dtype_, At(q_, nope, es), qk, At(q_lat_, r, es), lat, T * NH, rope));
  kernels::AttentionShape shape;
  shape.num_heads = NH;
  shape.num_kv_heads = 1;
  shape.head_dim = lat;
  shape.v_dim = r;
  shape.q_stride = NH * lat;
  shape.out_stride = NH * r;
  shape.k_slot_stride = lat;
  shape.v_slot_stride = lat;
  shape.scale = cfg_.softmax_scale;
  SY_RETURN_IF_ERROR(Grow(o_lat_, T * NH * r, es));
  SY_RETURN_IF_ERROR(kernels::PagedAttention(ctx_, dtype_, q_lat_.data(), cache.k(layer),
                                             cache.k(layer), o_lat_.data(),
                                             MakeAttentionBatch(b, cache), shape));
  // o[t, h] = o_lat[t, h] . W_uv[h]^T
  SY_RETURN_IF_ERROR(Grow(o_, T * NH * vd, es));
  SY_RETURN_IF_ERROR(kernels::BatchedLinear(ctx_, dtype_, o_lat_.data(), NH * r, r, a.w_uv, vd * r,
                                            o_.data(), NH * vd, vd, NH, T, vd, r));
  return kernels::Linear(ctx_, dtype_, o_.data(), a.o_proj, nullptr, out, T, Hd, NH * vd);
}

absl::Status ModelRunner::Mlp(const MlpPtrs& w, int64_t num_tokens, int64_t inter, const void* x,
                              void* out) {
  const int64_t Hd = cfg_.hidden_size, es = kernels::DTypeSize(dtype_);
  SY_RETURN_IF_ERROR(Grow(mlp_a_, num_tokens * 2 * inter, es));
  SY_RETURN_IF_ERROR(Grow(mlp_b_, num_tokens * inter, es));
  SY_RETURN_IF_ERROR(kernels::Linear(ctx_, dtype_, x, w.gate_up, nullptr, mlp_a_.data(), num_tokens,
                                     2 * inter, Hd));
  SY_RETURN_IF_ERROR(
      kernels::SiluMul(ctx_, dtype_, mlp_a_.data(), mlp_b_.data(), num_tokens, inter));
  return kernels::Linear(ctx_, dtype_, mlp_b_.data(), w.down, nullptr, out, num_tokens, Hd, inter);
}

absl::Status ModelRunner::FeedForward(int64_t layer, int64_t T, const void* x, void* out) {
  const LayerPtrs& lp = layers_[layer];
  if (!lp.is_moe) return Mlp(lp.dense, T, cfg_.intermediate_size, x, out);
  const int64_t E = cfg_.num_experts, K = cfg_.top_k, Hd = cfg_.hidden_size;
  const int64_t es = kernels::DTypeSize(dtype_);
  SY_RETURN_IF_ERROR(Grow(router_logits_, T * E, 4));
  SY_RETURN_IF_ERROR(
      kernels::LinearF32Out(ctx_, dtype_, x, lp.router, router_logits_.as<float>(), T, E, Hd));
  kernels::RouterParams rp = cfg_.router_params();
  rp.correction_bias = lp.correction_bias;
  SY_RETURN_IF_ERROR(Grow(topk_ids_, T * K, 4));
  SY_RETURN_IF_ERROR(Grow(topk_w_, T * K, 4));
  SY_RETURN_IF_ERROR(kernels::MoeRoute(ctx_, router_logits_.as<float>(), T, rp,
                                       topk_ids_.as<int32_t>(), topk_w_.as<float>()));
  SY_RETURN_IF_ERROR(
      experts_->Run(layer, x, T, topk_ids_.as<int32_t>(), topk_w_.as<float>(), K, out));
  if (lp.shared.gate_up == nullptr) return absl::OkStatus();
  SY_RETURN_IF_ERROR(Grow(shared_out_, T * Hd, es));
  SY_RETURN_IF_ERROR(
      Mlp(lp.shared, T, cfg_.shared_expert_intermediate_size, x, shared_out_.data()));
  if (lp.shared_gate != nullptr) {
    SY_RETURN_IF_ERROR(Grow(shared_gate_, T, es));
    SY_RETURN_IF_ERROR(
        kernels::Linear(ctx_, dtype_, x, lp.shared_gate, nullptr, shared_gate_.data(), T, 1, Hd));
    SY_RETURN_IF_ERROR(
        kernels::SigmoidGateMul(ctx_, dtype_, shared_out_.data(), shared_gate_.data(), 1, T, Hd));
  }
  return kernels::Add(ctx_, dtype_, out, shared_out_.data(), T * Hd);
}

}  // namespace sy::engine
