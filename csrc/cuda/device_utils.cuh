// Device helpers shared by the CUDA kernels: storage-type
// conversions (fp32 math on fp32 / bf16 / fp16 storage) and 16-byte vectors.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "cuda/dtype.h"

namespace lddm {
namespace cuda {

// f(T{}) with T the storage type of `dtype` (float, __nv_bfloat16, __half): the entry
// points' one switch from the runtime dtype to their launch templates.
template <typename F>
cudaError_t with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(float{});
    case DType::kBFloat16:
      return f(__nv_bfloat16{});
    case DType::kFloat16:
      return f(__half{});
  }
  return cudaErrorInvalidValue;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// kBytes of T, loaded and stored as one access (16: one 128-bit access).
template <typename T, int kBytes = 16>
struct alignas(kBytes) Vec {
  static constexpr int kWidth = kBytes / sizeof(T);
  T v[kWidth];
};

inline bool aligned(const void* p, int bytes) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}
inline bool aligned16(const void* p) { return aligned(p, 16); }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// Grid cap; kernels grid-stride beyond it (grid.x allows 2^31 - 1, this is plenty).
constexpr int64_t kMaxGrid = 65535;

// Blocks for `work` items: at least one, at most kMaxGrid.
inline int grid_for(int64_t work) { return int(work < 1 ? 1 : (work < kMaxGrid ? work : kMaxGrid)); }

// How the group_norm reduction kernels cut their input: about target_blocks blocks in
// all, each reading at least min_values values where the input has them.
// Slices of each of `items` runs of `values` consecutive values (kNCS):
inline int64_t slices_per_item(int64_t items, int64_t values, int64_t target_blocks,
                               int64_t min_values) {
  const int64_t by_blocks = ceil_div(target_blocks, items), by_size = ceil_div(values, min_values);
  const int64_t slices = by_blocks < by_size ? by_blocks : by_size;
  return slices > 1 ? slices : 1;
}
// Chunks of positions of each sample of a channels-last [N, S, C] input (kNSC):
struct PositionChunks {
  int64_t count;  // per sample
  int64_t len;    // positions per chunk (the last may be shorter)
};
inline PositionChunks position_chunks(int64_t N, int64_t S, int64_t C, int64_t target_blocks,
                                      int64_t min_values) {
  const int64_t len = ceil_div(S, slices_per_item(N, S * C, target_blocks, min_values));
  return {ceil_div(S, len), len};
}

}  // namespace cuda
}  // namespace lddm
