// Baseline build of the CPU kernels (whatever the compiler targets by default).
#define LDDM_ISA_NAMESPACE isa_default
#include "cpu/cpu_kernels_impl.h"

namespace lddm {
namespace cpu {
namespace isa_default {

const Kernels<float>& kernels_f32() { return *kernel_table<float>(); }
const Kernels<bf16_t>& kernels_bf16() { return *kernel_table<bf16_t>(); }

}  // namespace isa_default
}  // namespace cpu
}  // namespace lddm
