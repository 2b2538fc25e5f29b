// The CPU kernel table of one instruction set: included once by isa_<name>.cpp, which
// names the namespace (LDDM_ISA_NAMESPACE). One header per op family holds the code.
#pragma once

#include "cpu/attention_backward_kernels.h"
#include "cpu/attention_kernels.h"
#include "cpu/group_norm_backward_kernels.h"
#include "cpu/group_norm_kernels.h"
#include "cpu/sampler_step_kernels.h"

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

template <typename T>
Kernels<T> make_kernels() {
  Kernels<T> k;
  k.row_moments = &row_moments<T>;
  k.chunk_moments = &chunk_moments<T>;
  k.affine_row = &affine_row<T>;
  k.affine_row_varying = &affine_row_varying<T>;
  k.affine_chunk = &affine_chunk<T>;
  k.gn_grad_row_sums = &gn_grad_row_sums<T>;
  k.gn_grad_row_dx = &gn_grad_row_dx<T>;
  k.gn_grad_chunk_sums = &gn_grad_chunk_sums<T>;
  k.gn_grad_chunk_dx = &gn_grad_chunk_dx<T>;
  k.attention_pixels = &attention_pixels<T>;
  k.attention_lanes = &attention_lanes<T>;
  k.attention_backward = &attention_backward<T>;
#if LDDM_SIMD
  k.attention_backward_lanes = &attention_backward_lanes<T>;
  k.attention_backward_pixels = &attention_backward_pixels<T>;
#else
  k.attention_backward_lanes = nullptr;
  k.attention_backward_pixels = nullptr;
#endif
  k.sampler_step = &sampler_step<T>;
  return k;
}

template <typename T>
const Kernels<T>* kernels() {
  static const Kernels<T> k = make_kernels<T>();
  return &k;
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
