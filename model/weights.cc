#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace sy::model {
namespace {

using Shape = std::vector<int64_t>;

int64_t Numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<Tensor> Read(const Checkpoint& ckpt, const std::string& name, Shape shape) {
  // Check the stored shape before allocating: the config decides `shape`.
  SY_ASSIGN_OR_RETURN(Shape stored, ckpt.Shape(name));
  if (stored != shape) return ckpt.ReadF32(name, shape, nullptr);  // the shape error
  Tensor t;
  t.data.resize(Numel(shape));
  SY_RETURN_IF_ERROR(ckpt.ReadF32(name, shape, t.data.data()));
  t.shape = std::move(shape);
  return t;
}

// Concatenates tensors along dim 0 (all [*, cols]).
Tensor ConcatRows(const std::vector<const Tensor*>& parts) {
  Tensor out;
  int64_t rows = 0;
  const int64_t cols = parts[0]->shape.size() > 1 ? parts[0]->shape[1] : 1;
  for (const Tensor* p : parts) {
    rows += p->shape[0];
    out.data.insert(out.data.end(), p->data.begin(), p->data.end());
  }
  out.shape = parts[0]->shape.size() > 1 ? Shape{rows, cols} : Shape{rows};
  return out;
}

absl::StatusOr<MlpWeights> ReadMlp(const Checkpoint& ckpt, const std::string& gate,
                                   const std::string& up, const std::string& down, int64_t hidden,
                                   int64_t inter) {
  SY_ASSIGN_OR_RETURN(Tensor g, Read(ckpt, gate, {inter, hidden}));
  SY_ASSIGN_OR_RETURN(Tensor u, Read(ckpt, up, {inter, hidden}));
  MlpWeights mlp;
  mlp.gate_up = ConcatRows({&g, &u});
  SY_ASSIGN_OR_RETURN(mlp.down, Read(ckpt, down, {hidden, inter}));
  return mlp;
}

bool IsMixtral(const ModelConfig& cfg) { return cfg.family == Family::kMixtral; }
bool IsParam2(const ModelConfig& cfg) { return cfg.family == Family::kParam2Moe; }

std::string MoeBlock(const ModelConfig& cfg, int64_t layer) {
  return LayerPrefix(cfg, layer) + (IsMixtral(cfg) ? "block_sparse_moe." : "mlp.");
}

absl::Status LoadGqa(const ModelConfig& cfg, const Checkpoint& ckpt, const std::string& p,
                     AttentionWeights* a) {
  const int64_t H = cfg.num_heads, KV = cfg.num_kv_heads, D = cfg.head_dim;
  const int64_t hidden = cfg.hidden_size;
  const int64_t rows = (H + 2 * KV) * D;
  if (IsParam2(cfg)) {
    SY_ASSIGN_OR_RETURN(a->qkv, Read(ckpt, p + "attention.query_key_value.weight", {rows, hidden}));
    if (cfg.qkv_bias) {
      SY_ASSIGN_OR_RETURN(a->qkv_bias, Read(ckpt, p + "attention.query_key_value.bias", {rows}));
    }
    SY_ASSIGN_OR_RETURN(a->o_proj, Read(ckpt, p + "attention.dense.weight", {hidden, H * D}));
    if (cfg.o_bias) {
      SY_ASSIGN_OR_RETURN(a->o_bias, Read(ckpt, p + "attention.dense.bias", {hidden}));
    }
    if (cfg.qk_norm) {
      SY_ASSIGN_OR_RETURN(a->q_norm, Read(ckpt, p + "attention.query_layernorm.weight", {D}));
      SY_ASSIGN_OR_RETURN(a->k_norm, Read(ckpt, p + "attention.key_layernorm.weight", {D}));
    }
    return absl::OkStatus();
  }
  const std::string s = p + "self_attn.";
  SY_ASSIGN_OR_RETURN(Tensor q, Read(ckpt, s + "q_proj.weight", {H * D, hidden}));
  // The k/v rows follow from num_key_value_heads, which config.json may leave
  // out (it then defaults to num_attention_heads, as in transformers): a
  // mismatch names the field, not only the tensor.
  auto kv_rows = [&](absl::StatusOr<Tensor> t) -> absl::StatusOr<Tensor> {
    if (t.ok() || t.status().code() != absl::StatusCode::kInvalidArgument) return t;
    return absl::InvalidArgumentError(absl::StrCat(
        t.status().message(), " (rows = num_key_value_heads (", KV, ") x head_dim (", D,
        "); config.json's num_key_value_heads, num_attention_heads (", H, ") when absent)"));
  };
  SY_ASSIGN_OR_RETURN(Tensor k, kv_rows(Read(ckpt, s + "k_proj.weight", {KV * D, hidden})));
  SY_ASSIGN_OR_RETURN(Tensor v, kv_rows(Read(ckpt, s + "v_proj.weight", {KV * D, hidden})));
  a->qkv = ConcatRows({&q, &k, &v});
  if (cfg.qkv_bias) {
    SY_ASSIGN_OR_RETURN(Tensor qb, Read(ckpt, s + "q_proj.bias", {H * D}));
    SY_ASSIGN_OR_RETURN(Tensor kb, Read(ckpt, s + "k_proj.bias", {KV * D}));
    SY_ASSIGN_OR_RETURN(Tensor vb, Read(ckpt, s + "v_proj.bias", {KV * D}));
    a->qkv_bias = ConcatRows({&qb, &kb, &vb});
  }
  SY_ASSIGN_OR_RETURN(a->o_proj, Read(ckpt, s + "o_proj.weight", {hidden, H * D}));
  if (cfg.o_bias) {
    SY_ASSIGN_OR_RETURN(a->o_bias, Read(ckpt, s + "o_proj.bias", {hidden}));
  }
  if (cfg.qk_norm) {
    SY_ASSIGN_OR_RETURN(a->q_norm, Read(ckpt, s + "q_norm.weight", {D}));
    SY_ASSIGN_OR_RETURN(a->k_norm, Read(ckpt, s + "k_norm.weight", {D}));
  }
  return absl::OkStatus();
}

// Splits kv_b_proj [H * (nope + v), kv_lora] into the absorbed-attention
// matrices w_uk [H, nope, kv_lora] and w_uv [H, v, kv_lora].
void SplitKvB(const ModelConfig& cfg, const Tensor& kv_b, AttentionWeights* a) {
  const int64_t H = cfg.num_heads, nope = cfg.qk_nope_head_dim, v = cfg.v_head_dim;
  const int64_t r = cfg.kv_lora_rank;
  a->w_uk.shape = {H, nope, r};
  a->w_uv.shape = {H, v, r};
  a->w_uk.data.resize(H * nope * r);
  a->w_uv.data.resize(H * v * r);
  for (int64_t h = 0; h < H; ++h) {
    const float* src = kv_b.data.data() + h * (nope + v) * r;
    std::copy(src, src + nope * r, a->w_uk.data.begin() + h * nope * r);
    std::copy(src + nope * r, src + (nope + v) * r, a->w_uv.data.begin() + h * v * r);
  }
}

absl::Status LoadMla(const ModelConfig& cfg, const Checkpoint& ckpt, const std::string& p,
                     AttentionWeights* a) {
  const int64_t H = cfg.num_heads, hidden = cfg.hidden_size;
  const int64_t qk = cfg.head_dim, r = cfg.kv_lora_rank;
  const std::string s = p + "self_attn.";
  if (cfg.q_lora_rank > 0) {
    const int64_t q = cfg.q_lora_rank;
    SY_ASSIGN_OR_RETURN(a->q_a_proj, Read(ckpt, s + "q_a_proj.weight", {q, hidden}));
    SY_ASSIGN_OR_RETURN(a->q_a_norm, Read(ckpt, s + "q_a_layernorm.weight", {q}));
    SY_ASSIGN_OR_RETURN(a->q_b_proj, Read(ckpt, s + "q_b_proj.weight", {H * qk, q}));
  } else {
    SY_ASSIGN_OR_RETURN(a->q_proj, Read(ckpt, s + "q_proj.weight", {H * qk, hidden}));
  }
  SY_ASSIGN_OR_RETURN(a->kv_a_proj, Read(ckpt, s + "kv_a_proj_with_mqa.weight",
                                         {r + cfg.qk_rope_head_dim, hidden}));
  SY_ASSIGN_OR_RETURN(a->kv_a_norm, Read(ckpt, s + "kv_a_layernorm.weight", {r}));
  SY_ASSIGN_OR_RETURN(Tensor kv_b, Read(ckpt, s + "kv_b_proj.weight",
                                        {H * (cfg.qk_nope_head_dim + cfg.v_head_dim), r}));
  SplitKvB(cfg, kv_b, a);
  SY_ASSIGN_OR_RETURN(a->o_proj, Read(ckpt, s + "o_proj.weight", {hidden, H * cfg.v_head_dim}));
  return absl::OkStatus();
}

absl::Status LoadLayer(const ModelConfig& cfg, const Checkpoint& ckpt, int64_t i, LayerWeights* l) {
  const std::string p = LayerPrefix(cfg, i);
  const int64_t hidden = cfg.hidden_size;
  SY_ASSIGN_OR_RETURN(l->input_norm, Read(ckpt, p + "input_layernorm.weight", {hidden}));
  SY_ASSIGN_OR_RETURN(l->post_attn_norm,
                      Read(ckpt, p + "post_attention_layernorm.weight", {hidden}));
  if (cfg.attention == AttentionKind::kMla) {
    SY_RETURN_IF_ERROR(LoadMla(cfg, ckpt, p, &l->attn));
  } else {
    SY_RETURN_IF_ERROR(LoadGqa(cfg, ckpt, p, &l->attn));
  }
  l->is_moe = cfg.layer_is_moe[i];
  if (!l->is_moe) {
    SY_ASSIGN_OR_RETURN(l->dense,
                        ReadMlp(ckpt, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
                                p + "mlp.down_proj.weight", hidden, cfg.intermediate_size));
    return absl::OkStatus();
  }
  std::string m = MoeBlock(cfg, i);
  // transformers 5 saves Mixtral's block_sparse_moe under the common "mlp." name.
  if (IsMixtral(cfg) && !ckpt.Has(m + "gate.weight") && ckpt.Has(p + "mlp.gate.weight")) {
    m = p + "mlp.";
  }
  SY_ASSIGN_OR_RETURN(l->router, Read(ckpt, m + "gate.weight", {cfg.num_experts, hidden}));
  if (cfg.has_correction_bias) {
    const std::string bias_name =
        m + (IsParam2(cfg) ? "gate.expert_bias" : "gate.e_score_correction_bias");
    SY_ASSIGN_OR_RETURN(l->correction_bias, Read(ckpt, bias_name, {cfg.num_experts}));
  }
  if (cfg.shared_expert_intermediate_size > 0) {
    const std::string sh =
        m + (cfg.family == Family::kQwen2Moe ? "shared_expert." : "shared_experts.");
    SY_ASSIGN_OR_RETURN(
        l->shared, ReadMlp(ckpt, sh + "gate_proj.weight", sh + "up_proj.weight",
                           sh + "down_proj.weight", hidden, cfg.shared_expert_intermediate_size));
    if (cfg.shared_expert_gate) {
      SY_ASSIGN_OR_RETURN(l->shared_gate, Read(ckpt, m + "shared_expert_gate.weight", {1, hidden}));
    }
  }
  return absl::OkStatus();
}

// splitmix64's output function: a bijective 64-bit mixer.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Deterministic per-tensor RNG for dummy weights.
class DummyFiller {
 public:
  explicit DummyFiller(uint64_t seed) : seed_(seed) {}

  Tensor Normal(Shape shape, float scale, float mean, uint64_t salt) {
    Tensor t;
    t.data.resize(Numel(shape));
    t.shape = std::move(shape);
    // splitmix64 + Box-Muller in independent chunks (each seeded from seed,
    // salt and chunk index), so multi-GB dummy models fill in parallel and the
    // values do not depend on the thread count.
    constexpr int64_t kChunk = 1 << 16;
    const int64_t n = t.numel();
    const int64_t num_chunks = (n + kChunk - 1) / kChunk;
    float* out = t.data.data();
    // Seed, salt and chunk go through the mixer before use: streams started
    // from linearly related states would be shifted copies of each other.
    const uint64_t base = Mix(seed_ ^ Mix(salt + 0x632BE59BD9B4E019ull));
#pragma omp parallel for schedule(static) if (num_chunks > 4)
    for (int64_t c = 0; c < num_chunks; ++c) {
      uint64_t state = Mix(base ^ Mix(static_cast<uint64_t>(c) + 1));
      auto next = [&state]() { return Mix(state += 0x9E3779B97F4A7C15ull); };
      const int64_t end = std::min(n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < end; i += 2) {
        const double u1 = (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53;
        const double u2 = static_cast<double>(next() >> 11) * 0x1.0p-53;
        const double rad = std::sqrt(-2.0 * std::log(u1));
        out[i] = mean + scale * static_cast<float>(rad * std::cos(2.0 * M_PI * u2));
        if (i + 1 < end) {
          out[i + 1] = mean + scale * static_cast<float>(rad * std::sin(2.0 * M_PI * u2));
        }
      }
    }
    return t;
  }

  // A projection [out, in] scaled by 1/sqrt(in).
  Tensor Proj(int64_t out, int64_t in, uint64_t salt) {
    return Normal({out, in}, 1.0f / std::sqrt(static_cast<float>(in)), 0.0f, salt);
  }
  Tensor Norm(int64_t n, uint64_t salt) { return Normal({n}, 0.05f, 1.0f, salt); }

 private:
  uint64_t seed_;
};

MlpWeights DummyMlp(DummyFiller& f, int64_t hidden, int64_t inter, uint64_t salt) {
  MlpWeights m;
  m.gate_up = f.Proj(2 * inter, hidden, salt);
  m.down = f.Proj(hidden, inter, salt + 1);
  return m;
}

}  // namespace

int64_t EstimateParameterCount(const ModelConfig& cfg) {
  const int64_t H = cfg.hidden_size, NH = cfg.num_heads, KV = cfg.num_kv_heads;
  const int64_t D = cfg.head_dim;
  int64_t attn;
  if (cfg.attention == AttentionKind::kMla) {
    const int64_t q = cfg.q_lora_rank > 0 ? cfg.q_lora_rank * (H + NH * D) : NH * D * H;
    attn = q + (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * H +
           NH * (cfg.qk_nope_head_dim + cfg.v_head_dim) * cfg.kv_lora_rank +
           H * NH * cfg.v_head_dim;
  } else {
    attn = (NH + 2 * KV) * D * H + H * NH * D;
  }
  int64_t total = 2 * cfg.vocab_size * H;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    total += attn;
    if (cfg.layer_is_moe[l]) {
      total += cfg.num_experts * 3 * H * cfg.moe_intermediate_size + cfg.num_experts * H +
               3 * H * cfg.shared_expert_intermediate_size;
    } else {
      total += 3 * H * cfg.intermediate_size;
    }
  }
  return total;
}

std::string LayerPrefix(const ModelConfig& cfg, int64_t layer) {
  return absl::StrCat("model.layers.", layer, ".");
}

std::string ExpertTensorName(const ModelConfig& cfg, int64_t layer, int64_t expert,
                             std::string_view proj) {
  std::string_view name = proj;
  if (IsMixtral(cfg)) {
    name = proj == "gate_proj" ? "w1" : proj == "down_proj" ? "w2" : "w3";
  }
  return absl::StrCat(MoeBlock(cfg, layer), "experts.", expert, ".", std::string(name), ".weight");
}

absl::StatusOr<DenseWeights> LoadDenseWeights(const ModelConfig& cfg, const Checkpoint& ckpt) {
  DenseWeights w;
  const int64_t V = cfg.vocab_size, hidden = cfg.hidden_size;
  const std::string embed_name =
      IsParam2(cfg) ? "model.word_embeddings.weight" : "model.embed_tokens.weight";
  SY_ASSIGN_OR_RETURN(w.embed, Read(ckpt, embed_name, {V, hidden}));
  SY_ASSIGN_OR_RETURN(w.final_norm, Read(ckpt, "model.norm.weight", {hidden}));
  if (cfg.tie_word_embeddings && !ckpt.Has("lm_head.weight")) {
    w.lm_head = w.embed;
  } else {
    SY_ASSIGN_OR_RETURN(w.lm_head, Read(ckpt, "lm_head.weight", {V, hidden}));
  }
  w.layers.resize(cfg.num_layers);
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    SY_RETURN_IF_ERROR(LoadLayer(cfg, ckpt, i, &w.layers[i]));
  }
  return w;
}

absl::StatusOr<MlpWeights> LoadExpert(const ModelConfig& cfg, const Checkpoint& ckpt, int64_t layer,
                                      int64_t expert) {
  const int64_t hidden = cfg.hidden_size, inter = cfg.moe_intermediate_size;
  if (layer < 0 || layer >= cfg.num_layers || !cfg.layer_is_moe[layer]) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not an MoE layer"));
  }
  if (expert < 0 || expert >= cfg.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert ", expert, " is out of range [0, ", cfg.num_experts, ")"));
  }
  const std::string gate = ExpertTensorName(cfg, layer, expert, "gate_proj");
  if (ckpt.Has(gate)) {
    return ReadMlp(ckpt, gate, ExpertTensorName(cfg, layer, expert, "up_proj"),
                   ExpertTensorName(cfg, layer, expert, "down_proj"), hidden, inter);
  }
  // transformers 5 fused layout: experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I].
  for (const std::string& block : {MoeBlock(cfg, layer), LayerPrefix(cfg, layer) + "mlp."}) {
    const std::string gu_name = block + "experts.gate_up_proj";
    if (!ckpt.Has(gu_name)) continue;
    const int64_t E = cfg.num_experts;
    MlpWeights m;
    m.gate_up.shape = {2 * inter, hidden};
    m.gate_up.data.resize(2 * inter * hidden);
    SY_RETURN_IF_ERROR(
        ckpt.ReadF32Slice(gu_name, {E, 2 * inter, hidden}, expert, m.gate_up.data.data()));
    m.down.shape = {hidden, inter};
    m.down.data.resize(hidden * inter);
    SY_RETURN_IF_ERROR(ckpt.ReadF32Slice(block + "experts.down_proj", {E, hidden, inter}, expert,
                                         m.down.data.data()));
    return m;
  }
  return absl::NotFoundError(absl::StrCat(ckpt.dir(), ": expert ", expert, " of layer ", layer,
                                          " not found (looked for '", gate,
                                          "' and fused 'experts.gate_up_proj')"));
}

DenseWeights DummyDenseWeights(const ModelConfig& cfg, uint64_t seed) {
  DummyFiller f(seed);
  const int64_t V = cfg.vocab_size, hidden = cfg.hidden_size;
  const int64_t H = cfg.num_heads, KV = cfg.num_kv_heads, D = cfg.head_dim;
  DenseWeights w;
  w.embed = f.Normal({V, hidden}, 1.0f, 0.0f, 1);
  w.final_norm = f.Norm(hidden, 2);
  w.lm_head = cfg.tie_word_embeddings ? w.embed : f.Proj(V, hidden, 3);
  w.layers.resize(cfg.num_layers);
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const uint64_t s = 1000 * (i + 1);
    l.input_norm = f.Norm(hidden, s + 1);
    l.post_attn_norm = f.Norm(hidden, s + 2);
    AttentionWeights& a = l.attn;
    if (cfg.attention == AttentionKind::kMla) {
      const int64_t r = cfg.kv_lora_rank;
      if (cfg.q_lora_rank > 0) {
        a.q_a_proj = f.Proj(cfg.q_lora_rank, hidden, s + 3);
        a.q_a_norm = f.Norm(cfg.q_lora_rank, s + 4);
        a.q_b_proj = f.Proj(H * D, cfg.q_lora_rank, s + 5);
      } else {
        a.q_proj = f.Proj(H * D, hidden, s + 3);
      }
      a.kv_a_proj = f.Proj(r + cfg.qk_rope_head_dim, hidden, s + 6);
      a.kv_a_norm = f.Norm(r, s + 7);
      Tensor kv_b = f.Proj(H * (cfg.qk_nope_head_dim + cfg.v_head_dim), r, s + 8);
      SplitKvB(cfg, kv_b, &a);
      a.o_proj = f.Proj(hidden, H * cfg.v_head_dim, s + 9);
    } else {
      a.qkv = f.Proj((H + 2 * KV) * D, hidden, s + 3);
      if (cfg.qkv_bias) a.qkv_bias = f.Normal({(H + 2 * KV) * D}, 0.02f, 0.0f, s + 4);
      if (cfg.qk_norm) {
        a.q_norm = f.Norm(D, s + 5);
        a.k_norm = f.Norm(D, s + 6);
      }
      a.o_proj = f.Proj(hidden, H * D, s + 7);
      if (cfg.o_bias) a.o_bias = f.Normal({hidden}, 0.02f, 0.0f, s + 8);
    }
    l.is_moe = cfg.layer_is_moe[i];
    if (!l.is_moe) {
      l.dense = DummyMlp(f, hidden, cfg.intermediate_size, s + 10);
      continue;
    }
    l.router = f.Proj(cfg.num_experts, hidden, s + 12);
    if (cfg.has_correction_bias)
      l.correction_bias = f.Normal({cfg.num_experts}, 0.1f, 0.0f, s + 13);
    if (cfg.shared_expert_intermediate_size > 0) {
      l.shared = DummyMlp(f, hidden, cfg.shared_expert_intermediate_size, s + 14);
      if (cfg.shared_expert_gate) l.shared_gate = f.Proj(1, hidden, s + 16);
    }
  }
  return w;
}

MlpWeights DummyExpert(const ModelConfig& cfg, int64_t layer, int64_t expert, uint64_t seed) {
  DummyFiller f(seed);
  return DummyMlp(f, cfg.hidden_size, cfg.moe_intermediate_size,
                  1000000 + static_cast<uint64_t>(layer) * 100000 + 2 * expert);
}

}  // namespace sy::model
