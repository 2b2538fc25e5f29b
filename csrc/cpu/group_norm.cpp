// CPU group_norm: statistics and the fused affine/FiLM/SiLU epilogue, parallel over
// independent work with at::parallel_for, vector loops in cpu_kernels_impl.h.
//
// scale/shift are per-sample FiLM [N, C] (folded into per-channel coefficients) or a
// spatial modulation broadcastable to x, e.g. SPADE's [N, C, 1, H, W] (folded into
// per-element coefficients of one period: H * W positions reused by every frame).
//
// Layouts: NCS (contiguous; a group is Cg rows of S values, processed by one task
// while it is in cache) and NSC (channels_last; split into chunks of positions whose
// per-group moments are combined in a fixed order, so results are deterministic).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/dispatch.h"
#include "cpu/moments.h"
#include "group_norm_args.h"
#include "ops.h"

namespace lddm {
namespace {

using cpu::merge;
using cpu::Moments;

// Per-channel coefficients of y = a * (x - m) + b for sample n, group g: m is the group
// mean rounded to float and b absorbs the rounding error, so x - m stays exact.
struct Coefficients {
  const float* weight;  // [C] or null
  const float* bias;    // [C] or null
  const float* scale;   // [N, C] or null
  const float* shift;   // [N, C] or null
  int64_t C;
  double eps;

  double* stats;  // [N, G, 2]: each group's mean and rstd, written for the backward; or null

  void fill(const Moments& moments, int64_t n, int64_t c0, int64_t cg, float* a, float* mean,
            float* b) const {
    const auto [mean_d, rstd] = cpu::mean_rstd(moments, eps);
    if (stats != nullptr) {
      double* st = stats + 2 * (n * (C / cg) + c0 / cg);
      st[0] = mean_d;
      st[1] = rstd;
    }
    const float mean_f = float(mean_d);
    const double mean_lo = mean_d - double(mean_f);
    for (int64_t i = 0; i < cg; ++i) {
      const int64_t c = c0 + i;
      const double w = weight ? weight[c] : 1.0;
      const double bi = bias ? bias[c] : 0.0;
      const double s = scale ? 1.0 + scale[n * C + c] : 1.0;
      const double sh = shift ? shift[n * C + c] : 0.0;
      a[i] = float(rstd * w * s);
      mean[i] = mean_f;
      b[i] = float((bi - mean_lo * rstd * w) * s + sh);
    }
  }
};

// A spatial scale/shift (see spatial_modulation in group_norm_args.h): one period of
// `period` positions per sample, as float32 [N, C, period] (NCS) or [N, period, C]
// (NSC); either pointer may be null. Folded into per-element coefficients
// A = a * (1 + scale), B = b * (1 + scale) + shift, so the output pass stays one
// multiply-add per element: y = act(A * (x - m) + B).
struct Spatial {
  const float* scale;
  const float* shift;
  int64_t period;

  bool active() const { return scale != nullptr || shift != nullptr; }

  // A[i] = a[i % width] * (1 + scale[i]) and B likewise, for rows x width values
  // starting at element `at` of the modulation.
  void fold(int64_t at, int64_t rows, int64_t width, const float* __restrict__ a,
            const float* __restrict__ b, float* __restrict__ A, float* __restrict__ B) const {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = at + r * width;
      float* __restrict__ Ar = A + r * width;
      float* __restrict__ Br = B + r * width;
      for (int64_t i = 0; i < width; ++i) {
        const float s = scale ? 1.0f + scale[o + i] : 1.0f;
        Ar[i] = a[i] * s;
        Br[i] = b[i] * s + (shift ? shift[o + i] : 0.0f);
      }
    }
  }
};

template <typename scalar_t>
void run_ncs(const at::Tensor& x, at::Tensor& y, int64_t G, const Coefficients& coef,
             const Spatial& spatial, bool silu) {
  using T = typename cpu::StorageOf<scalar_t>::type;
  const auto& k = cpu::select_kernels<T>();
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(N * C, 1);
  const int64_t cg = C / G;
  const T* xp = cpu::storage(x.const_data_ptr<scalar_t>());
  T* yp = cpu::storage(y.mutable_data_ptr<scalar_t>());
  const int64_t P = spatial.period;
  // Short rows without a spatial modulation: the group's block in one call, with
  // per-element coefficients (each channel's repeated over its S values).
  const bool whole_groups = S < cpu::kShortRow && !spatial.active();
  at::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> a(cg), mean(cg), b(cg);
    std::vector<float> A(spatial.active() ? P : (whole_groups ? cg * S : 0)), B(A.size());
    std::vector<Moments> rows(cg);
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / G, c0 = (ng % G) * cg;
      const T* xg = xp + (n * C + c0) * S;
      coef.fill(cpu::group_moments(k, xg, cg, S, rows.data()), n, c0, cg, a.data(),
                mean.data(), b.data());
      if (whole_groups) {
        for (int64_t i = 0; i < cg; ++i) {
          std::fill(A.begin() + i * S, A.begin() + (i + 1) * S, a[i]);
          std::fill(B.begin() + i * S, B.begin() + (i + 1) * S, b[i]);
        }
        // mean is the group's, the same for its channels.
        k.affine_row_varying(xg, yp + (n * C + c0) * S, cg * S, A.data(), mean[0], B.data(),
                             silu);
        continue;
      }
      for (int64_t i = 0; i < cg; ++i) {
        const T* xr = xg + i * S;
        T* yr = yp + (n * C + c0 + i) * S;
        if (!spatial.active()) {
          k.affine_row(xr, yr, S, a[i], mean[i], b[i], silu);
          continue;
        }
        // One period of this channel's coefficients, reused by every frame (S / P).
        for (int64_t p = 0; p < P; ++p) {
          const float s = spatial.scale ? 1.0f + spatial.scale[(n * C + c0 + i) * P + p] : 1.0f;
          A[p] = a[i] * s;
          B[p] = b[i] * s + (spatial.shift ? spatial.shift[(n * C + c0 + i) * P + p] : 0.0f);
        }
        for (int64_t t0 = 0; t0 < S; t0 += P)
          k.affine_row_varying(xr + t0, yr + t0, P, A.data(), mean[i], B.data(), silu);
      }
    }
  });
}

// Input bytes per thread whose statistics and output are computed in one round (whole
// samples, at least one), so the output pass reads x back from the cache the
// statistics pass brought it into: 256 KiB of x and its output fit the L2 of current
// x86 cores. Both passes split a round's chunks over the threads the same way.
constexpr int64_t kRoundBytesPerThread = 256 << 10;

template <typename scalar_t>
void run_nsc(const at::Tensor& x, at::Tensor& y, int64_t G, const Coefficients& coef,
             const Spatial& spatial, bool silu) {
  using T = typename cpu::StorageOf<scalar_t>::type;
  const auto& k = cpu::select_kernels<T>();
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(N * C, 1);
  const int64_t cg = C / G;
  const int64_t chunk = cpu::nsc_chunk_positions(S, C);
  const int64_t chunks = (S + chunk - 1) / chunk;
  const int64_t per_round = std::clamp<int64_t>(
      kRoundBytesPerThread * at::get_num_threads() /
          std::max<int64_t>(S * C * int64_t(sizeof(T)), 1),
      1, N);
  const T* xp = cpu::storage(x.const_data_ptr<scalar_t>());
  T* yp = cpu::storage(y.mutable_data_ptr<scalar_t>());

  std::vector<Moments> partial(per_round * chunks * G);  // [sample, chunk, group]
  std::vector<float> a(N * C), mean(N * C), b(N * C);
  // Spatial form: per-(position, channel) coefficients of one period, per sample of a
  // round: [per_round, P, C].
  const int64_t P = spatial.period;
  std::vector<float> A(spatial.active() ? per_round * P * C : 0), B(A.size());
  for (int64_t n0 = 0; n0 < N; n0 += per_round) {
    const int64_t items = (std::min(N, n0 + per_round) - n0) * chunks;
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> shift(C), s1(C), s2(C);
      std::vector<Moments> channels(C);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = n0 + item / chunks, p0 = (item % chunks) * chunk;
        const int64_t len = std::min(chunk, S - p0);
        k.chunk_moments(xp + (n * S + p0) * C, len, C, shift.data(), s1.data(), s2.data());
        for (int64_t c = 0; c < C; ++c)
          channels[c] = cpu::chunk_channel_moments(shift[c], s1[c], s2[c], len);
        for (int64_t g = 0; g < G; ++g)
          partial[item * G + g] = merge(channels.data() + g * cg, cg, 1);
      }
    });
    for (int64_t n = n0; n < std::min(N, n0 + per_round); ++n)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t at = n * C + g * cg;
        coef.fill(merge(partial.data() + (n - n0) * chunks * G + g, chunks, G), n, g * cg, cg,
                  a.data() + at, mean.data() + at, b.data() + at);
      }
    if (spatial.active()) {
      const int64_t samples = std::min(N, n0 + per_round) - n0;
      at::parallel_for(0, samples * P, 64, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end;) {
          const int64_t n = n0 + r / P, p = r % P, rows = std::min(end - r, P - p);
          spatial.fold((n * P + p) * C, rows, C, a.data() + n * C, b.data() + n * C,
                       A.data() + r * C, B.data() + r * C);
          r += rows;
        }
      });
    }
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = n0 + item / chunks, p0 = (item % chunks) * chunk;
        const int64_t len = std::min(chunk, S - p0);
        if (!spatial.active()) {
          const int64_t off = (n * S + p0) * C;
          k.affine_chunk(xp + off, yp + off, len, C, a.data() + n * C, mean.data() + n * C,
                         b.data() + n * C, 0, silu);
          continue;
        }
        // Runs of positions that do not wrap around the modulation's period.
        for (int64_t p = p0; p < p0 + len;) {
          const int64_t q = p % P, run = std::min(p0 + len - p, P - q);
          const int64_t off = (n * S + p) * C, at = ((n - n0) * P + q) * C;
          k.affine_chunk(xp + off, yp + off, run, C, A.data() + at, mean.data() + n * C,
                         B.data() + at, C, silu);
          p += run;
        }
      }
    });
  }
}

// group_norm_cpu's y and, with_stats, each group's mean and rstd as float64 [N, G, 2]
// (an undefined tensor without).
std::tuple<at::Tensor, at::Tensor> group_norm_impl(
    const at::Tensor& x_in, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu, bool with_stats) {
  LDDM_CHECK_DEVICE(x_in, at::kCPU, "x");
  check_group_norm_args(x_in, num_groups, weight, bias, scale, shift);
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16,
                    "x must be float32 or bfloat16 for the cpp backend, got ",
                    x_in.scalar_type());
  const int64_t C = x_in.size(1);
  auto [x, y, nsc] = group_norm_io(x_in);
  poison_if_requested(y);
  // Zeros where nothing is normalised (an empty x writes no statistics).
  at::Tensor stats =
      with_stats ? at::zeros({x.size(0), num_groups, 2}, x.options().dtype(at::kDouble))
                 : at::Tensor();
  if (x.numel() == 0) return {y, stats};

  // FiLM scale/shift fold into the per-channel coefficients; a spatial one (or both,
  // when either is spatial) into per-element ones, materialised in x's inner order.
  const GroupNormParams p(x, nsc, weight, bias, scale, shift);
  const Coefficients coef{float_ptr(p.w), float_ptr(p.b), float_ptr(p.sc), float_ptr(p.sh), C,
                          eps, with_stats ? stats.mutable_data_ptr<double>() : nullptr};
  const Spatial spatial{float_ptr(p.sc_sp), float_ptr(p.sh_sp), p.period};
  if (x.scalar_type() == at::kFloat) {
    nsc ? run_nsc<float>(x, y, num_groups, coef, spatial, silu)
        : run_ncs<float>(x, y, num_groups, coef, spatial, silu);
  } else {
    nsc ? run_nsc<c10::BFloat16>(x, y, num_groups, coef, spatial, silu)
        : run_ncs<c10::BFloat16>(x, y, num_groups, coef, spatial, silu);
  }
  return {y, stats};
}

}  // namespace

at::Tensor group_norm_cpu(const at::Tensor& x, int64_t num_groups,
                          const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps,
                          const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& shift, bool silu) {
  return std::get<0>(
      group_norm_impl(x, num_groups, weight, bias, eps, scale, shift, silu, false));
}

std::tuple<at::Tensor, at::Tensor> group_norm_stats_cpu(
    const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu) {
  return group_norm_impl(x, num_groups, weight, bias, eps, scale, shift, silu, true);
}

}  // namespace lddm
