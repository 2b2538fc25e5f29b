// Argument checks shared by the torch-side launchers; failures raise RuntimeError
// (ValueError for TORCH_CHECK_VALUE) naming the argument.
#pragma once

#include <cstdlib>
#include <cstring>
#include <limits>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#ifdef LDDM_WITH_CUDA
#include "cuda/dtype.h"
#endif

#define LDDM_CHECK_DEVICE(t, dev_type, name)                                          \
  TORCH_CHECK_VALUE((t).device().type() == (dev_type), name " must be a ", dev_type, \
                    " tensor, got one on ", (t).device())

namespace lddm {

// With LDDM_POISON_OUTPUTS=1 every op fills its freshly allocated output with NaN
// before the kernel runs, so a test sees any element the kernel failed to write.
inline void poison_if_requested(at::Tensor& out) {
  const char* flag = std::getenv("LDDM_POISON_OUTPUTS");
  if (flag != nullptr && std::strcmp(flag, "1") == 0)
    out.fill_(std::numeric_limits<double>::quiet_NaN());
}

#ifdef LDDM_WITH_CUDA
// The CUDA kernels' storage type for t, or a ValueError naming the argument.
inline cuda::DType cuda_dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kHalf: return cuda::DType::kFloat16;
    default:
      TORCH_CHECK_VALUE(false, name, " must be float32, bfloat16 or float16, got ",
                        t.scalar_type());
  }
}
#endif

}  // namespace lddm
