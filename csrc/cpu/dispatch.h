// Torch-side helpers shared by the CPU ops: kernel-table selection by CPU features
// and the mapping from at::ScalarType to kernel storage types.
#pragma once

#include <cstdlib>
#include <cstring>

#include <c10/util/BFloat16.h>

#include "cpu/cpu_kernels.h"

namespace lddm {
namespace cpu {

// The AVX2 build when the CPU has AVX2 and FMA, unless LDDM_CPU_ISA=default forces
// the baseline build (tests use it to check both).
inline bool use_avx2() {
  const char* forced = std::getenv("LDDM_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "default") == 0) return false;
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

template <typename T>
const Kernels<T>& select_kernels();

template <>
inline const Kernels<float>& select_kernels<float>() {
  const Kernels<float>* k = use_avx2() ? isa_avx2::kernels_f32() : nullptr;
  return k != nullptr ? *k : isa_default::kernels_f32();
}

template <>
inline const Kernels<bf16_t>& select_kernels<bf16_t>() {
  const Kernels<bf16_t>* k = use_avx2() ? isa_avx2::kernels_bf16() : nullptr;
  return k != nullptr ? *k : isa_default::kernels_bf16();
}

// Storage type the kernels use for a torch element type.
template <typename scalar_t>
struct StorageOf {
  using type = scalar_t;
};
template <>
struct StorageOf<c10::BFloat16> {
  using type = bf16_t;
};

template <typename scalar_t>
inline typename StorageOf<scalar_t>::type* storage(scalar_t* p) {
  return reinterpret_cast<typename StorageOf<scalar_t>::type*>(p);
}
template <typename scalar_t>
inline const typename StorageOf<scalar_t>::type* storage(const scalar_t* p) {
  return reinterpret_cast<const typename StorageOf<scalar_t>::type*>(p);
}

}  // namespace cpu
}  // namespace lddm
