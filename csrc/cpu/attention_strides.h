// Torch-side helpers of the CPU temporal attention launchers: a tensor's strides as the
// kernels take them (forward and backward), and the order the backward walks.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdlib>

#include "cpu/cpu_kernels.h"

namespace lddm {
namespace cpu {

inline Strides5 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

// Walk memory in order: heads fastest when channels are nearer than pixels, pixels
// fastest otherwise (contiguous [B, C, T, H, W]).
inline bool heads_inner(const Strides5& s) {
  return std::abs(s.c) <= std::min(std::abs(s.w), std::abs(s.h));
}

}  // namespace cpu
}  // namespace lddm
