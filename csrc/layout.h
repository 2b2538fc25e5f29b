// The memory format of each op's output, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>

namespace lddm {

// Same rule as lddm_fast.layout.memory_format_of, which the fake implementations
// use: channels_last(_3d) only when x is dense in it and not also plain contiguous,
// else contiguous. Tensor::suggest_memory_format differs on non-dense strides in
// channels-last order (it says channels-last), and torch.compile plans the code after
// an op from the fake's strides, so the kernels must not follow it.
inline at::MemoryFormat output_format(const at::Tensor& x) {
  if (x.dim() != 4 && x.dim() != 5) return at::MemoryFormat::Contiguous;
  const auto cl = x.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
  return !x.is_contiguous() && x.is_contiguous(cl) ? cl : at::MemoryFormat::Contiguous;
}

// Same rule as lddm_fast.layout.attention_output_format: channels_last_3d when q's
// channels are innermost (q is a view of a channels_last_3d qkv tensor), else
// contiguous [B, C, T, H, W].
inline at::MemoryFormat attention_output_format(const at::Tensor& q) {
  return q.size(1) > 1 && q.stride(1) == 1 ? at::MemoryFormat::ChannelsLast3d
                                           : at::MemoryFormat::Contiguous;
}

}  // namespace lddm
