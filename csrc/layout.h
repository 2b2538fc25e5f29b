// The memory format of an op's output, shared by every launcher.
#pragma once

#include <ATen/ATen.h>

namespace lddm {

// Same rule as lddm_fast.ops.layout.memory_format_of, which the fake implementations
// use: channels_last(_3d) only when x is dense in it and not also plain contiguous,
// else contiguous. Tensor::suggest_memory_format differs on non-dense strides in
// channels-last order (it says channels-last), and torch.compile plans the code after
// an op from the fake's strides, so the kernels must not follow it.
inline at::MemoryFormat output_format(const at::Tensor& x) {
  if (x.dim() != 4 && x.dim() != 5) return at::MemoryFormat::Contiguous;
  const auto cl = x.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
  return !x.is_contiguous() && x.is_contiguous(cl) ? cl : at::MemoryFormat::Contiguous;
}

}  // namespace lddm
