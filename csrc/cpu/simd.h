// Vector registers of the intrinsic kernels (vector_kernels.h and the LDDM_SIMD parts of
// the family headers): V8, 8 floats in an AVX2 register, and in the AVX-512 build V16,
// 16 floats. Kernels are templates over one of them, so the AVX2 and AVX-512 builds
// share their code; `Vec` is the widest the build has. Included only by kernel_common.h
// in the builds compiled for these instruction sets (isa_avx2.cpp, isa_avx512.cpp).
#pragma once

#if !(defined(__AVX2__) && defined(__FMA__))
#error "simd.h needs -mavx2 -mfma"
#endif

#include <immintrin.h>

#include <cstdint>

#include "cpu/cpu_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512BF16__)
#define LDDM_AVX512 1
#else
#define LDDM_AVX512 0
#endif

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

struct V8 {
  using reg = __m256;
  static constexpr int W = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load(const bf16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  // Round to nearest even, NaN stays a (quiet) NaN, as the scalar store in kernel_common.h.
  static void store(bf16_t* p, reg v) {
#if LDDM_AVX512
    // One instruction (AVX512-BF16 + VL). It also flushes subnormal inputs to zero,
    // below 1.2e-38, where the scalar store would keep a subnormal bf16.
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), (__m128i)_mm256_cvtneps_pbh(v));
#else
    const __m256i r = bf16_bits(v);
    // packus works per 128-bit lane: [a0..a3 b0..b3 | a4..a7 b4..b7] -> fix the order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
#endif
  }
#if !LDDM_AVX512
  // 16 values, a's then b's, with one pack and one permute for both.
  static void store2(bf16_t* p, reg a, reg b) {
    const __m256i packed = _mm256_packus_epi32(bf16_bits(a), bf16_bits(b));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_permute4x64_epi64(packed, 0xD8));
  }
  // v rounded to bf16 (nearest even; a NaN becomes the quiet NaN 0x7FC0), the 16 bits in
  // the low half of each 32-bit lane.
  static __m256i bf16_bits(reg v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), nan);
    return _mm256_srli_epi32(r, 16);
  }
#endif
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg fnmadd(reg a, reg b, reg c) { return _mm256_fnmadd_ps(a, b, c); }
  // 1 / a to 12 bits (one Newton step makes it ~1e-7).
  static reg rcp(reg a) { return _mm256_rcp_ps(a); }
  // p * 2^n where n is in the low mantissa bits of `shifted` (an integer add to the
  // exponent field instead of a multiply; see exp2_clamped).
  static reg scale_pow2(reg p, reg shifted) {
    return _mm256_castsi256_ps(_mm256_add_epi32(
        _mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(shifted), 23)));
  }
};

#if LDDM_AVX512
struct V16 {
  using reg = __m512;
  static constexpr int W = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load(const bf16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  // One instruction (AVX512-BF16); subnormal inputs flush to zero (see V8::store).
  static void store(bf16_t* p, reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
  }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg fnmadd(reg a, reg b, reg c) { return _mm512_fnmadd_ps(a, b, c); }
  // 1 / a to 14 bits.
  static reg rcp(reg a) { return _mm512_rcp14_ps(a); }
  static reg scale_pow2(reg p, reg shifted) {
    return _mm512_castsi512_ps(_mm512_add_epi32(
        _mm512_castps_si512(p), _mm512_slli_epi32(_mm512_castps_si512(shifted), 23)));
  }
};
using Vec = V16;
#else
using Vec = V8;
#endif

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
