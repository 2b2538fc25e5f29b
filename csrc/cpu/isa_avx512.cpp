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

#ifdef LDDM_HAVE_AVX512_BUILD
const Kernels<float>* kernels_f32() {
  static const Kernels<float> k = make_kernels<float>();
  return &k;
}

const Kernels<bf16_t>* kernels_bf16() {
  static const Kernels<bf16_t> k = make_kernels<bf16_t>();
  return &k;
}
#else
const Kernels<float>* kernels_f32() { return nullptr; }
const Kernels<bf16_t>* kernels_bf16() { return nullptr; }
#endif

}  // namespace isa_avx512
}  // namespace cpu
}  // namespace lddm
