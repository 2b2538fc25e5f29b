// Merging partial moments (mean, M2, count) in a fixed order, shared by group_norm's
// forward and backward launchers so both find bit-identical group statistics.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include "cpu/cpu_kernels.h"

namespace lddm {
namespace cpu {

// Moments of the union of parts[0], parts[stride], ... (count of them): the mean
// first, then M2 = sum of the parts' M2 + sum n_i (mean_i - mean)^2. One division,
// and the order of the parts is fixed, so results do not depend on the thread count.
inline Moments merge(const Moments* parts, int64_t count, int64_t stride) {
  double n = 0.0, weighted = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    n += parts[i * stride].count;
    weighted += parts[i * stride].count * parts[i * stride].mean;
  }
  if (n == 0.0) return Moments{0.0, 0.0, 0.0};
  const double mean = weighted / n;
  double m2 = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const Moments& m = parts[i * stride];
    const double d = m.mean - mean;
    m2 += m.m2 + m.count * d * d;
  }
  return Moments{mean, m2, n};
}

// Rows shorter than this are taken a group at a time in the contiguous (NCS) layout: a
// group's cg rows of S values are cg * S adjacent values, and per-row kernel calls cost
// more than their work (4-D [14, 512, 2, 2], the inner blocks of diffusers' UNets:
// 330 us a call per row against eager's 49).
inline constexpr int64_t kShortRow = 128;

// Moments of one NCS group, cg rows of S values from x (rows: scratch for cg), in the
// order the forward and the backward both use: one pass over the whole group for short
// rows, else per row, merged in order.
template <typename T>
Moments group_moments(const Kernels<T>& k, const T* x, int64_t cg, int64_t S, Moments* rows) {
  if (S < kShortRow) return k.row_moments(x, cg * S);
  for (int64_t i = 0; i < cg; ++i) rows[i] = k.row_moments(x + i * S, S);
  return merge(rows, cg, 1);
}

// A group's mean and 1 / sqrt(var + eps) in double: what the forward normalises with,
// what group_norm_stats saves and what the backward recomputes when it is not saved.
inline std::pair<double, double> mean_rstd(const Moments& m, double eps) {
  const double var = m.count > 0.0 ? m.m2 / m.count : 0.0;
  return {m.mean, 1.0 / std::sqrt(var + eps)};
}

// Moments of a chunk's channels from chunk_moments' per-channel shift, s1 and s2
// (`len` values each): mean = shift + s1 / len, M2 = s2 - s1^2 / len.
inline Moments chunk_channel_moments(float shift, float s1, float s2, int64_t len) {
  const double inv_len = 1.0 / double(len), d1 = s1, d2 = s2;
  const double m2 = d2 - d1 * d1 * inv_len;
  return Moments{double(shift) + d1 * inv_len, m2 > 0.0 ? m2 : 0.0, double(len)};
}

// Positions per channels-last chunk: about 64 KiB of input, small enough that a
// second pass over the chunk reads it from cache.
inline int64_t nsc_chunk_positions(int64_t S, int64_t C) {
  const int64_t c = 16384 / (C > 0 ? C : 1);
  return c < 1 ? 1 : (c < S ? c : S);
}

}  // namespace cpu
}  // namespace lddm
