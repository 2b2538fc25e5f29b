// sampler_step's CPU kernel. See kernel_common.h for how the instruction-set builds
// include this.
#pragma once

#include "cpu/kernel_common.h"

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

template <typename T>
void sampler_step(const T* x, const T* eps, const T* noise, T* out, int64_t n, float a, float b,
                  float c) {
  if (noise == nullptr) {
    for (int64_t i = 0; i < n; ++i) store(out + i, a * load(x[i]) + b * load(eps[i]));
  } else {
    for (int64_t i = 0; i < n; ++i)
      store(out + i, a * load(x[i]) + b * load(eps[i]) + c * load(noise[i]));
  }
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
