// Baseline build of the CPU kernels (whatever the compiler targets by default).
#define LDDM_ISA_NAMESPACE isa_default
#include "cpu/cpu_kernels_impl.h"

namespace lddm {
namespace cpu {
namespace isa_default {

const Kernels<float>& kernels_f32() {
  static const Kernels<float> k = make_kernels<float>();
  return k;
}

const Kernels<bf16_t>& kernels_bf16() {
  static const Kernels<bf16_t> k = make_kernels<bf16_t>();
  return k;
}

}  // namespace isa_default
}  // namespace cpu
}  // namespace lddm
