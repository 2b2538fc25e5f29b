// Framework-free interface of the temporal_attention CUDA kernel (raw pointers +
// stream), so this file and temporal_attention.cu compile with nvcc alone, without torch.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/dtype.h"

namespace lddm {
namespace cuda {

// Element strides of a [B, C, T, H, W] tensor (any values: views of one qkv tensor,
// channels_last_3d, sliced or permuted tensors).
struct VideoStrides {
  int64_t b, c, t, y, x;
};

// Shared memory that one (b, head, y, x) position needs for these sizes; a block holds
// at least one position, so the caller compares this with the device's opt-in limit
// (cudaDevAttrMaxSharedMemoryPerBlockOptin) before launching.
size_t temporal_attention_smem_per_position(int64_t T, int64_t D);

// o = softmax(scale * q k^T) v over the T frames, independently at every (b, head, y, x)
// of [B, heads * D, T, H, W] tensors. q, k, v: inputs with strides sq, sk, sv (may
// alias each other); o: output with strides so, written directly in that layout, not
// aliasing the inputs. fp32 scores and softmax. lse: null, or float32 [B, heads, T, H, W]
// contiguous receiving each query's log sum_j exp(scale q.k_j) (natural units: what the
// backward takes). Returns cudaErrorInvalidValue when one position needs more shared
// memory than the device allows.
cudaError_t temporal_attention(DType dtype, const void* q, const void* k, const void* v, void* o,
                               float* lse, VideoStrides sq, VideoStrides sk, VideoStrides sv,
                               VideoStrides so, int64_t B, int64_t heads, int64_t D, int64_t T,
                               int64_t H, int64_t W, float scale, cudaStream_t stream);

// The backward's shared memory per position (q, k, v, the output gradient, the
// probabilities and their gradients), as temporal_attention_smem_per_position.
size_t temporal_attention_backward_smem_per_position(int64_t T, int64_t D);

// dq, dk, dv of temporal_attention for the output gradient go, from the forward's lse
// (the probabilities are recomputed from it). go, q, k, v: inputs with their strides
// (may alias each other); dq, dk, dv: outputs with theirs, distinct from each other and
// from the inputs. Same sizes, dtype and shared-memory rule as the forward.
cudaError_t temporal_attention_backward(DType dtype, const void* go, const void* q,
                                        const void* k, const void* v, const float* lse,
                                        void* dq, void* dk, void* dv, VideoStrides sgo,
                                        VideoStrides sq, VideoStrides sk, VideoStrides sv,
                                        VideoStrides sdq, VideoStrides sdk, VideoStrides sdv,
                                        int64_t B, int64_t heads, int64_t D, int64_t T,
                                        int64_t H, int64_t W, float scale, cudaStream_t stream);

}  // namespace cuda
}  // namespace lddm
