// Plain types of the kernel API (no abseil), shared by kernels.h, the CPU
// backend and the CUDA launchers (kernels/cuda/*.cu, which nvcc compiles
// without abseil).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SY_HOST_DEVICE __host__ __device__
#else
#define SY_HOST_DEVICE
#endif

namespace sy::kernels {

enum class Device { kCpu, kCuda };
enum class DType { kF32, kBF16, kF16 };

// Where a call runs. For kCuda, every pointer argument of a kernel is device
// memory of that context (pointer arrays and offsets included) unless the
// function says otherwise; for kCpu, host memory. Contexts for the GPU come
// from kernels::DeviceContext (kernels/device.h), which owns the stream and
// the backend state behind `backend`.
struct Context {
  Device device = Device::kCpu;
  void* stream = nullptr;   // cudaStream_t for kCuda; unused on the CPU
  void* backend = nullptr;  // kCuda: the owning DeviceContext's cuBLAS handle and workspace
};

// Rotary position embedding parameters (kernels::Rope).
struct RopeParams {
  int64_t rotary_dim = 0;
  bool interleaved = false;
  const float* inv_freq = nullptr;  // [rotary_dim / 2], in the context's memory
  float attention_scaling = 1.0f;
};

// A batch of sequences over a paged KV cache (kernels::PagedAttention).
struct AttentionBatch {
  int64_t num_seqs = 0;
  const int32_t* q_start = nullptr;       // [num_seqs + 1]
  const int32_t* context_lens = nullptr;  // [num_seqs]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  int64_t block_size = 0;
  // CUDA only (host values, bounds the launch grid so that it does not
  // depend on per-step data, as CUDA graphs need): the largest q_len and
  // context length of any sequence in the batch. 0 means "unknown": the
  // backend then derives them from num_tokens and max_blocks_per_seq.
  int64_t max_q_len = 0;
  int64_t max_context_len = 0;
  int64_t num_tokens = 0;  // q_start[num_seqs] (host value; CUDA only)
};

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;    // q/k dot-product length
  int64_t v_dim = 0;       // value length
  int64_t q_stride = 0;    // elements between tokens in q  (>= num_heads * head_dim)
  int64_t out_stride = 0;  // elements between tokens in out (>= num_heads * v_dim)
  int64_t k_slot_stride = 0;
  int64_t v_slot_stride = 0;
  float scale = 1.0f;  // multiplies q.k before softmax
};

// MoE router: scores, expert selection and combine weights for each token.
enum class ScoreFunction { kSoftmax, kSigmoid };
enum class TopkMethod {
  kGreedy,              // plain top-k of the scores
  kGroupLimitedGreedy,  // DeepSeek-V2: groups ranked by their max score
  kNoAuxTc,             // DeepSeek-V3: groups ranked by sum of top-2 (score + bias)
};
struct RouterParams {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  ScoreFunction score = ScoreFunction::kSoftmax;
  TopkMethod method = TopkMethod::kGreedy;
  int64_t num_groups = 1;    // n_group; experts split in equal contiguous groups
  int64_t topk_groups = 1;   // topk_group: groups kept
  bool renormalize = false;  // divide the k weights by their sum (+1e-20)
  float scaling = 1.0f;      // routed_scaling_factor, applied last
  // Added to the scores for *selection only* (e_score_correction_bias /
  // expert_bias); the weights use the raw scores. May be nullptr.
  const float* correction_bias = nullptr;  // [num_experts], in the context's memory
  // Selection value given to experts of groups that are not kept: 0 for the
  // transformers DeepSeek/GLM routers, -inf for Param2MoE (Bailing-MoE-V2).
  float dropped_group_value = 0.0f;
};

// Per-row token sampling settings (kernels::SampleTokens). An array of these
// lives in the context's memory.
struct SampleParams {
  float temperature = 0.0f;  // 0: greedy (argmax, ties to the lower id)
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  uint64_t seed = 0;         // (seed, step) pick the row's uniform draw
  uint64_t step = 0;
};

// The uniform number in [0, 1) that sampling draws for (seed, step): a
// splitmix64 hash of the pair, 24 bits of it. The same on every device, so a
// seeded request samples the same tokens on the CPU and the GPU (up to the
// rounding of the probabilities it is compared with).
SY_HOST_DEVICE inline float CounterUniform(uint64_t seed, uint64_t step) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (step + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

}  // namespace sy::kernels
