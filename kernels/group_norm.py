"""GroupNorm + affine + FiLM + SiLU for 4-D and 5-D tensors, in two Triton launches.

``y = act(((x - mean_g) * rstd_g * weight + bias) * (1 + scale) + shift)`` with scale and
shift per (sample, channel) (FiLM) or per position too (spatial, e.g. SPADE's
``[N, C, 1, H, W]`` broadcast over T).

1. ``_gn_stats_kernel``: one program per (sample, split, group) reads one chunk of its
   group once and writes a partial (mean, M2) in float32. When N * G alone cannot fill
   the GPU, each group is split into several chunks (the split reduction).
2. ``_gn_apply_kernel``: one program per (sample, channel block, spatial strip) combines
   its groups' partials in a fixed order (deterministic: no atomics), folds statistics,
   affine and FiLM into one multiply-add per channel, then reads x once more and writes
   y in x's memory format, with the spatial scale/shift (a multiply-add per element)
   and the SiLU on the way out.

Bytes per element: one read for the statistics, one read + one write for the output
(the floor for a two-pass norm whose input does not fit on chip).

Large means: every group is shifted by its own first element ``k`` before any sum, and
the output is computed as ``(x - k) * a + b``, so x = 1000 + noise loses no more
precision than x = noise. Welford per lane then Chan's pairwise merge keep the
variance safe even when k is an outlier of its group.

Backward (:func:`group_norm_backward`), from the forward's saved (mean, rstd) per group:
with ``u = xhat * weight + bias``, ``v = u * (1 + scale) + shift``, ``gv = dy * act'(v)``
and ``gu = gv * (1 + scale)``,
``dx = rstd * (weight * gu - mean_g(weight * gu) - xhat * mean_g(weight * gu * xhat))``.

3. ``_gn_bwd_sums_kernel``: the apply kernel's tiles; recomputes v and writes per
   (sample, channel, strip) the sums of gv, gv xhat, gu and gu xhat (and, for a spatial
   scale/shift, gv u and gv per element, reduced to the modulation's shape by torch).
   The strips are summed in a fixed order on the host (tiny [N, C] tensors), which
   also gives the weight/bias/FiLM grads and the two group means of dx.
4. ``_gn_bwd_dx_kernel``: the same tiles again, writing dx in x's memory format.

Bytes per element: two reads of x and dy, one write of dx (no extra read of x for the
statistics, which the forward saved).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lddm_fast.layout import memory_format_of

from .utils import (
    MAX_INT32,
    cast_to,
    cdiv,
    check_grid_x,
    device_guard,
    num_sms,
    poison_if_requested,
    pow2_block,
    prune,
)

# A program reading less than this many elements of a group spends more on its
# partial's bookkeeping than on bandwidth: the split stops there.
_MIN_CHUNK = 8192
# Partials per group the apply kernel merges (a [channels, splits] tile per program).
_MAX_SPLIT = 32
# Chunk lengths round up to a multiple of this: chunks start aligned for vector loads.
_CHUNK_ALIGN = 1024
# Elements per apply tile; the channel block cap when channels are innermost; the
# narrowest run of unit-stride elements a tile row may have (a warp's loads stay wide).
_TILE = 4096
_MAX_CHANNEL_BLOCK = 128
_MIN_ROW = 16
# Programs per SM the launches aim for (enough to hide DRAM latency, few enough that
# each program's coefficient setup is amortised).
_PROGRAMS_PER_SM = 4


def _size_class(n: int) -> int:
    """Autotuning key: configs are re-tuned per power-of-two size class, not per shape."""
    return max(n, 1).bit_length()


@triton.autotune(
    configs=[
        # First config: the one the interpreter runs.
        triton.Config({"BLOCK": 1024}, num_warps=4),
        triton.Config({"BLOCK": 2048}, num_warps=8),
        triton.Config({"BLOCK": 4096}, num_warps=8),
        triton.Config({"BLOCK": 1024}, num_warps=8),
    ],
    key=["SIZE_CLASS", "CHANNELS_INNER"],
    prune_configs_by=prune(),
)
@triton.jit
def _gn_stats_kernel(
    x_ptr,  # [N, C, S] (spatial dims collapsed), any dtype, read through strides
    part_ptr,  # [N, G, SPLIT, 2] float32 out: (mean of x - k, M2) per chunk
    stride_xn, stride_xc, stride_xs,
    G, SPLIT, CHUNK, GROUP_SIZE,  # GROUP_SIZE = CG * S elements per group
    SIZE_CLASS,  # autotuning key only
    CG: tl.constexpr,  # channels per group
    CHANNELS_INNER: tl.constexpr,  # False: a group is CG * S elements back to back
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    # Groups vary fastest so programs running together read the same rows of a
    # channels-last tensor (one DRAM pass serves every group's chunk of that row).
    g = pid % G
    split = (pid // G) % SPLIT
    n = pid // (G * SPLIT)
    base = x_ptr + n.to(tl.int64) * stride_xn + (g * CG).to(tl.int64) * stride_xc
    k = tl.load(base).to(tl.float32)
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, GROUP_SIZE)

    cnt = tl.zeros([BLOCK], dtype=tl.float32)
    mean = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(lo, hi, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < hi
        if CHANNELS_INNER:
            # CG is a compile-time constant: // and % become multiply-shifts, and the
            # flat index keeps every lane busy even when CG is not a power of two.
            off = (i // CG) * stride_xs + (i % CG) * stride_xc
        else:
            off = i * stride_xs
        d = tl.load(base + off, mask=mask, other=0.0).to(tl.float32) - k
        cnt += mask.to(tl.float32)
        delta = tl.where(mask, d - mean, 0.0)
        mean += delta / tl.maximum(cnt, 1.0)
        m2 += delta * (d - mean)

    n_chunk = (hi - lo).to(tl.float32)
    chunk_mean = tl.sum(cnt * mean, axis=0) / n_chunk
    dev = mean - chunk_mean
    chunk_m2 = tl.sum(m2, axis=0) + tl.sum(cnt * dev * dev, axis=0)
    out = part_ptr + ((n * G + g) * SPLIT + split).to(tl.int64) * 2
    tl.store(out, chunk_mean)
    tl.store(out + 1, chunk_m2)


# The apply pass and both backward passes tile alike (channel blocks x spatial strips):
# one autotuning rule for the three.
_autotune_tiled = triton.autotune(
    configs=[
        triton.Config({}, num_warps=4),
        triton.Config({}, num_warps=8),
        triton.Config({}, num_warps=16),
    ],
    key=["SIZE_CLASS", "CHANNELS_INNER", "BLOCK_CH", "BLOCK_SP"],
    prune_configs_by=prune(),
)


@_autotune_tiled
@triton.jit
def _gn_apply_kernel(
    x_ptr,  # [N, C, S] input, read through strides
    y_ptr,  # [N, C, S] output, written through strides
    part_ptr,  # [N, G, SPLIT, 2] float32 partials from _gn_stats_kernel
    stats_ptr,  # [N, G, 2] float32 out (STORE_STATS): mean of x - k, rstd
    w_ptr, b_ptr,  # [C] or dummies
    scale_ptr, shift_ptr,  # [N, C, T, Q] modulation (strides may be 0) or dummies
    stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys,
    stride_w, stride_b,
    stride_scale_n, stride_scale_c, stride_scale_t, stride_scale_q,
    stride_shift_n, stride_shift_c, stride_shift_t, stride_shift_q,
    C, S, Q, G, SPLIT, CHUNK, GROUP_SIZE, N_CH_BLOCKS, N_STRIPS, ITERS, eps,
    SIZE_CLASS,  # autotuning key only
    CG: tl.constexpr,
    CHANNELS_INNER: tl.constexpr,  # autotuning key: the tile shape follows the layout
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
    SPATIAL: tl.constexpr,  # scale/shift vary over positions (SPADE), not only (n, c)
    STORE_STATS: tl.constexpr,  # for the backward: it then reads them, not x, once more
    BLOCK_CH: tl.constexpr, BLOCK_SP: tl.constexpr, SPLIT_B: tl.constexpr,
):
    pid = tl.program_id(0)
    ch_block = pid % N_CH_BLOCKS
    strip = (pid // N_CH_BLOCKS) % N_STRIPS
    n = pid // (N_CH_BLOCKS * N_STRIPS)

    ch = ch_block * BLOCK_CH + tl.arange(0, BLOCK_CH)
    ch_ok = ch < C
    g = ch // CG

    # Merge the group's partials (Chan et al.), the same fixed-order tree in every
    # program that reads this group, so the result is bitwise reproducible.
    s = tl.arange(0, SPLIT_B)
    s_ok = s < SPLIT
    cnt = tl.where(s_ok, tl.minimum(CHUNK, GROUP_SIZE - s * CHUNK), 0).to(tl.float32)
    part = part_ptr + ((n * G + g)[:, None] * SPLIT + s[None, :]).to(tl.int64) * 2
    pmask = ch_ok[:, None] & s_ok[None, :]
    p_mean = tl.load(part, mask=pmask, other=0.0)
    p_m2 = tl.load(part + 1, mask=pmask, other=0.0)
    mean = tl.sum(cnt[None, :] * p_mean, axis=1) / GROUP_SIZE
    dev = tl.where(pmask, p_mean - mean[:, None], 0.0)
    m2 = tl.sum(p_m2, axis=1) + tl.sum(cnt[None, :] * dev * dev, axis=1)
    rstd = tl.rsqrt(tl.maximum(m2 / GROUP_SIZE, 0.0) + eps)
    if STORE_STATS:
        if strip == 0:
            # One writer per group: the lane of the group's first channel.
            first = ch_ok & (ch % CG == 0)
            st = stats_ptr + (n * G + g).to(tl.int64) * 2
            tl.store(st, mean, mask=first)
            tl.store(st + 1, rstd, mask=first)

    x_base = x_ptr + n.to(tl.int64) * stride_xn
    k = tl.load(x_base + (g * CG).to(tl.int64) * stride_xc, mask=ch_ok, other=0.0).to(tl.float32)
    # y = (x - k) * a + b folds mean, rstd, affine and FiLM into one FMA per element.
    a = rstd
    if HAS_W:
        a *= tl.load(w_ptr + ch * stride_w, mask=ch_ok, other=0.0).to(tl.float32)
    b = -mean * a
    if HAS_B:
        b += tl.load(b_ptr + ch * stride_b, mask=ch_ok, other=0.0).to(tl.float32)
    scale_rows = scale_ptr + n.to(tl.int64) * stride_scale_n + ch * stride_scale_c
    shift_rows = shift_ptr + n.to(tl.int64) * stride_shift_n + ch * stride_shift_c
    if not SPATIAL:
        if HAS_SCALE:
            film = 1.0 + tl.load(scale_rows, mask=ch_ok, other=0.0).to(tl.float32)
            a *= film
            b *= film
        if HAS_SHIFT:
            b += tl.load(shift_rows, mask=ch_ok, other=0.0).to(tl.float32)

    y_base = y_ptr + n.to(tl.int64) * stride_yn
    x_rows = x_base + ch[:, None] * stride_xc
    y_rows = y_base + ch[:, None] * stride_yc
    for it in range(ITERS):
        sp = (strip * ITERS + it) * BLOCK_SP + tl.arange(0, BLOCK_SP)
        mask = ch_ok[:, None] & (sp < S)[None, :]
        # Masked lanes read k: a finite y there keeps the SiLU's exp from overflowing.
        x = tl.load(x_rows + sp[None, :] * stride_xs, mask=mask, other=k[:, None]).to(tl.float32)
        y = (x - k[:, None]) * a[:, None] + b[:, None]
        if SPATIAL:
            # Position sp is frame sp // Q, pixel sp % Q of the [N, C, T, Q] modulation.
            t = sp // Q
            q = sp - t * Q
            if HAS_SCALE:
                off = t.to(tl.int64) * stride_scale_t + q.to(tl.int64) * stride_scale_q
                y *= 1.0 + tl.load(scale_rows[:, None] + off[None, :], mask=mask, other=0.0).to(
                    tl.float32
                )
            if HAS_SHIFT:
                off = t.to(tl.int64) * stride_shift_t + q.to(tl.int64) * stride_shift_q
                y += tl.load(shift_rows[:, None] + off[None, :], mask=mask, other=0.0).to(
                    tl.float32
                )
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(y_rows + sp[None, :] * stride_ys, cast_to(y, y_ptr.dtype.element_ty), mask=mask)


def _as_3d(t: torch.Tensor) -> torch.Tensor | None:
    """``[N, C, *spatial]`` viewed as ``[N, C, S]`` without a copy, or None when the
    spatial dims do not collapse into one stride."""
    try:
        return t.view(t.shape[0], t.shape[1], -1)
    except RuntimeError:
        return None


def _modulation_4d(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scale/shift (FiLM ``[N, C]`` or spatial, broadcastable to x) as an ``[N, C, T, Q]``
    view (Q = H * W; T = 1 for 4-D x) whose broadcast dims have stride 0; copied (one
    frame at most) only when H and W do not collapse into one stride."""
    n, c = x.shape[:2]
    frames = x.shape[2] if x.dim() == 5 else 1
    if t.dim() == 2:
        return t.view(n, c, 1, 1).expand(n, c, frames, math.prod(x.shape[2:]) // frames)
    e = t.expand(x.shape)
    if e.dim() == 4:
        e = e.unsqueeze(2)
    try:
        return e.view(n, c, frames, -1)
    except RuntimeError:
        if e.stride(2) == 0:  # broadcast over T: materialise one frame
            return e[:, :, :1].contiguous().expand(e.shape).view(n, c, frames, -1)
        return e.contiguous().view(n, c, frames, -1)


def _tiling(
    n: int, c: int, s: int, channels_inner: bool, device: torch.device
) -> tuple[int, int, int, int, int]:
    """Tiles of the elementwise passes (apply, and both backward passes), one program per
    (sample, channel block, strip of ``iters`` spatial tiles).

    Returns:
        ``(block_ch, block_sp, n_ch_blocks, n_strips, iters)``.
    """
    # The unit-stride axis gets the wide side of the tile; the other axis fills it.
    if channels_inner:
        block_ch = pow2_block(c, _MAX_CHANNEL_BLOCK, _MIN_ROW)
        block_sp = pow2_block(s, _TILE // block_ch)
    else:
        block_sp = pow2_block(s, _TILE, _MIN_ROW)
        block_ch = pow2_block(c, _TILE // block_sp)
    n_ch_blocks = cdiv(c, block_ch)
    n_sp_tiles = cdiv(s, block_sp)
    per_strip_target = cdiv(_PROGRAMS_PER_SM * num_sms(device), n * n_ch_blocks)
    iters = cdiv(n_sp_tiles, min(n_sp_tiles, per_strip_target))
    n_strips = cdiv(n_sp_tiles, iters)
    return block_ch, block_sp, n_ch_blocks, n_strips, iters


def _sample_extent(t3: torch.Tensor) -> int:
    """Largest element offset inside one sample of a ``[N, C, S]`` (or ``[N, C, T, Q]``)
    view."""
    sizes, strides = t3.shape[1:], t3.stride()[1:]
    return sum((size - 1) * abs(stride) for size, stride in zip(sizes, strides, strict=True))


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    activation: str | None = None,
    out: torch.Tensor | None = None,
    split: int | None = None,
    stats: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused GroupNorm + affine + FiLM + optional SiLU (see :func:`lddm_fast.ops.group_norm`).

    Args:
        x: ``[N, C, H, W]`` or ``[N, C, T, H, W]``, float32/bfloat16/float16, on a CUDA
            device (or CPU under ``TRITON_INTERPRET=1``). Read through its strides when
            the spatial dims collapse into one stride (contiguous, channels_last(_3d),
            and batch/channel slices of those); any other view is first copied.
        num_groups: G, a divisor of C.
        weight, bias: ``[C]`` or None.
        eps: added to the variance.
        scale, shift: ``[N, C]`` FiLM, or spatial: x's dims broadcastable to x (such as
            SPADE's ``[N, C, 1, H, W]``), any strides; or None.
        activation: None or ``"silu"``.
        out: optional ``[N, C, *spatial]`` tensor of x's dtype to write into (must not
            overlap x); default a new tensor in x's memory format.
        split: programs per group for the statistics; None picks enough to fill the GPU.
        stats: optional ``[N, G, 2]`` float32 tensor that receives each group's (mean of
            ``x - k``, rstd), ``k`` the group's first element: what
            :func:`group_norm_backward` needs.

    Returns:
        ``out``: ``[N, C, *spatial]``, x's dtype, x's memory format when allocated here.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide C={c}")
    if out is None:
        out = torch.empty_like(x, memory_format=memory_format_of(x))
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"out must be {tuple(x.shape)} {x.dtype} on {x.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    elif out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        # The apply pass reads x after other programs may already have written y.
        raise ValueError("out must not share storage with x")
    if stats is not None and (
        stats.shape != (n, num_groups, 2)
        or stats.dtype != torch.float32
        or not stats.is_contiguous()
    ):
        raise ValueError(f"stats must be a contiguous ({n}, {num_groups}, 2) float32 tensor")
    if out.numel() == 0:
        return out

    x3 = _as_3d(x)
    if x3 is None:
        x3 = _as_3d(x.contiguous(memory_format=memory_format_of(x)))
    y3 = _as_3d(out)
    if y3 is None:
        raise ValueError("out's spatial dims must collapse into one stride (any standard layout)")
    for name, t3 in (("x", x3), ("out", y3)):
        if _sample_extent(t3) > MAX_INT32:
            raise ValueError(f"{name}: one sample spans more than 2**31 elements")

    s = x3.shape[2]
    cg = c // num_groups
    group_size = cg * s
    sn, sc, ss = x3.stride()
    channels_inner = not (sc == s * ss and ss > 0)

    if split is None:
        target = _PROGRAMS_PER_SM * num_sms(x.device)
        split = min(cdiv(target, n * num_groups), cdiv(group_size, _MIN_CHUNK), _MAX_SPLIT)
    if split < 1:
        raise ValueError(f"split must be >= 1, got {split}")
    chunk = cdiv(group_size, split)
    if chunk > _CHUNK_ALIGN:
        chunk = cdiv(chunk, _CHUNK_ALIGN) * _CHUNK_ALIGN
    split = cdiv(group_size, chunk)
    part = torch.empty((n, num_groups, split, 2), dtype=torch.float32, device=x.device)

    block_ch, block_sp, n_ch_blocks, n_strips, iters = _tiling(n, c, s, channels_inner, x.device)

    dummy = part  # never read: the HAS_* flags compile the loads out
    w, b = (t if t is not None else dummy for t in (weight, bias))
    spatial = any(t is not None and t.dim() != 2 for t in (scale, shift))
    sc_t, sh_t = (
        _modulation_4d(t, x) if t is not None else dummy.view(1, 1, 1, -1) for t in (scale, shift)
    )
    mod_strides = [*sc_t.stride(), *sh_t.stride()]
    if spatial and max(_sample_extent(sc_t), _sample_extent(sh_t)) > MAX_INT32:
        raise ValueError("scale/shift: one sample spans more than 2**31 elements")
    frames = x.shape[2] if x.dim() == 5 else 1
    with device_guard(x):
        _gn_stats_kernel[check_grid_x(n * split * num_groups, "group_norm statistics")](
            x3, part, sn, sc, ss,
            num_groups, split, chunk, group_size, _size_class(chunk),
            CG=cg, CHANNELS_INNER=channels_inner,
        )
        _gn_apply_kernel[check_grid_x(n * n_ch_blocks * n_strips, "group_norm apply")](
            x3, y3, part, stats if stats is not None else dummy, w, b, sc_t, sh_t,
            sn, sc, ss, *y3.stride(),
            w.stride(0), b.stride(0), *mod_strides,
            c, s, s // frames, num_groups, split, chunk, group_size,
            n_ch_blocks, n_strips, iters, float(eps),
            _size_class(block_ch * block_sp * iters),
            CG=cg, CHANNELS_INNER=channels_inner,
            HAS_W=weight is not None, HAS_B=bias is not None,
            HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
            SILU=activation == "silu", SPATIAL=spatial, STORE_STATS=stats is not None,
            BLOCK_CH=block_ch, BLOCK_SP=block_sp, SPLIT_B=triton.next_power_of_2(split),
        )
    return out


@triton.jit
def _gn_recompute(
    x_rows, dy_rows, scale_rows, shift_rows, sp, mask, k, mean, rstd, w, b, film_s, film_h,
    stride_xs, stride_dys, Q,
    stride_scale_t, stride_scale_q, stride_shift_t, stride_shift_q,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
    SPATIAL: tl.constexpr,
):
    """The forward's intermediates on a [channels, positions] tile, and the gradient
    reaching v: returns ``(xhat, u, s, gv)`` with s = 1 + scale (a scalar, a column or
    a tile). Masked lanes get gv = 0, so they add nothing to any sum."""
    x = tl.load(x_rows + sp[None, :] * stride_xs, mask=mask, other=k[:, None]).to(tl.float32)
    xhat = (x - k[:, None] - mean[:, None]) * rstd[:, None]
    u = xhat * w[:, None] + b[:, None]
    if SPATIAL:
        t = sp // Q
        q = sp - t * Q
        s = 1.0
        h = 0.0
        if HAS_SCALE:
            off = t.to(tl.int64) * stride_scale_t + q.to(tl.int64) * stride_scale_q
            s += tl.load(scale_rows[:, None] + off[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_SHIFT:
            off = t.to(tl.int64) * stride_shift_t + q.to(tl.int64) * stride_shift_q
            h += tl.load(shift_rows[:, None] + off[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        s = film_s[:, None]
        h = film_h[:, None]
    gv = tl.load(dy_rows + sp[None, :] * stride_dys, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        v = u * s + h
        sig = 1.0 / (1.0 + tl.exp(-v))
        gv *= sig * (1.0 + v * (1.0 - sig))
    return xhat, u, s, gv


@triton.jit
def _gn_channel_coefficients(
    x_ptr, stats_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
    n, ch, ch_ok, stride_xn, stride_xc, stride_w, stride_b,
    stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c, G,
    CG: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SPATIAL: tl.constexpr,
):
    """Per channel of a block: the group's shift k, saved mean (of x - k) and rstd,
    weight, bias and the FiLM (1 + scale, shift) (1 and 0 where absent or spatial)."""
    g = ch // CG
    st = stats_ptr + (n * G + g).to(tl.int64) * 2
    mean = tl.load(st, mask=ch_ok, other=0.0)
    rstd = tl.load(st + 1, mask=ch_ok, other=0.0)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    k = tl.load(x_base + (g * CG).to(tl.int64) * stride_xc, mask=ch_ok, other=0.0).to(tl.float32)
    w = tl.full(ch.shape, 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + ch * stride_w, mask=ch_ok, other=0.0).to(tl.float32)
    b = tl.zeros(ch.shape, tl.float32)
    if HAS_B:
        b = tl.load(b_ptr + ch * stride_b, mask=ch_ok, other=0.0).to(tl.float32)
    film_s = tl.full(ch.shape, 1.0, tl.float32)
    film_h = tl.zeros(ch.shape, tl.float32)
    if not SPATIAL:
        if HAS_SCALE:
            film_s += tl.load(
                scale_ptr + n.to(tl.int64) * stride_scale_n + ch * stride_scale_c,
                mask=ch_ok, other=0.0,
            ).to(tl.float32)
        if HAS_SHIFT:
            film_h += tl.load(
                shift_ptr + n.to(tl.int64) * stride_shift_n + ch * stride_shift_c,
                mask=ch_ok, other=0.0,
            ).to(tl.float32)
    return k, mean, rstd, w, b, film_s, film_h


@triton.jit
def _gn_bwd_program(N_CH_BLOCKS, N_STRIPS, C, BLOCK_CH: tl.constexpr):
    """This program's sample n, spatial strip and block of channels (both backward
    passes split the work alike)."""
    pid = tl.program_id(0)
    strip = (pid // N_CH_BLOCKS) % N_STRIPS
    n = pid // (N_CH_BLOCKS * N_STRIPS)
    ch = (pid % N_CH_BLOCKS) * BLOCK_CH + tl.arange(0, BLOCK_CH)
    return n, strip, ch, ch < C


@triton.jit
def _gn_bwd_rows(
    x_ptr, dy_ptr, scale_ptr, shift_ptr, n, ch, stride_xn, stride_xc, stride_dyn, stride_dyc,
    stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c,
):
    """Row pointers of sample n's channels ch in x and dy ([BLOCK_CH, 1]) and in the
    modulation ([BLOCK_CH])."""
    n64 = n.to(tl.int64)
    return (
        x_ptr + n64 * stride_xn + ch[:, None] * stride_xc,
        dy_ptr + n64 * stride_dyn + ch[:, None] * stride_dyc,
        scale_ptr + n64 * stride_scale_n + ch * stride_scale_c,
        shift_ptr + n64 * stride_shift_n + ch * stride_shift_c,
    )


@_autotune_tiled
@triton.jit
def _gn_bwd_sums_kernel(
    x_ptr, dy_ptr,  # [N, C, S], read through strides
    stats_ptr,  # [N, G, 2] float32 from the forward: mean of x - k, rstd
    w_ptr, b_ptr,  # [C] or dummies
    scale_ptr, shift_ptr,  # [N, C, T, Q] modulation (strides may be 0) or dummies
    sums_ptr,  # [N, C, N_STRIPS, 4] float32 out: sums of gv, gv xhat, gu, gu xhat
    gs_ptr, gh_ptr,  # [N, C, S] float32 out (GS_FULL / GH_FULL): gv u, gv per element
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    stride_w, stride_b,
    stride_scale_n, stride_scale_c, stride_scale_t, stride_scale_q,
    stride_shift_n, stride_shift_c, stride_shift_t, stride_shift_q,
    stride_gn, stride_gc, stride_gs,  # of gs and gh (both in x's memory order)
    C, S, Q, G, N_CH_BLOCKS, N_STRIPS, ITERS,
    SIZE_CLASS,  # autotuning key only
    CG: tl.constexpr,
    CHANNELS_INNER: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
    SPATIAL: tl.constexpr, GS_FULL: tl.constexpr, GH_FULL: tl.constexpr,
    BLOCK_CH: tl.constexpr, BLOCK_SP: tl.constexpr,
):
    n, strip, ch, ch_ok = _gn_bwd_program(N_CH_BLOCKS, N_STRIPS, C, BLOCK_CH)
    k, mean, rstd, w, b, film_s, film_h = _gn_channel_coefficients(
        x_ptr, stats_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
        n, ch, ch_ok, stride_xn, stride_xc, stride_w, stride_b,
        stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c, G,
        CG, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, SPATIAL,
    )
    x_rows, dy_rows, scale_rows, shift_rows = _gn_bwd_rows(
        x_ptr, dy_ptr, scale_ptr, shift_ptr, n, ch, stride_xn, stride_xc, stride_dyn,
        stride_dyc, stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c,
    )
    g_rows = n.to(tl.int64) * stride_gn + ch[:, None] * stride_gc

    sum_gv = tl.zeros([BLOCK_CH], dtype=tl.float32)
    sum_gv_xhat = tl.zeros([BLOCK_CH], dtype=tl.float32)
    sum_gu = tl.zeros([BLOCK_CH], dtype=tl.float32)
    sum_gu_xhat = tl.zeros([BLOCK_CH], dtype=tl.float32)
    for it in range(ITERS):
        sp = (strip * ITERS + it) * BLOCK_SP + tl.arange(0, BLOCK_SP)
        mask = ch_ok[:, None] & (sp < S)[None, :]
        xhat, u, s, gv = _gn_recompute(
            x_rows, dy_rows, scale_rows, shift_rows, sp, mask, k, mean, rstd, w, b,
            film_s, film_h, stride_xs, stride_dys, Q,
            stride_scale_t, stride_scale_q, stride_shift_t, stride_shift_q,
            HAS_SCALE, HAS_SHIFT, SILU, SPATIAL,
        )
        gu = gv * s
        sum_gv += tl.sum(gv, axis=1)
        sum_gv_xhat += tl.sum(gv * xhat, axis=1)
        sum_gu += tl.sum(gu, axis=1)
        sum_gu_xhat += tl.sum(gu * xhat, axis=1)
        g_off = g_rows + sp[None, :] * stride_gs
        if GS_FULL:
            tl.store(gs_ptr + g_off, gv * u, mask=mask)
        if GH_FULL:
            tl.store(gh_ptr + g_off, gv, mask=mask)

    out = sums_ptr + ((n * C + ch) * N_STRIPS + strip).to(tl.int64) * 4
    tl.store(out, sum_gv, mask=ch_ok)
    tl.store(out + 1, sum_gv_xhat, mask=ch_ok)
    tl.store(out + 2, sum_gu, mask=ch_ok)
    tl.store(out + 3, sum_gu_xhat, mask=ch_ok)


@_autotune_tiled
@triton.jit
def _gn_bwd_dx_kernel(
    x_ptr, dy_ptr, dx_ptr,  # [N, C, S], read/written through strides
    stats_ptr,  # [N, G, 2] float32 from the forward: mean of x - k, rstd
    gmean_ptr,  # [N, G, 2] float32: mean_g(weight * gu), mean_g(weight * gu * xhat)
    w_ptr, b_ptr,
    scale_ptr, shift_ptr,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    stride_dxn, stride_dxc, stride_dxs,
    stride_w, stride_b,
    stride_scale_n, stride_scale_c, stride_scale_t, stride_scale_q,
    stride_shift_n, stride_shift_c, stride_shift_t, stride_shift_q,
    C, S, Q, G, N_CH_BLOCKS, N_STRIPS, ITERS,
    SIZE_CLASS,  # autotuning key only
    CG: tl.constexpr,
    CHANNELS_INNER: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
    SPATIAL: tl.constexpr,
    BLOCK_CH: tl.constexpr, BLOCK_SP: tl.constexpr,
):
    n, strip, ch, ch_ok = _gn_bwd_program(N_CH_BLOCKS, N_STRIPS, C, BLOCK_CH)
    k, mean, rstd, w, b, film_s, film_h = _gn_channel_coefficients(
        x_ptr, stats_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
        n, ch, ch_ok, stride_xn, stride_xc, stride_w, stride_b,
        stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c, G,
        CG, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, SPATIAL,
    )
    gm = gmean_ptr + (n * G + ch // CG).to(tl.int64) * 2
    m1 = tl.load(gm, mask=ch_ok, other=0.0)
    m2 = tl.load(gm + 1, mask=ch_ok, other=0.0)
    x_rows, dy_rows, scale_rows, shift_rows = _gn_bwd_rows(
        x_ptr, dy_ptr, scale_ptr, shift_ptr, n, ch, stride_xn, stride_xc, stride_dyn,
        stride_dyc, stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c,
    )
    dx_rows = dx_ptr + n.to(tl.int64) * stride_dxn + ch[:, None] * stride_dxc
    for it in range(ITERS):
        sp = (strip * ITERS + it) * BLOCK_SP + tl.arange(0, BLOCK_SP)
        mask = ch_ok[:, None] & (sp < S)[None, :]
        xhat, u, s, gv = _gn_recompute(
            x_rows, dy_rows, scale_rows, shift_rows, sp, mask, k, mean, rstd, w, b,
            film_s, film_h, stride_xs, stride_dys, Q,
            stride_scale_t, stride_scale_q, stride_shift_t, stride_shift_q,
            HAS_SCALE, HAS_SHIFT, SILU, SPATIAL,
        )
        dx = rstd[:, None] * (w[:, None] * gv * s - m1[:, None] - xhat * m2[:, None])
        dx = cast_to(dx, dx_ptr.dtype.element_ty)
        tl.store(dx_rows + sp[None, :] * stride_dxs, dx, mask=mask)


def group_norm_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    stats: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Gradients of :func:`group_norm` from the output gradient.

    Args:
        grad_y: ``[N, C, *spatial]`` of x's dtype, any strides (brought into x's memory
            format when it is in another one).
        x, num_groups, weight, bias, scale, shift, activation: the forward's arguments.
        stats: ``[N, G, 2]`` float32, filled by the forward's ``stats=``.

    Returns:
        ``(dx, dweight, dbias, dscale, dshift)``: dx ``[N, C, *spatial]`` in x's dtype
        and memory format; the others in their argument's shape and dtype (contiguous),
        or None where the argument is None.
    """
    n, c = x.shape[:2]
    fmt = memory_format_of(x)
    if x.numel() == 0:
        zeros = (None if t is None else torch.zeros_like(t) for t in (weight, bias, scale, shift))
        return (torch.empty_like(x, memory_format=fmt), *zeros)
    x3 = _as_3d(x)
    if x3 is None:
        x = x.contiguous(memory_format=fmt)
        x3 = _as_3d(x)
    grad_y = grad_y.contiguous(memory_format=fmt)
    dx = torch.empty_like(x, memory_format=fmt)
    dy3, dx3 = _as_3d(grad_y), _as_3d(dx)
    s = x3.shape[2]
    cg = c // num_groups
    frames = x.shape[2] if x.dim() == 5 else 1
    sn, sc, ss = x3.stride()
    channels_inner = not (sc == s * ss and ss > 0)
    block_ch, block_sp, n_ch_blocks, n_strips, iters = _tiling(n, c, s, channels_inner, x.device)

    f32 = dict(dtype=torch.float32, device=x.device)
    sums = torch.empty((n, c, n_strips, 4), **f32)
    spatial = any(t is not None and t.dim() != 2 for t in (scale, shift))
    gs_full, gh_full = (t is not None and t.dim() != 2 for t in (scale, shift))
    # gv u and gv per element, in x's memory order, for a spatial scale / shift.
    full = [torch.empty_like(x, dtype=torch.float32, memory_format=fmt) if f else None
            for f in (gs_full, gh_full)]
    poison_if_requested(dx, sums, *(t for t in full if t is not None))
    dummy = sums  # never read or written: the constexpr flags compile the accesses out
    gs3, gh3 = (_as_3d(t) if t is not None else dummy for t in full)
    g_strides = (gs3 if gs_full else gh3).stride() if spatial else (0, 0, 0)
    w, b = (t if t is not None else dummy for t in (weight, bias))
    sc_t, sh_t = (
        _modulation_4d(t, x) if t is not None else dummy.view(1, 1, 1, -1) for t in (scale, shift)
    )
    mod_strides = [*sc_t.stride(), *sh_t.stride()]
    flags = dict(
        CG=cg, CHANNELS_INNER=channels_inner,
        HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        SILU=activation == "silu", SPATIAL=spatial, BLOCK_CH=block_ch, BLOCK_SP=block_sp,
    )
    grid = check_grid_x(n * n_ch_blocks * n_strips, "group_norm backward")
    size_class = _size_class(block_ch * block_sp * iters)
    with device_guard(x):
        _gn_bwd_sums_kernel[grid](
            x3, dy3, stats, w, b, sc_t, sh_t, sums, gs3, gh3,
            sn, sc, ss, *dy3.stride(), w.stride(0), b.stride(0), *mod_strides, *g_strides,
            c, s, s // frames, num_groups, n_ch_blocks, n_strips, iters, size_class,
            GS_FULL=gs_full, GH_FULL=gh_full, **flags,
        )
    # Strips summed in a fixed order: deterministic, no atomics.
    sum_gv, sum_gv_xhat, sum_gu, sum_gu_xhat = sums.sum(dim=2).unbind(-1)  # [N, C] each
    w32 = weight.float() if weight is not None else torch.ones(c, **f32)
    gmean = torch.stack([w32 * sum_gu, w32 * sum_gu_xhat], dim=-1)
    gmean = gmean.view(n, num_groups, cg, 2).sum(dim=2).div_(cg * s).contiguous()
    with device_guard(x):
        _gn_bwd_dx_kernel[grid](
            x3, dy3, dx3, stats, gmean, w, b, sc_t, sh_t,
            sn, sc, ss, *dy3.stride(), *dx3.stride(), w.stride(0), b.stride(0), *mod_strides,
            c, s, s // frames, num_groups, n_ch_blocks, n_strips, iters, size_class,
            **flags,
        )

    def cast(g, like):
        return g.to(like.dtype).contiguous()

    dweight = cast(sum_gu_xhat.sum(0), weight) if weight is not None else None
    dbias = cast(sum_gu.sum(0), bias) if bias is not None else None
    # u = xhat * weight + bias, so the FiLM grads come from the per-channel sums.
    film_dscale = w32 * sum_gv_xhat
    if bias is not None:
        film_dscale = film_dscale + bias.float() * sum_gv
    grads = []
    for t, per_channel, per_element in ((scale, film_dscale, full[0]), (shift, sum_gv, full[1])):
        if t is None:
            grads.append(None)
        elif t.dim() == 2:
            grads.append(cast(per_channel, t))
        else:
            grads.append(cast(per_element.sum_to_size(t.shape), t))
    return (dx, dweight, dbias, *grads)
