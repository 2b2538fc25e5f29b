// What every CPU kernel family shares: bf16/float loads and stores, exp and SiLU
// written so the compiler vectorizes them, and the choice of instruction set. Included
// (through the family headers) once per instruction set by isa_<name>.cpp, which names
// the namespace (LDDM_ISA_NAMESPACE), so each build has its own symbols. Portable loops
// are written so the compiler vectorizes them without -ffast-math: fixed-width partial
// accumulators, no cross-lane dependencies. The AVX2 and AVX-512 builds (LDDM_SIMD) take
// the hot loops through the intrinsics of vector_kernels.h and leave tails and odd sizes
// to the portable code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu/cpu_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include "cpu/vector_kernels.h"
#define LDDM_SIMD 1
#else
#define LDDM_SIMD 0
#endif

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

#if !LDDM_SIMD
// Pixels per tile of attention_lanes (the vector builds: one vector, vector_kernels.h).
inline constexpr int64_t kLanes = 8;
#endif

// f(std::true_type{}) or f(std::false_type{}): a runtime flag as a compile-time one, so
// a loop's branches on it compile away (nest for several flags).
template <typename F>
static inline void with_flag(bool flag, F&& f) {
  if (flag)
    f(std::true_type{});
  else
    f(std::false_type{});
}

static inline float load(float v) { return v; }
static inline float load(bf16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
static inline void store(float* p, float v) { *p = v; }
static inline void store(bf16_t* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  // Round to nearest even; keep NaN a (quiet) NaN.
  u = (v != v) ? 0x7FC00000u : u + 0x7FFFu + ((u >> 16) & 1u);
  *p = bf16_t(u >> 16);
}

// exp(x) for x in [-87, 88] as 2^n * p(r) with |r| <= ln2/2: a degree-6 Taylor
// polynomial, relative error below 2e-7. Written with float ops the compiler can
// vectorize (std::exp stays a scalar libm call). No range checks: callers clamp.
static inline float exp_in_range(float x) {
  // Adding 1.5 * 2^23 rounds to the nearest integer in the float's low bits.
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = (int32_t(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &e, sizeof(two_n));
  return p * two_n;
}

static inline float exp_approx(float x) {
  return exp_in_range(x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x));
}

// silu(v) = v * sigmoid(v) with sigmoid from e = exp(-|v|), which never overflows.
// |v| is capped at 87 on its bit pattern (an integer min: vectorizes without the
// float selects and second division a clamped exp costs); a NaN v stays NaN through
// the final product. Below -87 the result is v * 1.6e-38 instead of ~v * exp(v):
// under 1e-30 for any |v| < 1e8, and -inf stays -inf (non-finite either way).
static inline float silu(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits &= 0x7FFFFFFFu;
  bits = bits < 0x42AE0000u ? bits : 0x42AE0000u;  // 0x42AE0000 = 87.0f
  float a;
  std::memcpy(&a, &bits, sizeof(a));
  const float e = exp_in_range(-a);
  const float r = 1.0f / (1.0f + e);
  return v * (v >= 0.0f ? r : e * r);
}

// sigmoid(v) from e = exp(-|v|) with |v| capped at 87, as in silu (never overflows).
static inline float sigmoid(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits &= 0x7FFFFFFFu;
  bits = bits < 0x42AE0000u ? bits : 0x42AE0000u;
  float a;
  std::memcpy(&a, &bits, sizeof(a));
  const float e = exp_in_range(-a);
  const float r = 1.0f / (1.0f + e);
  return v >= 0.0f ? r : e * r;
}

// d silu(v) / dv = s (1 + v (1 - s)) with s = sigmoid(v).
static inline float silu_grad(float v) {
  const float s = sigmoid(v);
  return s * (1.0f + v * (1.0f - s));
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
