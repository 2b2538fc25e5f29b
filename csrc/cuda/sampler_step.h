// Framework-free interface of the sampler_step CUDA kernel (raw pointers + stream),
// so this file and sampler_step.cu compile with nvcc alone, without torch.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/dtype.h"

namespace lddm {
namespace cuda {

// out[i] = a[s] * x[i] + b[s] * eps[i] (+ c[s] * noise[i]) for i in sample s of
// [batch, per_sample] contiguous values; a, b, c: [batch] float32 on the device;
// noise and c may be null (then both are). fp32 math, 16-byte vector loads when
// every pointer is 16-byte aligned and per_sample is a multiple of the vector width.
cudaError_t sampler_step(DType dtype, const void* x, const void* eps, const void* noise,
                         void* out, const float* a, const float* b, const float* c,
                         int64_t batch, int64_t per_sample, cudaStream_t stream);

}  // namespace cuda
}  // namespace lddm
