// sampler_step: the per-element update of a DDIM / DPM-Solver step as one launch.
#include "cuda/sampler_step.h"

#include <algorithm>

#include "cuda/device_utils.cuh"

namespace lddm {
namespace cuda {
namespace {

// x, eps, noise, out: [batch, per_sample] viewed as vectors of Vec<T>::kWidth values
// (kVec) or single values; a, b, c: [batch]. Grid-stride over all vectors.
template <typename T, bool kVec, bool kNoise>
__global__ void sampler_step_kernel(const T* __restrict__ x, const T* __restrict__ eps,
                                    const T* __restrict__ noise, T* __restrict__ out,
                                    const float* __restrict__ a, const float* __restrict__ b,
                                    const float* __restrict__ c, int64_t per_sample,
                                    int64_t total) {
  constexpr int W = kVec ? Vec<T>::kWidth : 1;
  const int64_t units = total / W;
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units;
       u += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = (u * W) / per_sample;
    const float as = a[s], bs = b[s], cs = kNoise ? c[s] : 0.0f;
    if constexpr (kVec) {
      Vec<T> xv = reinterpret_cast<const Vec<T>*>(x)[u];
      const Vec<T> ev = reinterpret_cast<const Vec<T>*>(eps)[u];
      Vec<T> nv;
      if constexpr (kNoise) nv = reinterpret_cast<const Vec<T>*>(noise)[u];
#pragma unroll
      for (int i = 0; i < W; ++i) {
        float r = as * to_float(xv.v[i]) + bs * to_float(ev.v[i]);
        if constexpr (kNoise) r += cs * to_float(nv.v[i]);
        xv.v[i] = from_float<T>(r);
      }
      reinterpret_cast<Vec<T>*>(out)[u] = xv;
    } else {
      float r = as * to_float(x[u]) + bs * to_float(eps[u]);
      if constexpr (kNoise) r += cs * to_float(noise[u]);
      out[u] = from_float<T>(r);
    }
  }
}

template <typename T>
cudaError_t launch(const void* x, const void* eps, const void* noise, void* out, const float* a,
                   const float* b, const float* c, int64_t batch, int64_t per_sample,
                   cudaStream_t stream) {
  const int64_t total = batch * per_sample;
  if (total == 0) return cudaSuccess;
  const bool vec = per_sample % Vec<T>::kWidth == 0 && aligned16(x) && aligned16(eps) &&
                   aligned16(noise) && aligned16(out);
  const int64_t units = vec ? total / Vec<T>::kWidth : total;
  constexpr int kThreads = 256;
  // Grid-stride loop: a few waves of blocks are enough, and the grid stays far
  // below the 2^31 - 1 limit whatever the tensor size.
  const int64_t blocks = std::min<int64_t>((units + kThreads - 1) / kThreads, 65535);
  auto* xt = static_cast<const T*>(x);
  auto* et = static_cast<const T*>(eps);
  auto* nt = static_cast<const T*>(noise);
  auto* ot = static_cast<T*>(out);
  if (vec && noise)
    sampler_step_kernel<T, true, true><<<blocks, kThreads, 0, stream>>>(xt, et, nt, ot, a, b, c, per_sample, total);
  else if (vec)
    sampler_step_kernel<T, true, false><<<blocks, kThreads, 0, stream>>>(xt, et, nt, ot, a, b, c, per_sample, total);
  else if (noise)
    sampler_step_kernel<T, false, true><<<blocks, kThreads, 0, stream>>>(xt, et, nt, ot, a, b, c, per_sample, total);
  else
    sampler_step_kernel<T, false, false><<<blocks, kThreads, 0, stream>>>(xt, et, nt, ot, a, b, c, per_sample, total);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sampler_step(DType dtype, const void* x, const void* eps, const void* noise, void* out,
                         const float* a, const float* b, const float* c, int64_t batch,
                         int64_t per_sample, cudaStream_t stream) {
  return with_storage_type(dtype, [&](auto storage) {
    using Storage = decltype(storage);
    return launch<Storage>(x, eps, noise, out, a, b, c, batch, per_sample, stream);
  });
}

}  // namespace cuda
}  // namespace lddm
