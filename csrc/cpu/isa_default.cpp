// Baseline build of the CPU kernels (whatever the compiler targets by default).
#define LDDM_ISA_NAMESPACE isa_default
#include "cpu/cpu_kernels_impl.h"

namespace lddm {
namespace cpu {
namespace isa_default {

template const Kernels<float>* kernels<float>();
template const Kernels<bf16_t>* kernels<bf16_t>();

}  // namespace isa_default
}  // namespace cpu
}  // namespace lddm
