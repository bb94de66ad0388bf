// Elementwise and row-wise CUDA kernels: embedding, RMSNorm (plain and with
// the fused residual add), add, bias, SiLU-and-multiply, rotary embedding,
// cache writes, strided copies, the sigmoid gate and dtype conversion.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace sy::kernels::cuda {
namespace {

template <typename T>
__global__ void EmbeddingKernel(const int32_t* ids, const T* table, int64_t vocab, int64_t hidden,
                                T* out) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  const bool valid = id >= 0 && id < vocab;
  const T* src = table + static_cast<int64_t>(valid ? id : 0) * hidden;
  T* dst = out + t * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    dst[i] = valid ? src[i] : FromF<T>(0.0f);
  }
}

template <typename T>
__global__ void RmsNormKernel(const T* x, int64_t x_stride, const T* w, T* y, int64_t y_stride,
                              int64_t dim, float eps) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * x_stride;
  T* yr = y + blockIdx.x * y_stride;
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToF(xr[i]);
    sum_sq += v * v;
  }
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv_rms = rsqrtf(sum_sq / static_cast<float>(dim) + eps);
  // In place is fine: each thread reads its elements before writing them.
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = FromF<T>((ToF(xr[i]) * inv_rms) * ToF(w[i]));
  }
}

// residual += x (rounded to T, as an unfused add would store it), then the
// norm of the rounded sum. The row is kept in shared memory between passes.
template <typename T>
__global__ void AddRmsNormKernel(T* residual, const T* x, const T* w, T* y, int64_t dim,
                                 float eps) {
  extern __shared__ float row[];
  __shared__ float scratch[32];
  T* rr = residual + blockIdx.x * dim;
  const T* xr = x + blockIdx.x * dim;
  T* yr = y + blockIdx.x * dim;
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const T s = FromF<T>(ToF(rr[i]) + ToF(xr[i]));
    rr[i] = s;
    const float v = ToF(s);
    row[i] = v;
    sum_sq += v * v;
  }
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv_rms = rsqrtf(sum_sq / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = FromF<T>((row[i] * inv_rms) * ToF(w[i]));
  }
}

template <typename T>
__global__ void AddKernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = FromF<T>(ToF(y[i]) + ToF(x[i]));
  }
}

template <typename T>
__global__ void AddBiasKernel(T* y, const T* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = FromF<T>(ToF(y[i]) + ToF(bias[i % cols]));
  }
}

template <typename T>
__global__ void SiluMulKernel(const T* in, T* out, int64_t rows, int64_t inter) {
  const int64_t n = rows * inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / inter, c = i - r * inter;
    const float g = ToF(in[r * 2 * inter + c]);
    const float u = ToF(in[r * 2 * inter + inter + c]);
    out[i] = FromF<T>(g / (1.0f + expf(-g)) * u);
  }
}

// One thread per (token, head, pair).
template <typename T>
__global__ void RopeKernel(T* x, int64_t num_tokens, int64_t num_heads, int64_t token_stride,
                           int64_t head_stride, const int32_t* positions, const float* inv_freq,
                           int64_t half, bool interleaved, float scaling) {
  const int64_t n = num_tokens * num_heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t th = idx / half;
    const int64_t h = th % num_heads, t = th / num_heads;
    // fp32 angle, then cos/sin, then scaling, as the CPU reference does.
    const float angle = static_cast<float>(positions[t]) * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    c *= scaling;
    s *= scaling;
    T* xh = x + t * token_stride + h * head_stride;
    T* a = xh + (interleaved ? 2 * i : i);
    T* b = a + (interleaved ? 1 : half);
    const float a0 = ToF(*a), b0 = ToF(*b);
    *a = FromF<T>(a0 * c - b0 * s);
    *b = FromF<T>(b0 * c + a0 * s);
  }
}

template <typename T>
__global__ void CacheWriteKernel(const T* src, int64_t src_stride, int64_t num_tokens,
                                 int64_t row_elems, const int32_t* slots, T* cache) {
  const int64_t n = num_tokens * row_elems;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / row_elems, j = i - t * row_elems;
    const int32_t slot = slots[t];
    if (slot < 0) continue;
    cache[static_cast<int64_t>(slot) * row_elems + j] = src[t * src_stride + j];
  }
}

template <typename T>
__global__ void Copy2DKernel(const T* src, int64_t src_stride, T* dst, int64_t dst_stride,
                             int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    dst[r * dst_stride + c] = src[r * src_stride + c];
  }
}

template <typename T>
__global__ void SigmoidGateMulKernel(T* y, const T* gate, int64_t gate_stride, int64_t rows,
                                     int64_t dim) {
  const int64_t n = rows * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / dim;
    const float g = ToF(gate[r * gate_stride]);
    y[i] = FromF<T>(ToF(y[i]) * (1.0f / (1.0f + expf(-g))));
  }
}

template <typename S, typename D>
__global__ void ConvertKernel(const S* src, D* dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = FromF<D>(ToF(src[i]));
  }
}

constexpr int kThreads = 256;

int RowThreads(int64_t dim) {
  if (dim >= 4096) return 1024;
  if (dim >= 1024) return 512;
  if (dim >= 256) return 256;
  return 64;
}

}  // namespace

cudaError_t Embedding(cudaStream_t stream, DType dtype, const int32_t* ids, int64_t num_tokens,
                      const void* table, int64_t vocab, int64_t hidden, void* out) {
  if (num_tokens == 0 || hidden == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(dtype, T,
                   EmbeddingKernel<T>
                   <<<static_cast<unsigned>(num_tokens), RowThreads(hidden), 0, stream>>>(
                       ids, static_cast<const T*>(table), vocab, hidden, static_cast<T*>(out)));
  return cudaGetLastError();
}

cudaError_t RmsNorm(cudaStream_t stream, DType dtype, const void* x, int64_t x_stride,
                    const void* w, void* y, int64_t y_stride, int64_t rows, int64_t dim,
                    float eps) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(dtype, T,
                   RmsNormKernel<T><<<static_cast<unsigned>(rows), RowThreads(dim), 0, stream>>>(
                       static_cast<const T*>(x), x_stride, static_cast<const T*>(w),
                       static_cast<T*>(y), y_stride, dim, eps));
  return cudaGetLastError();
}

cudaError_t AddRmsNorm(cudaStream_t stream, DType dtype, void* residual, const void* x,
                       const void* w, void* y, int64_t rows, int64_t dim, float eps) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(dim) * sizeof(float);
  if (smem > 48 * 1024) return cudaErrorInvalidValue;  // dim > 12288
  SY_CUDA_DISPATCH(dtype, T,
                   AddRmsNormKernel<T>
                   <<<static_cast<unsigned>(rows), RowThreads(dim), smem, stream>>>(
                       static_cast<T*>(residual), static_cast<const T*>(x),
                       static_cast<const T*>(w), static_cast<T*>(y), dim, eps));
  return cudaGetLastError();
}

cudaError_t Add(cudaStream_t stream, DType dtype, void* y, const void* x, int64_t n) {
  if (n == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(dtype, T,
                   AddKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(
                       static_cast<T*>(y), static_cast<const T*>(x), n));
  return cudaGetLastError();
}

cudaError_t AddBias(cudaStream_t stream, DType dtype, void* y, const void* bias, int64_t rows,
                    int64_t cols) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(dtype, T,
                   AddBiasKernel<T><<<GridFor(rows * cols, kThreads), kThreads, 0, stream>>>(
                       static_cast<T*>(y), static_cast<const T*>(bias), rows, cols));
  return cudaGetLastError();
}

cudaError_t SiluMul(cudaStream_t stream, DType dtype, const void* in, void* out, int64_t rows,
                    int64_t inter) {
  if (rows == 0 || inter == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(dtype, T,
                   SiluMulKernel<T><<<GridFor(rows * inter, kThreads), kThreads, 0, stream>>>(
                       static_cast<const T*>(in), static_cast<T*>(out), rows, inter));
  return cudaGetLastError();
}

cudaError_t Rope(cudaStream_t stream, DType dtype, void* x, int64_t num_tokens, int64_t num_heads,
                 int64_t token_stride, int64_t head_stride, const int32_t* positions,
                 const RopeParams& params) {
  const int64_t half = params.rotary_dim / 2;
  const int64_t n = num_tokens * num_heads * half;
  if (n == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(
      dtype, T,
      RopeKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(
          static_cast<T*>(x), num_tokens, num_heads, token_stride, head_stride, positions,
          params.inv_freq, half, params.interleaved, params.attention_scaling));
  return cudaGetLastError();
}

cudaError_t CacheWrite(cudaStream_t stream, DType dtype, const void* src, int64_t src_stride,
                       int64_t num_tokens, int64_t row_elems, const int32_t* slots, void* cache) {
  const int64_t n = num_tokens * row_elems;
  if (n == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(dtype, T,
                   CacheWriteKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(
                       static_cast<const T*>(src), src_stride, num_tokens, row_elems, slots,
                       static_cast<T*>(cache)));
  return cudaGetLastError();
}

cudaError_t Copy2D(cudaStream_t stream, DType dtype, const void* src, int64_t src_stride, void* dst,
                   int64_t dst_stride, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(
      dtype, T,
      Copy2DKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(src), src_stride, static_cast<T*>(dst), dst_stride, rows, cols));
  return cudaGetLastError();
}

cudaError_t SigmoidGateMul(cudaStream_t stream, DType dtype, void* y, const void* gate,
                           int64_t gate_stride, int64_t rows, int64_t dim) {
  const int64_t n = rows * dim;
  if (n == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(dtype, T,
                   SigmoidGateMulKernel<T><<<GridFor(n, kThreads), kThreads, 0, stream>>>(
                       static_cast<T*>(y), static_cast<const T*>(gate), gate_stride, rows, dim));
  return cudaGetLastError();
}

cudaError_t Convert(cudaStream_t stream, DType src_dtype, const void* src, DType dst_dtype,
                    void* dst, int64_t n) {
  if (n == 0) return cudaSuccess;
  SY_CUDA_DISPATCH(
      src_dtype, S,
      SY_CUDA_DISPATCH(dst_dtype, D,
                       ConvertKernel<S, D><<<GridFor(n, kThreads), kThreads, 0, stream>>>(
                           static_cast<const S*>(src), static_cast<D*>(dst), n)));
  return cudaGetLastError();
}

}  // namespace sy::kernels::cuda
