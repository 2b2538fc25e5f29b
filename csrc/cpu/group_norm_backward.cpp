// CPU group_norm backward: gradients of x, weight, bias, scale and shift of the fused
// GroupNorm + affine + FiLM/spatial modulation + SiLU, from the output gradient.
//
// The group statistics come from the forward (group_norm_stats, the training call's
// op: [N, G, 2] doubles, which saves a read of x) or are recomputed from x with the
// forward's code and merge order (bit-identical). Then, per sample and group, pass 1
// sums the per-channel terms and pass 2 writes dx (group_norm_backward_kernels.h).
//
// Layouts as in the forward: NCS (contiguous; one task per (n, group) does its
// statistics and both passes while the group is in cache) and NSC (channels_last;
// chunks of positions, partial sums combined over chunks in a fixed order, so results
// are deterministic). Other strides get one contiguous copy. grad_y is brought into
// x's layout. Pass 1 keeps w gu per element for pass 2, in a float dx itself.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu/dispatch.h"
#include "cpu/moments.h"
#include "group_norm_args.h"
#include "layout.h"
#include "ops.h"

namespace lddm {
namespace {

using cpu::Moments;

// Per (n, group): the float mean m and 1 / std r the kernels use, and the offset
// `off` = (float(mean) - mean) r that makes xhat exact: xhat = (x - m) r + off. It is
// folded into the bias the kernels see and into the sums afterwards, so large-mean
// inputs keep their precision (as the forward's coefficients do).
struct GroupStats {
  std::vector<float> m, r, off;  // [N * G]

  GroupStats(int64_t n) : m(n), r(n), off(n) {}

  void set(int64_t i, double mean, double rstd) {
    m[i] = float(mean);
    r[i] = float(rstd);
    off[i] = float((double(m[i]) - mean) * rstd);
  }
  void set(int64_t i, const std::pair<double, double>& mean_rstd) {
    set(i, mean_rstd.first, mean_rstd.second);
  }
};

// What both layouts share: parameters as float32 and the outputs of pass 1.
struct Params {
  const float* w;  // [C]
  const float* b;  // [C]
  // FiLM: s = 1 + scale, h = shift per (n, c) ([N, C]); spatial: one period per sample,
  // [N, C, P] (NCS) or [N, P, C] (NSC).
  const float* s;
  const float* h;
  bool spatial;
  int64_t period;
  float* gs;  // spatial only: gv * u and gv per element, in x's memory order
  float* gh;
  // w gu per element, in x's memory order, from pass 1 to pass 2: dx itself for float
  // outputs, a float buffer for bf16 ones (whose 8 bits would round it) in NSC, null in
  // NCS (each task keeps its group's in scratch).
  float* keep;
  bool silu;
};

// Sums [N, C, 4] in double: gv, gv xhat, gu, gu xhat (xhat exact, with `off`).
using Sums = std::vector<double>;

// c1 + off c2 and c2 of a group (see the kernels header): the means over the group
// of w gu and w gu xhat, c1 adjusted for the kernels' xhat (without `off`).
std::pair<float, float> group_constants(const double* sums, const float* w, int64_t cg,
                                        double count, float off) {
  double c1 = 0.0, c2 = 0.0;
  for (int64_t i = 0; i < cg; ++i) {
    c1 += double(w[i]) * sums[4 * i + 2];
    c2 += double(w[i]) * sums[4 * i + 3];
  }
  c1 /= count;
  c2 /= count;
  return {float(c1 + double(off) * c2), float(c2)};
}

// A FiLM channel's gu sums from its gv sums (the kernels leave them: gu = s gv with s
// constant over the channel).
void film_gu_sums(double* sums, float s) {
  sums[2] = double(s) * sums[0];
  sums[3] = double(s) * sums[1];
}

// Adds `off` to xhat in a channel's sums: sum g (xhat + off) = sum g xhat + off sum g.
void correct_sums(double* s, float off) {
  s[1] += double(off) * s[0];
  s[3] += double(off) * s[2];
}

template <typename scalar_t>
void run_ncs(const at::Tensor& x, const at::Tensor& gy, at::Tensor& gx, int64_t G, double eps,
             const double* saved, const Params& p, Sums& sums) {
  using T = typename cpu::StorageOf<scalar_t>::type;
  const auto& k = cpu::select_kernels<T>();
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(N * C, 1);
  const int64_t cg = C / G, P = p.period;
  const T* xp = cpu::storage(x.const_data_ptr<scalar_t>());
  const T* dyp = cpu::storage(gy.const_data_ptr<scalar_t>());
  T* dxp = cpu::storage(gx.mutable_data_ptr<scalar_t>());
  at::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<Moments> rows(cg);
    GroupStats st(1);
    // bf16 outputs (p.keep null): the group's w gu in scratch that stays in cache, as
    // both passes over the group run back to back here.
    std::vector<float> scratch(p.keep != nullptr ? 0 : cg * S);
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / G, c0 = (ng % G) * cg;
      const int64_t row0 = n * C + c0;  // the group's first row
      if (saved != nullptr) {
        st.set(0, saved[2 * ng], saved[2 * ng + 1]);
      } else {
        st.set(0, cpu::mean_rstd(cpu::group_moments(k, xp + row0 * S, cg, S, rows.data()), eps));
      }
      const float m = st.m[0], r = st.r[0], off = st.off[0];
      double* gsum = sums.data() + 4 * row0;
      float* keep = p.keep != nullptr ? p.keep + row0 * S : scratch.data();  // [cg, S]
      for (int64_t i = 0; i < cg; ++i) {
        const int64_t row = row0 + i, c = c0 + i;
        const float beff = p.b[c] + p.w[c] * off;  // u with the exact xhat
        double* cs = gsum + 4 * i;
        if (!p.spatial) {
          k.gn_grad_row_sums(xp + row * S, dyp + row * S, S, m, r, p.w[c], beff, p.s + row,
                             p.h + row, false, p.silu, nullptr, nullptr, keep + i * S, cs);
          film_gu_sums(cs, p.s[row]);
        } else {
          // One period of the channel's modulation, reused by every frame (S / P).
          for (int64_t t0 = 0; t0 < S; t0 += P)
            k.gn_grad_row_sums(xp + row * S + t0, dyp + row * S + t0, P, m, r, p.w[c], beff,
                               p.s + row * P, p.h + row * P, true, p.silu, p.gs + row * S + t0,
                               p.gh + row * S + t0, keep + i * S + t0, cs);
        }
        correct_sums(cs, off);
      }
      const auto [c1, c2] = group_constants(gsum, p.w + c0, cg, double(cg * S), off);
      for (int64_t i = 0; i < cg; ++i)
        k.gn_grad_row_dx(xp + (row0 + i) * S, keep + i * S, dxp + (row0 + i) * S, S, m, r, c1,
                         c2);
    }
  });
}

template <typename scalar_t>
void run_nsc(const at::Tensor& x, const at::Tensor& gy, at::Tensor& gx, int64_t G, double eps,
             const double* saved, const Params& p, Sums& sums) {
  using T = typename cpu::StorageOf<scalar_t>::type;
  const auto& k = cpu::select_kernels<T>();
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(N * C, 1);
  const int64_t cg = C / G, P = p.period;
  const int64_t chunk = cpu::nsc_chunk_positions(S, C);
  const int64_t chunks = (S + chunk - 1) / chunk, items = N * chunks;
  const T* xp = cpu::storage(x.const_data_ptr<scalar_t>());
  const T* dyp = cpu::storage(gy.const_data_ptr<scalar_t>());
  T* dxp = cpu::storage(gx.mutable_data_ptr<scalar_t>());
  float* keep = p.keep;

  GroupStats st(N * G);
  if (saved != nullptr) {
    for (int64_t ng = 0; ng < N * G; ++ng) st.set(ng, saved[2 * ng], saved[2 * ng + 1]);
  } else {
    // Per chunk and group, merged over chunks in order (as the forward).
    std::vector<Moments> partial(items * G);
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> shift(C), s1(C), s2(C);
      std::vector<Moments> channels(C);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / chunks, p0 = (item % chunks) * chunk;
        const int64_t len = std::min(chunk, S - p0);
        k.chunk_moments(xp + (n * S + p0) * C, len, C, shift.data(), s1.data(), s2.data());
        for (int64_t c = 0; c < C; ++c)
          channels[c] = cpu::chunk_channel_moments(shift[c], s1[c], s2[c], len);
        for (int64_t g = 0; g < G; ++g)
          partial[item * G + g] = cpu::merge(channels.data() + g * cg, cg, 1);
      }
    });
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < G; ++g)
        st.set(n * G + g,
               cpu::mean_rstd(cpu::merge(partial.data() + n * chunks * G + g, chunks, G), eps));
  }
  // Per (n, c) copies of the group values, as the chunk kernels take them.
  std::vector<float> m(N * C), r(N * C), beff(N * C), c1(N * C), c2(N * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t ng = n * G + c / cg;
      m[n * C + c] = st.m[ng];
      r[n * C + c] = st.r[ng];
      beff[n * C + c] = p.b[c] + p.w[c] * st.off[ng];
    }

  // Calls f(x offset, s/h row, sh_step, gs/gh offset, run) for runs of positions of the
  // chunk that do not wrap the spatial modulation's period (the whole chunk for FiLM).
  const auto for_runs = [&](int64_t n, int64_t p0, int64_t len, auto&& f) {
    if (!p.spatial) return f((n * S + p0) * C, n * C, int64_t(0), len);
    for (int64_t q0 = p0; q0 < p0 + len;) {
      const int64_t q = q0 % P, run = std::min(p0 + len - q0, P - q);
      f((n * S + q0) * C, (n * P + q) * C, C, run);
      q0 += run;
    }
  };

  std::vector<float> part(items * 4 * C);  // [item, 4, C]
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / chunks, p0 = (item % chunks) * chunk;
      float* acc = part.data() + item * 4 * C;
      std::fill(acc, acc + 4 * C, 0.0f);
      const int64_t len = std::min(chunk, S - p0);
      for_runs(n, p0, len, [&](int64_t xo, int64_t so, int64_t step, int64_t run) {
        k.gn_grad_chunk_sums(xp + xo, dyp + xo, run, C, m.data() + n * C, r.data() + n * C, p.w,
                             beff.data() + n * C, p.s + so, p.h + so, step, p.silu,
                             p.spatial ? p.gs + xo : nullptr, p.spatial ? p.gh + xo : nullptr,
                             keep + xo, acc);
      });
    }
  });
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double* cs = sums.data() + 4 * (n * C + c);
      for (int64_t j = 0; j < 4; ++j) {
        double total = 0.0;
        for (int64_t ch = 0; ch < chunks; ++ch)
          total += part[((n * chunks + ch) * 4 + j) * C + c];
        cs[j] = total;
      }
      if (!p.spatial) film_gu_sums(cs, p.s[n * C + c]);
      correct_sums(cs, st.off[n * G + c / cg]);
    }
    for (int64_t g = 0; g < G; ++g) {
      const float off = st.off[n * G + g];
      const auto [a, b] = group_constants(sums.data() + 4 * (n * C + g * cg), p.w + g * cg, cg,
                                          double(cg * S), off);
      std::fill(c1.begin() + n * C + g * cg, c1.begin() + n * C + (g + 1) * cg, a);
      std::fill(c2.begin() + n * C + g * cg, c2.begin() + n * C + (g + 1) * cg, b);
    }
  }
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / chunks, p0 = (item % chunks) * chunk;
      const int64_t len = std::min(chunk, S - p0);
      const int64_t xo = (n * S + p0) * C;
      k.gn_grad_chunk_dx(xp + xo, keep + xo, dxp + xo, len, C, m.data() + n * C,
                         r.data() + n * C, c1.data() + n * C, c2.data() + n * C);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, int64_t num_groups,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, bool silu,
    const std::optional<at::Tensor>& stats) {
  LDDM_CHECK_DEVICE(x_in, at::kCPU, "x");
  check_group_norm_args(x_in, num_groups, weight, bias, scale, shift);
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16,
                    "x must be float32 or bfloat16 for the cpp backend, got ",
                    x_in.scalar_type());
  check_group_norm_backward_args(grad_y, x_in, num_groups, stats);
  const int64_t N = x_in.size(0), C = x_in.size(1);
  const at::Tensor saved = stats ? stats->contiguous() : at::Tensor();
  const double* saved_p = stats ? saved.const_data_ptr<double>() : nullptr;
  auto [x, gx, nsc] = group_norm_io(x_in);
  poison_if_requested(gx);
  const at::MemoryFormat fmt = output_format(x_in);  // x's and gx's (group_norm_io)
  const at::Tensor gy = grad_y.to(x.scalar_type()).contiguous(fmt);
  const auto f32 = x.options().dtype(at::kFloat);

  const at::Tensor w = weight ? weight->to(at::kFloat).contiguous() : at::ones({C}, f32);
  const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::zeros({C}, f32);
  const bool spatial = has_spatial_modulation(x, scale, shift);
  const int64_t period = spatial ? modulation_period(x, scale, shift) : 0;
  // s = 1 + scale and h = shift, per (n, c) or one period per sample in x's inner order.
  const auto modulation = [&](const std::optional<at::Tensor>& t, double fill, double add) {
    if (!t) {
      const auto shape = spatial ? (nsc ? std::vector<int64_t>{N, period, C}
                                        : std::vector<int64_t>{N, C, period})
                                 : std::vector<int64_t>{N, C};
      return at::full(shape, fill, f32);
    }
    at::Tensor m = spatial ? spatial_modulation(x, *t, period, nsc) : t->to(at::kFloat);
    return (add != 0.0 ? m + add : m).contiguous();
  };
  const at::Tensor s = modulation(scale, 1.0, 1.0), h = modulation(shift, 0.0, 0.0);
  at::Tensor gs_el, gh_el;  // per-element grads of a spatial scale / shift, x's layout
  if (spatial) {
    gs_el = at::empty(x.sizes(), f32.memory_format(fmt));
    gh_el = at::empty(x.sizes(), f32.memory_format(fmt));
  }
  // Pass 1's w gu: a float dx itself; for bf16 outputs a float buffer where channels are
  // innermost (NSC: pass 2 follows pass 1 over the whole tensor), else per-task scratch.
  at::Tensor keep_buf;
  if (x.scalar_type() != at::kFloat && nsc)
    keep_buf = at::empty(x.sizes(), f32.memory_format(fmt));
  float* keep = x.scalar_type() == at::kFloat
                    ? gx.mutable_data_ptr<float>()
                    : (keep_buf.defined() ? keep_buf.mutable_data_ptr<float>() : nullptr);
  const Params p{w.const_data_ptr<float>(),
                 b.const_data_ptr<float>(),
                 s.const_data_ptr<float>(),
                 h.const_data_ptr<float>(),
                 spatial,
                 period,
                 spatial ? gs_el.mutable_data_ptr<float>() : nullptr,
                 spatial ? gh_el.mutable_data_ptr<float>() : nullptr,
                 keep,
                 silu};
  Sums sums(N * C * 4, 0.0);
  if (x.numel() > 0) {
    if (x.scalar_type() == at::kFloat)
      nsc ? run_nsc<float>(x, gy, gx, num_groups, eps, saved_p, p, sums)
          : run_ncs<float>(x, gy, gx, num_groups, eps, saved_p, p, sums);
    else
      nsc ? run_nsc<c10::BFloat16>(x, gy, gx, num_groups, eps, saved_p, p, sums)
          : run_ncs<c10::BFloat16>(x, gy, gx, num_groups, eps, saved_p, p, sums);
  }
  // [N, C, 4] -> weight and bias grads (summed over the batch) and the FiLM grads, in
  // plain loops: these are [C] and [N, C], where a dozen small aten ops cost more than
  // the sums themselves at the decoder's shapes.
  at::Tensor gw = at::empty({C}, f32), gb = at::empty({C}, f32);
  at::Tensor film_gs = at::empty({N, C}, f32), film_gh = at::empty({N, C}, f32);
  float* pgw = gw.mutable_data_ptr<float>();
  float* pgb = gb.mutable_data_ptr<float>();
  float* pgs = film_gs.mutable_data_ptr<float>();
  float* pgh = film_gh.mutable_data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    double aw = 0.0, ab = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      aw += sums[4 * (n * C + c) + 3];
      ab += sums[4 * (n * C + c) + 2];
    }
    pgw[c] = float(aw);
    pgb[c] = float(ab);
  }
  for (int64_t i = 0; i < N * C; ++i) {
    // sum gv u = w sum gv xhat + b sum gv, with FiLM constant over the (n, c) row.
    const double* cs = sums.data() + 4 * i;
    pgs[i] = float(cs[1] * double(p.w[i % C]) + cs[0] * double(p.b[i % C]));
    pgh[i] = float(cs[0]);
  }
  return group_norm_grads(gx, x, gw, gb, film_gs, film_gh, gs_el, gh_el, weight, bias, scale,
                          shift);
}

}  // namespace lddm
