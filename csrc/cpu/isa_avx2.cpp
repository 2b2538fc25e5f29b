// AVX2 + FMA build of the CPU kernels. CMake compiles this file alone with
// -mavx2 -mfma; cpu/dispatch.h calls it only when the CPU reports both features.
#include "cpu/cpu_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#define LDDM_ISA_NAMESPACE isa_avx2
#include "cpu/cpu_kernels_impl.h"
#endif

namespace lddm {
namespace cpu {
namespace isa_avx2 {

#if !(defined(__AVX2__) && defined(__FMA__))  // no AVX2 build: never picked
template <typename T>
const Kernels<T>* kernels() {
  return nullptr;
}
#endif
template const Kernels<float>* kernels<float>();
template const Kernels<bf16_t>* kernels<bf16_t>();

}  // namespace isa_avx2
}  // namespace cpu
}  // namespace lddm
