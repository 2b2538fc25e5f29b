// Torch-side helpers of the CPU temporal attention launchers: a tensor's strides as the
// kernels take them (forward and backward), and the order the backward walks.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>

#include "cpu/cpu_kernels.h"

namespace lddm {
namespace cpu {

inline Strides5 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

// Frames whose rows follow each other in memory in every tensor (row stride W times the
// pixel stride) are one long row of H * W pixels: the lane kernels' tiles then fill their
// lanes across row ends and a chunk is one run of memory (rows of 4 or 12 pixels would
// leave lanes empty). Sets H = 1, W = H * W when that holds.
inline void merge_rows(std::initializer_list<Strides5> tensors, int64_t& H, int64_t& W) {
  for (const Strides5& s : tensors)
    if (s.h != W * s.w) return;
  W *= H;
  H = 1;
}

// Walk memory in order: heads fastest when channels are nearer than pixels, pixels
// fastest otherwise (contiguous [B, C, T, H, W]).
inline bool heads_inner(const Strides5& s) {
  return std::abs(s.c) <= std::min(std::abs(s.w), std::abs(s.h));
}

}  // namespace cpu
}  // namespace lddm
