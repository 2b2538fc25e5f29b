// AVX-512 build of the CPU kernels (F, BW, VL, DQ and BF16: Cooper Lake, Sapphire Rapids
// and later Xeons, Zen 4 and later). CMake compiles this file alone with those flags;
// cpu/dispatch.h calls it only when the CPU reports all of them. The kernels are the
// AVX2 build's, instantiated over 16-float vectors (simd.h).
#include "cpu/cpu_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512BF16__) && defined(__FMA__)
#define LDDM_ISA_NAMESPACE isa_avx512
#include "cpu/cpu_kernels_impl.h"
#define LDDM_HAVE_AVX512_BUILD 1
#endif

namespace lddm {
namespace cpu {
namespace isa_avx512 {

#ifndef LDDM_HAVE_AVX512_BUILD  // no AVX-512 build here: cpu_supported_isa never picks it
template <typename T>
const Kernels<T>* kernels() {
  return nullptr;
}
#endif
template const Kernels<float>* kernels<float>();
template const Kernels<bf16_t>* kernels<bf16_t>();

}  // namespace isa_avx512
}  // namespace cpu
}  // namespace lddm
