#include "engine/model_runner.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace sy::engine {
namespace {

constexpr kernels::DType kF32 = kernels::DType::kF32;

void Grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
}

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

ModelRunner::ModelRunner(const model::ModelConfig& cfg, model::DenseWeights weights,
                         std::unique_ptr<ExpertExecutor> experts, const kernels::Context& ctx,
                         model::RopeTables rope)
    : cfg_(cfg),
      w_(std::move(weights)),
      experts_(std::move(experts)),
      ctx_(ctx),
      rope_(std::move(rope)) {
  if (cfg_.attention == model::AttentionKind::kMla) {
    const int64_t H = cfg_.num_heads, nope = cfg_.qk_nope_head_dim, r = cfg_.kv_lora_rank;
    w_uk_t_.resize(cfg_.num_layers);
    for (int64_t l = 0; l < cfg_.num_layers; ++l) {
      const std::vector<float>& src = w_.layers[l].attn.w_uk.data;  // [H, nope, r]
      std::vector<float>& dst = w_uk_t_[l];                         // [H, r, nope]
      dst.resize(H * r * nope);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < nope; ++i) {
          for (int64_t j = 0; j < r; ++j) {
            dst[(h * r + j) * nope + i] = src[(h * nope + i) * r + j];
          }
        }
      }
    }
  }
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    const model::ModelConfig& cfg, model::DenseWeights weights,
    std::unique_ptr<ExpertExecutor> experts, const kernels::Context& ctx) {
  if (static_cast<int64_t>(weights.layers.size()) != cfg.num_layers) {
    return absl::InvalidArgumentError("weights do not match the config's layer count");
  }
  if (experts == nullptr && cfg.num_moe_layers() > 0) {
    return absl::InvalidArgumentError("an MoE model needs an expert executor");
  }
  SY_ASSIGN_OR_RETURN(model::RopeTables rope,
                      model::ComputeRopeTables(cfg.rope, cfg.max_position_embeddings));
  return std::unique_ptr<ModelRunner>(
      new ModelRunner(cfg, std::move(weights), std::move(experts), ctx, std::move(rope)));
}

absl::Status ModelRunner::Forward(const ForwardBatch& batch, KvCache& cache,
                                  std::vector<float>* logits) {
  const int64_t T = batch.num_tokens(), H = cfg_.hidden_size, V = cfg_.vocab_size;
  if (T == 0) {
    logits->clear();
    return absl::OkStatus();
  }
  for (int32_t id : batch.tokens) {
    if (id < 0 || id >= V) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside vocabulary"));
    }
  }
  Grow(hidden_, T * H);
  Grow(normed_, T * H);
  Grow(attn_out_, T * H);
  Grow(ffn_out_, T * H);
  SY_RETURN_IF_ERROR(
      kernels::Embedding(ctx_, kF32, batch.tokens.data(), T, w_.embed.ptr(), V, H, hidden_.data()));
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const model::LayerWeights& lw = w_.layers[l];
    SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, kF32, hidden_.data(), H, lw.input_norm.ptr(),
                                        normed_.data(), H, T, H, cfg_.rms_norm_eps));
    SY_RETURN_IF_ERROR(Attention(l, batch, cache, normed_.data(), attn_out_.data()));
    SY_RETURN_IF_ERROR(kernels::Add(ctx_, kF32, hidden_.data(), attn_out_.data(), T * H));
    SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, kF32, hidden_.data(), H, lw.post_attn_norm.ptr(),
                                        normed_.data(), H, T, H, cfg_.rms_norm_eps));
    SY_RETURN_IF_ERROR(FeedForward(l, T, normed_.data(), ffn_out_.data()));
    SY_RETURN_IF_ERROR(kernels::Add(ctx_, kF32, hidden_.data(), ffn_out_.data(), T * H));
  }
  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  Grow(final_rows_, R * H);
  SY_RETURN_IF_ERROR(kernels::Embedding(ctx_, kF32, batch.logit_rows.data(), R, hidden_.data(), T,
                                        H, final_rows_.data()));
  SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, kF32, final_rows_.data(), H, w_.final_norm.ptr(),
                                      final_rows_.data(), H, R, H, cfg_.rms_norm_eps));
  logits->resize(R * V);
  return kernels::Linear(ctx_, kF32, final_rows_.data(), w_.lm_head.ptr(), nullptr, logits->data(),
                         R, V, H);
}

absl::Status ModelRunner::Attention(int64_t layer, const ForwardBatch& batch, KvCache& cache,
                                    const float* x, float* out) {
  if (cfg_.attention == model::AttentionKind::kMla) {
    return AttentionMla(layer, batch, cache, x, out);
  }
  return AttentionGqa(layer, batch, cache, x, out);
}

kernels::AttentionBatch MakeAttentionBatch(const ForwardBatch& batch, const KvCache& cache) {
  kernels::AttentionBatch ab;
  ab.num_seqs = batch.num_seqs();
  ab.q_start = batch.q_start.data();
  ab.context_lens = batch.context_lens.data();
  ab.block_tables = batch.block_tables.data();
  ab.max_blocks_per_seq = batch.max_blocks_per_seq;
  ab.block_size = cache.block_size();
  return ab;
}

absl::Status ModelRunner::AttentionGqa(int64_t layer, const ForwardBatch& batch, KvCache& cache,
                                       const float* x, float* out) {
  const model::AttentionWeights& a = w_.layers[layer].attn;
  const int64_t T = batch.num_tokens(), Hd = cfg_.hidden_size;
  const int64_t NH = cfg_.num_heads, KV = cfg_.num_kv_heads, D = cfg_.head_dim;
  const int64_t row = (NH + 2 * KV) * D;
  Grow(qkv_, T * row);
  Grow(q_, T * NH * D);
  Grow(k_, T * KV * D);
  Grow(v_, T * KV * D);
  Grow(o_, T * NH * D);
  SY_RETURN_IF_ERROR(
      kernels::Linear(ctx_, kF32, x, a.qkv.ptr(), a.qkv_bias.ptr(), qkv_.data(), T, row, Hd));
  SY_RETURN_IF_ERROR(kernels::Copy2D(ctx_, kF32, qkv_.data(), row, q_.data(), NH * D, T, NH * D));
  SY_RETURN_IF_ERROR(
      kernels::Copy2D(ctx_, kF32, qkv_.data() + NH * D, row, k_.data(), KV * D, T, KV * D));
  SY_RETURN_IF_ERROR(
      kernels::Copy2D(ctx_, kF32, qkv_.data() + (NH + KV) * D, row, v_.data(), KV * D, T, KV * D));
  if (cfg_.qk_norm) {
    SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, kF32, q_.data(), D, a.q_norm.ptr(), q_.data(), D,
                                        T * NH, D, cfg_.rms_norm_eps));
    SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, kF32, k_.data(), D, a.k_norm.ptr(), k_.data(), D,
                                        T * KV, D, cfg_.rms_norm_eps));
  }
  kernels::RopeParams rp;
  rp.rotary_dim = cfg_.rope.rotary_dim;
  rp.interleaved = cfg_.rope.interleaved;
  rp.inv_freq = rope_.inv_freq.data();
  rp.attention_scaling = rope_.attention_scaling;
  SY_RETURN_IF_ERROR(
      kernels::Rope(ctx_, kF32, q_.data(), T, NH, NH * D, D, batch.positions.data(), rp));
  SY_RETURN_IF_ERROR(
      kernels::Rope(ctx_, kF32, k_.data(), T, KV, KV * D, D, batch.positions.data(), rp));
  SY_RETURN_IF_ERROR(kernels::CacheWrite(ctx_, kF32, k_.data(), KV * D, T, KV * D,
                                         batch.slots.data(), cache.k(layer)));
  SY_RETURN_IF_ERROR(kernels::CacheWrite(ctx_, kF32, v_.data(), KV * D, T, KV * D,
                                         batch.slots.data(), cache.v(layer)));
  kernels::AttentionShape shape;
  shape.num_heads = NH;
  shape.num_kv_heads = KV;
  shape.head_dim = D;
  shape.v_dim = D;
  shape.q_stride = NH * D;
  shape.out_stride = NH * D;
  shape.k_slot_stride = cache.k_row();
  shape.v_slot_stride = cache.v_row();
  shape.scale = cfg_.softmax_scale;
  SY_RETURN_IF_ERROR(kernels::PagedAttention(ctx_, kF32, q_.data(), cache.k(layer), cache.v(layer),
                                             o_.data(), MakeAttentionBatch(batch, cache), shape));
  return kernels::Linear(ctx_, kF32, o_.data(), a.o_proj.ptr(), a.o_bias.ptr(), out, T, Hd, NH * D);
}

// MLA in the absorbed form: the cache holds the normalised latent c_kv and
// the roped k_pe; queries are projected into latent space per head
// (q_nope . W_uk), attention runs as one shared "kv head" of size
// kv_lora_rank + rope, and the latent output is expanded by W_uv per head.
absl::Status ModelRunner::AttentionMla(int64_t layer, const ForwardBatch& batch, KvCache& cache,
                                       const float* x, float* out) {
  const model::AttentionWeights& a = w_.layers[layer].attn;
  const int64_t T = batch.num_tokens(), Hd = cfg_.hidden_size, NH = cfg_.num_heads;
  const int64_t nope = cfg_.qk_nope_head_dim, rope = cfg_.qk_rope_head_dim;
  const int64_t qk = cfg_.head_dim, r = cfg_.kv_lora_rank, vd = cfg_.v_head_dim;
  const int64_t lat = r + rope;
  Grow(q_, T * NH * qk);
  if (cfg_.q_lora_rank > 0) {
    Grow(lora_, T * cfg_.q_lora_rank);
    SY_RETURN_IF_ERROR(kernels::Linear(ctx_, kF32, x, a.q_a_proj.ptr(), nullptr, lora_.data(), T,
                                       cfg_.q_lora_rank, Hd));
    SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, kF32, lora_.data(), cfg_.q_lora_rank,
                                        a.q_a_norm.ptr(), lora_.data(), cfg_.q_lora_rank, T,
                                        cfg_.q_lora_rank, cfg_.rms_norm_eps));
    SY_RETURN_IF_ERROR(kernels::Linear(ctx_, kF32, lora_.data(), a.q_b_proj.ptr(), nullptr,
                                       q_.data(), T, NH * qk, cfg_.q_lora_rank));
  } else {
    SY_RETURN_IF_ERROR(
        kernels::Linear(ctx_, kF32, x, a.q_proj.ptr(), nullptr, q_.data(), T, NH * qk, Hd));
  }
  Grow(kv_lat_, T * lat);
  SY_RETURN_IF_ERROR(
      kernels::Linear(ctx_, kF32, x, a.kv_a_proj.ptr(), nullptr, kv_lat_.data(), T, lat, Hd));
  SY_RETURN_IF_ERROR(kernels::RmsNorm(ctx_, kF32, kv_lat_.data(), lat, a.kv_a_norm.ptr(),
                                      kv_lat_.data(), lat, T, r, cfg_.rms_norm_eps));
  kernels::RopeParams rp;
  rp.rotary_dim = cfg_.rope.rotary_dim;
  rp.interleaved = cfg_.rope.interleaved;
  rp.inv_freq = rope_.inv_freq.data();
  rp.attention_scaling = rope_.attention_scaling;
  SY_RETURN_IF_ERROR(
      kernels::Rope(ctx_, kF32, q_.data() + nope, T, NH, NH * qk, qk, batch.positions.data(), rp));
  SY_RETURN_IF_ERROR(
      kernels::Rope(ctx_, kF32, kv_lat_.data() + r, T, 1, lat, lat, batch.positions.data(), rp));
  SY_RETURN_IF_ERROR(kernels::CacheWrite(ctx_, kF32, kv_lat_.data(), lat, T, lat,
                                         batch.slots.data(), cache.k(layer)));
  // q_lat[t, h] = [q_nope[t, h] . W_uk[h], q_pe[t, h]]
  Grow(q_lat_, T * NH * lat);
  SY_RETURN_IF_ERROR(kernels::BatchedLinear(ctx_, kF32, q_.data(), NH * qk, qk,
                                            w_uk_t_[layer].data(), r * nope, q_lat_.data(),
                                            NH * lat, lat, NH, T, r, nope));
  SY_RETURN_IF_ERROR(
      kernels::Copy2D(ctx_, kF32, q_.data() + nope, qk, q_lat_.data() + r, lat, T * NH, rope));
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
  Grow(o_lat_, T * NH * r);
  SY_RETURN_IF_ERROR(kernels::PagedAttention(ctx_, kF32, q_lat_.data(), cache.k(layer),
                                             cache.k(layer), o_lat_.data(),
                                             MakeAttentionBatch(batch, cache), shape));
  // o[t, h] = o_lat[t, h] . W_uv[h]^T
  Grow(o_, T * NH * vd);
  SY_RETURN_IF_ERROR(kernels::BatchedLinear(ctx_, kF32, o_lat_.data(), NH * r, r, a.w_uv.ptr(),
                                            vd * r, o_.data(), NH * vd, vd, NH, T, vd, r));
  return kernels::Linear(ctx_, kF32, o_.data(), a.o_proj.ptr(), nullptr, out, T, Hd, NH * vd);
}

absl::Status ModelRunner::Mlp(const model::MlpWeights& w, int64_t num_tokens, int64_t inter,
                              const float* x, float* out) {
  const int64_t Hd = cfg_.hidden_size;
  Grow(mlp_a_, num_tokens * 2 * inter);
  Grow(mlp_b_, num_tokens * inter);
  SY_RETURN_IF_ERROR(kernels::Linear(ctx_, kF32, x, w.gate_up.ptr(), nullptr, mlp_a_.data(),
                                     num_tokens, 2 * inter, Hd));
  SY_RETURN_IF_ERROR(kernels::SiluMul(ctx_, kF32, mlp_a_.data(), mlp_b_.data(), num_tokens, inter));
  return kernels::Linear(ctx_, kF32, mlp_b_.data(), w.down.ptr(), nullptr, out, num_tokens, Hd,
                         inter);
}

absl::Status ModelRunner::FeedForward(int64_t layer, int64_t T, const float* x, float* out) {
  const model::LayerWeights& lw = w_.layers[layer];
  if (!lw.is_moe) return Mlp(lw.dense, T, cfg_.intermediate_size, x, out);
  const int64_t E = cfg_.num_experts, K = cfg_.top_k, Hd = cfg_.hidden_size;
  Grow(router_logits_, T * E);
  SY_RETURN_IF_ERROR(
      kernels::Linear(ctx_, kF32, x, lw.router.ptr(), nullptr, router_logits_.data(), T, E, Hd));
  kernels::RouterParams rp = cfg_.router_params();
  rp.correction_bias = lw.correction_bias.ptr();
  if (static_cast<int64_t>(topk_ids_.size()) < T * K) topk_ids_.resize(T * K);
  Grow(topk_w_, T * K);
  SY_RETURN_IF_ERROR(
      kernels::MoeRoute(ctx_, router_logits_.data(), T, rp, topk_ids_.data(), topk_w_.data()));
  SY_RETURN_IF_ERROR(experts_->Run(layer, x, T, topk_ids_.data(), topk_w_.data(), K, out));
  if (lw.shared.gate_up.empty()) return absl::OkStatus();
  Grow(shared_out_, T * Hd);
  SY_RETURN_IF_ERROR(
      Mlp(lw.shared, T, cfg_.shared_expert_intermediate_size, x, shared_out_.data()));
  if (!lw.shared_gate.empty()) {
    Grow(shared_gate_, T);
    SY_RETURN_IF_ERROR(kernels::Linear(ctx_, kF32, x, lw.shared_gate.ptr(), nullptr,
                                       shared_gate_.data(), T, 1, Hd));
    SY_RETURN_IF_ERROR(
        kernels::SigmoidGateMul(ctx_, kF32, shared_out_.data(), shared_gate_.data(), 1, T, Hd));
  }
  return kernels::Add(ctx_, kF32, out, shared_out_.data(), T * Hd);
}

}  // namespace sy::engine
