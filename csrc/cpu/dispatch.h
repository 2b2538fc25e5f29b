// Torch-side helpers shared by the CPU ops: kernel-table selection by CPU features
// and the mapping from at::ScalarType to kernel storage types.
#pragma once

#include <cstdlib>
#include <cstring>

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include "cpu/cpu_kernels.h"

namespace lddm {
namespace cpu {

// The CPU kernel builds, narrowest first.
enum class Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : (isa == Isa::kAvx2 ? "avx2" : "default");
}

// The widest build this CPU runs: AVX-512 needs F, BW, VL, DQ and BF16 (its bf16 stores
// are one conversion instruction), AVX2 needs AVX2 and FMA.
inline Isa cpu_supported_isa() {
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bf16") && isa_avx512::kernels<float>() != nullptr)
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      isa_avx2::kernels<float>() != nullptr)
    return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

// The build the ops call: the widest the CPU runs, or a narrower one named by
// LDDM_CPU_ISA=default|avx2|avx512 (tests check each; a name wider than the CPU runs, or
// an unknown one, is an error rather than a silent fallback).
inline Isa selected_isa() {
  static const Isa supported = cpu_supported_isa();
  const char* forced = std::getenv("LDDM_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0') return supported;
  for (Isa isa : {Isa::kDefault, Isa::kAvx2, Isa::kAvx512}) {
    if (std::strcmp(forced, isa_name(isa)) != 0) continue;
    TORCH_CHECK(int(isa) <= int(supported), "LDDM_CPU_ISA=", forced,
                ": this CPU (or this build of lddm_fast) only runs up to ", isa_name(supported));
    return isa;
  }
  TORCH_CHECK(false, "LDDM_CPU_ISA=", forced, " is not one of default, avx2, avx512");
}

template <typename T>
const Kernels<T>& select_kernels() {
  switch (selected_isa()) {
    case Isa::kAvx512:
      return *isa_avx512::kernels<T>();
    case Isa::kAvx2:
      return *isa_avx2::kernels<T>();
    default:
      return *isa_default::kernels<T>();
  }
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
