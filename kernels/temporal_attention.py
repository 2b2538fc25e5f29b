"""Temporal attention read and written in the video layout ``[B, C, T, H, W]``.

At every (batch, head, y, x) position the T frames attend to each other:
``o = softmax(q k^T * scale) v`` with q, k, v of shape ``[T, head_dim]``. Sequences are
short (T <= 128; 16 by default), so a tile packs ``P = BLOCK // T`` positions into its
BLOCK rows (row ``t * P + p`` holds frame t of position p) and one block-diagonal
attention covers them: a ``[BLOCK, BLOCK]`` score tile on the tensor cores, a mask that
keeps pairs of rows of the same position, an fp32 softmax, then ``[BLOCK, BLOCK] x
[BLOCK, head_dim]``. Whole sequences stay on chip, q, k, v are each read once and o is
written once, all through strides: no permute or contiguous copy, whatever view of a
qkv tensor (contiguous or channels_last_3d) comes in.

A tile is (batch, head, P neighbouring positions); each program takes SUB consecutive
tiles per turn, programs go on grid axis 0 and loop when there are more tiles than
that axis allows (:func:`attention_grid`). BLOCK, SUB and the warps are autotuned per
(T, head_dim, layout, dtype).

Backward (:func:`temporal_attention_backward`), FlashAttention-style: for training the
forward also writes the logsumexp of each query's logits (``[B, heads, T, H, W]``
float32, 1/head_dim of o's size), and the backward kernel, on the same tiles, reads q,
k, v, do and it once, recomputes ``P = exp(scale q k^T - lse)`` and writes dq, dk and
dv once each. A tile holds whole sequences, so no program shares a row of dk or dv
with another: no atomics, deterministic.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lddm_fast.layout import attention_output_format

from .utils import (
    INTERPRET,
    MAX_GRID_X,
    cast_to,
    cdiv,
    device_guard,
    poison_if_requested,
    prune,
)

# The row block must hold a whole sequence: T up to this many frames.
MAX_FRAMES = 128
MAX_HEAD_DIM = 128
_LOG2E = math.log2(math.e)
# The same constants inside the kernels (globals a kernel reads must be constexprs).
_LN2 = tl.constexpr(math.log(2.0))
_LOG2E_JIT = tl.constexpr(_LOG2E)


@triton.jit
def _dot(a, b, F32: tl.constexpr):
    """``a @ b`` with an fp32 accumulator. F32: fp32 operands through three TF32 passes
    (hi/lo split, about fp32 accuracy on the tensor cores; plain "ieee" fp32 spills)."""
    if F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
    return tl.dot(a, b)


@triton.jit
def _dot_split(a, b, SPLIT: tl.constexpr, F32: tl.constexpr):
    """``a @ b`` for an fp32 ``a`` (probabilities or their gradients) and a 16-bit ``b``:
    SPLIT feeds a as hi + lo halves in b's dtype. a rounded to 8 or 11 bits would cost as
    much error as the result's rounding itself; the halves carry ~16 bits through two
    products."""
    if SPLIT:
        a_hi = a.to(b.dtype)
        a_lo = (a - a_hi.to(tl.float32)).to(b.dtype)
        return _dot(a_hi, b, F32) + _dot(a_lo, b, F32)
    return _dot(a, b, F32)


_CONFIGS = [
    # Interpreter: the first config whose BLOCK holds T (SUB = 2 runs the tile loop).
    triton.Config({"BLOCK": 64, "SUB": 2}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK": 64, "SUB": 1}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK": 64, "SUB": 4}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK": 64, "SUB": 2}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK": 128, "SUB": 2}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK": 128, "SUB": 1}, num_warps=8, num_stages=1),
]
_PRUNE = prune(lambda cfg, args: cfg.kwargs["BLOCK"] >= args["T"])
_HEURISTICS = {
    # Both depend on the autotuned BLOCK.
    "TILES_PER_SEQ": lambda a: cdiv(a["H"] * a["W"], a["BLOCK"] // a["T"]),
    "N_TILES": lambda a: attention_grid(
        a["q_ptr"].shape[0], a["HEADS"], a["H"], a["W"], a["BLOCK"] // a["T"]
    )[1],
}


@triton.jit
def _tile_rows(T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr):
    """Row and channel indices of a tile, shared by every tile of a program: row r is
    frame r // P of position r % P (P = BLOCK // T positions); ``same_seq`` masks the
    logits to the frames of a row's own position."""
    P: tl.constexpr = BLOCK // T
    r = tl.arange(0, BLOCK)
    t = r // P
    p = r % P
    row_ok = t < T
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    same_seq = (p[:, None] == p[None, :]) & row_ok[None, :]
    return p, row_ok, d_ok, same_seq, t.to(tl.int64), d.to(tl.int64)


@triton.jit
def _tile_place(tile, p, row_ok, d_ok, d64, TILES_PER_SEQ, HEADS, H, W, HEAD_DIM: tl.constexpr,
                P: tl.constexpr):
    """Where tile ``tile`` lies: its (batch, head) index bh, batch b, channels c
    [BLOCK_D], rows that exist, the [BLOCK_D, BLOCK] load/store mask and each row's
    y, x (int64)."""
    bh = tile // TILES_PER_SEQ
    b = bh // HEADS
    c = (bh % HEADS) * HEAD_DIM + d64
    # flat y * W + x of each row's position (< H * W + P: int32)
    s = (tile % TILES_PER_SEQ).to(tl.int32) * P + p
    rows = row_ok & (s < H * W)
    mask = d_ok[:, None] & rows[None, :]
    return bh, b, c, rows, mask, (s // W).to(tl.int64), (s % W).to(tl.int64)


@triton.jit
def _offsets(b, c, t64, y, x, s_b, s_c, s_t, s_h, s_w):
    """[BLOCK_D, BLOCK] element offsets of a tile in a strided [B, C, T, H, W] tensor."""
    return b * s_b + c[:, None] * s_c + (t64 * s_t + y * s_h + x * s_w)[None, :]


@triton.autotune(
    configs=_CONFIGS, key=["T", "HEAD_DIM", "CHANNELS_INNER"], prune_configs_by=_PRUNE
)
@triton.heuristics(_HEURISTICS)
@triton.jit
def _temporal_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,  # [B, C, T, H, W] each, read/written through strides
    lse_ptr,  # [B, HEADS, T, H, W] float32 out (STORE_LSE): logsumexp of the logits
    sq_b, sq_c, sq_t, sq_h, sq_w,
    sk_b, sk_c, sk_t, sk_h, sk_w,
    sv_b, sv_c, sv_t, sv_h, sv_w,
    so_b, so_c, so_t, so_h, so_w,
    sl_b, sl_n, sl_t, sl_h, sl_w,
    HEADS, H, W,
    qk_scale,  # scale * log2(e): the softmax runs on exp2
    N_TILES, TILES_PER_SEQ,  # tiles of P positions: all of them, and per (batch, head)
    CHANNELS_INNER: tl.constexpr,  # autotuning key: q's channel stride is 1
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_F32: tl.constexpr,  # multiply in fp32 (fp32 inputs; bf16 under the interpreter)
    SPLIT_P: tl.constexpr,  # 16-bit inputs: feed P to the PV product as hi + lo halves
    STORE_LSE: tl.constexpr,  # for the backward, which recomputes P from it
    BLOCK: tl.constexpr,  # rows per tile: P = BLOCK // T positions of T frames
    SUB: tl.constexpr,  # consecutive tiles per program (per loop turn of the grid)
):
    P: tl.constexpr = BLOCK // T
    p, row_ok, d_ok, same_seq, t64, d64 = _tile_rows(T, HEAD_DIM, BLOCK_D, BLOCK)

    # A tile's rows of one frame are P neighbouring positions: in the contiguous layout
    # they share DRAM sectors with the next tile's, which the same program reads next
    # (from its L1) when SUB > 1 rather than another SM (from L2).
    # Tile indices in int64: batch * heads * tiles may pass 2**31.
    start = tl.program_id(0).to(tl.int64) * SUB
    step = tl.num_programs(0).to(tl.int64) * SUB
    for first in range(start, N_TILES, step):
        for tile in range(first, tl.minimum(first + SUB, N_TILES)):
            bh, b, c, rows, mask, y, x = _tile_place(
                tile, p, row_ok, d_ok, d64, TILES_PER_SEQ, HEADS, H, W, HEAD_DIM, P
            )
            # Tiles are [BLOCK_D, BLOCK]: the unit-stride axis is the channel in
            # channels_last_3d and the position (within rows of one frame) otherwise.
            q_off = _offsets(b, c, t64, y, x, sq_b, sq_c, sq_t, sq_h, sq_w)
            k_off = _offsets(b, c, t64, y, x, sk_b, sk_c, sk_t, sk_h, sk_w)
            v_off = _offsets(b, c, t64, y, x, sv_b, sv_c, sv_t, sv_h, sv_w)
            q = tl.trans(tl.load(q_ptr + q_off, mask=mask, other=0.0))  # [BLOCK, BLOCK_D]
            kt = tl.load(k_ptr + k_off, mask=mask, other=0.0)  # [BLOCK_D, BLOCK]
            v = tl.trans(tl.load(v_ptr + v_off, mask=mask, other=0.0))  # [BLOCK, BLOCK_D]

            scores = _dot(q, kt, DOT_F32) * qk_scale
            scores = tl.where(same_seq, scores, float("-inf"))
            row_max = tl.max(scores, axis=1)
            prob = tl.exp2(scores - row_max[:, None])  # unnormalised, in [0, 1]
            denom = tl.sum(prob, axis=1)
            o = _dot_split(prob, v, SPLIT_P, DOT_F32) / denom[:, None]
            if STORE_LSE:
                lse = (row_max + tl.log2(denom)) * _LN2
                l_off = b * sl_b + (bh % HEADS) * sl_n + t64 * sl_t + y * sl_h + x * sl_w
                tl.store(lse_ptr + l_off, lse, mask=rows)

            o_off = _offsets(b, c, t64, y, x, so_b, so_c, so_t, so_h, so_w)
            tl.store(o_ptr + o_off, cast_to(tl.trans(o), o_ptr.dtype.element_ty), mask=mask)


@triton.autotune(
    configs=_CONFIGS,
    key=["T", "HEAD_DIM", "CHANNELS_INNER"],
    # Each trial run writes all of dq, dk and dv (no accumulation): nothing to reset.
    prune_configs_by=_PRUNE,
)
@triton.heuristics(_HEURISTICS)
@triton.jit
def _temporal_attention_bwd_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr,  # [B, C, T, H, W] each, read through strides
    lse_ptr,  # [B, HEADS, T, H, W] float32 from the forward
    dq_ptr, dk_ptr, dv_ptr,  # [B, C, T, H, W] each, written through strides
    sq_b, sq_c, sq_t, sq_h, sq_w,
    sk_b, sk_c, sk_t, sk_h, sk_w,
    sv_b, sv_c, sv_t, sv_h, sv_w,
    sdo_b, sdo_c, sdo_t, sdo_h, sdo_w,
    sl_b, sl_n, sl_t, sl_h, sl_w,
    sdq_b, sdq_c, sdq_t, sdq_h, sdq_w,
    sdk_b, sdk_c, sdk_t, sdk_h, sdk_w,
    sdv_b, sdv_c, sdv_t, sdv_h, sdv_w,
    HEADS, H, W,
    scale,  # the logit scale
    qk_scale,  # scale * log2(e): probabilities are recomputed with exp2
    N_TILES, TILES_PER_SEQ,
    CHANNELS_INNER: tl.constexpr,
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_F32: tl.constexpr,
    SPLIT_P: tl.constexpr,  # 16-bit inputs: P and dS enter the products as hi + lo halves
    BLOCK: tl.constexpr,
    SUB: tl.constexpr,
):
    """FlashAttention's backward on the forward's block-diagonal tiles, whole sequences
    on chip (no atomics: each program owns its positions' dq, dk and dv):
    ``P = exp(scale q k^T - lse)``, ``dv = P^T do``, ``dP = do v^T``,
    ``dS = P (dP - rowsum(P dP))``, ``dq = scale dS k``, ``dk = scale dS^T q``."""
    P: tl.constexpr = BLOCK // T
    p, row_ok, d_ok, same_seq, t64, d64 = _tile_rows(T, HEAD_DIM, BLOCK_D, BLOCK)

    start = tl.program_id(0).to(tl.int64) * SUB
    step = tl.num_programs(0).to(tl.int64) * SUB
    for first in range(start, N_TILES, step):
        for tile in range(first, tl.minimum(first + SUB, N_TILES)):
            bh, b, c, rows, mask, y, x = _tile_place(
                tile, p, row_ok, d_ok, d64, TILES_PER_SEQ, HEADS, H, W, HEAD_DIM, P
            )
            q_off = _offsets(b, c, t64, y, x, sq_b, sq_c, sq_t, sq_h, sq_w)
            k_off = _offsets(b, c, t64, y, x, sk_b, sk_c, sk_t, sk_h, sk_w)
            v_off = _offsets(b, c, t64, y, x, sv_b, sv_c, sv_t, sv_h, sv_w)
            do_off = _offsets(b, c, t64, y, x, sdo_b, sdo_c, sdo_t, sdo_h, sdo_w)
            # Masked rows load zeros: their do, hence dP and dS, vanish, so they add
            # nothing to the valid rows' dk and dv.
            q = tl.trans(tl.load(q_ptr + q_off, mask=mask, other=0.0))  # [BLOCK, BLOCK_D]
            kt = tl.load(k_ptr + k_off, mask=mask, other=0.0)  # [BLOCK_D, BLOCK]
            vt = tl.load(v_ptr + v_off, mask=mask, other=0.0)  # [BLOCK_D, BLOCK]
            do = tl.trans(tl.load(do_ptr + do_off, mask=mask, other=0.0))  # [BLOCK, BLOCK_D]
            l_off = b * sl_b + (bh % HEADS) * sl_n + t64 * sl_t + y * sl_h + x * sl_w
            lse = tl.load(lse_ptr + l_off, mask=rows, other=0.0) * _LOG2E_JIT

            scores = _dot(q, kt, DOT_F32) * qk_scale
            scores = tl.where(same_seq, scores, float("-inf"))
            prob = tl.exp2(scores - lse[:, None])  # [BLOCK, BLOCK], rows sum to 1
            dprob = _dot(do, vt, DOT_F32)
            delta = tl.sum(prob * dprob, axis=1)
            dscores = prob * (dprob - delta[:, None]) * scale

            dv = _dot_split(tl.trans(prob), do, SPLIT_P, DOT_F32)
            dq = _dot_split(dscores, tl.trans(kt), SPLIT_P, DOT_F32)
            dk = _dot_split(tl.trans(dscores), q, SPLIT_P, DOT_F32)

            dq_off = _offsets(b, c, t64, y, x, sdq_b, sdq_c, sdq_t, sdq_h, sdq_w)
            tl.store(dq_ptr + dq_off, cast_to(tl.trans(dq), dq_ptr.dtype.element_ty), mask=mask)
            dk_off = _offsets(b, c, t64, y, x, sdk_b, sdk_c, sdk_t, sdk_h, sdk_w)
            tl.store(dk_ptr + dk_off, cast_to(tl.trans(dk), dk_ptr.dtype.element_ty), mask=mask)
            dv_off = _offsets(b, c, t64, y, x, sdv_b, sdv_c, sdv_t, sdv_h, sdv_w)
            tl.store(dv_ptr + dv_off, cast_to(tl.trans(dv), dv_ptr.dtype.element_ty), mask=mask)


def attention_grid(
    batch: int, heads: int, height: int, width: int, positions_per_tile: int,
    tiles_per_program: int = 1, max_programs: int = MAX_GRID_X,
) -> tuple[tuple[int, int, int], int]:
    """The launch grid of the temporal attention kernel and its number of tiles.

    A tile is one (batch, head, block of ``positions_per_tile`` neighbouring spatial
    positions); a program takes ``tiles_per_program`` consecutive tiles per turn. All
    programs go on grid axis 0 (limit 2**31 - 1, against 65,535 for y and z, which
    ``batch * heads`` alone can pass); beyond ``max_programs`` each program loops.

    Returns:
        ``((programs, 1, 1), tiles)``.
    """
    tiles = batch * heads * cdiv(height * width, positions_per_tile)
    programs = min(cdiv(tiles, tiles_per_program), max_programs, MAX_GRID_X)
    return (max(1, programs), 1, 1), tiles


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_heads: int,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    max_programs: int = MAX_GRID_X,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head softmax attention over T at every spatial position
    (see :func:`lddm_fast.ops.temporal_attention`).

    Args:
        q, k, v: ``[B, C, T, H, W]``, ``C = num_heads * head_dim``, one dtype
            (float32/bfloat16/float16), any strides; T <= 128, head_dim <= 128.
        num_heads: number of heads.
        scale: logit scale, default ``head_dim ** -0.5``.
        out: optional ``[B, C, T, H, W]`` tensor of q's dtype to write into, not
            overlapping q, k or v; default a new tensor, channels_last_3d when q's
            channel stride is 1, else contiguous.
        max_programs: cap on the launch grid (tests use a small one to exercise the
            loop that covers more tiles than programs).
        lse: optional ``[B, num_heads, T, H, W]`` float32 tensor that receives the
            logsumexp of each query's scaled logits (what
            :func:`temporal_attention_backward` needs).

    Returns:
        ``out``: ``[B, C, T, H, W]`` in q's dtype.
    """
    bsz, c, frames, height, width = q.shape
    if c % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide C={c}")
    head_dim = c // num_heads
    if frames > MAX_FRAMES or head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"the triton temporal_attention keeps a whole sequence on chip: T={frames} must be "
            f"<= {MAX_FRAMES} and head_dim={head_dim} <= {MAX_HEAD_DIM} "
            "(use backend='reference' beyond that)"
        )
    if scale is None:
        scale = head_dim**-0.5
    if out is None:
        out = torch.empty(
            q.shape, dtype=q.dtype, device=q.device, memory_format=attention_output_format(q)
        )
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"out must be {tuple(q.shape)} {q.dtype} on {q.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    elif any(out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in (q, k, v)):
        raise ValueError("out must not share storage with q, k or v")
    if lse is not None and (
        lse.shape != (bsz, num_heads, frames, height, width) or lse.dtype != torch.float32
    ):
        raise ValueError(
            f"lse must be {(bsz, num_heads, frames, height, width)} float32, "
            f"got {tuple(lse.shape)} {lse.dtype}"
        )
    if out.numel() == 0:
        return out
    grid, constants = _launch(q, num_heads, max_programs)
    with device_guard(q):
        _temporal_attention_kernel[grid](
            q, k, v, out, lse if lse is not None else out,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            *(lse.stride() if lse is not None else (0,) * 5),
            num_heads, height, width, float(scale) * _LOG2E,
            STORE_LSE=lse is not None, **constants,
        )
    return out


def _launch(q: torch.Tensor, num_heads: int, max_programs: int) -> tuple:
    """The launch grid and the compile-time arguments the forward and backward kernels
    share, for q [B, C, T, H, W]."""
    bsz, c, frames, height, width = q.shape
    head_dim = c // num_heads
    sixteen_bit = q.dtype in (torch.bfloat16, torch.float16)

    def grid(meta):
        return attention_grid(bsz, num_heads, height, width, meta["BLOCK"] // frames,
                              meta["SUB"], max_programs)[0]

    return grid, dict(
        CHANNELS_INNER=q.stride(1) == 1, T=frames, HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        # The interpreter's dot multiplies bf16 bit patterns as integers: bf16 -> fp32
        # is exact, so multiplying in fp32 there computes the same products.
        DOT_F32=not sixteen_bit or (INTERPRET and q.dtype == torch.bfloat16),
        SPLIT_P=sixteen_bit,
    )


def temporal_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    *,
    num_heads: int,
    scale: float | None = None,
    max_programs: int = MAX_GRID_X,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`temporal_attention` w.r.t. q, k and v.

    Args:
        grad_out: ``[B, C, T, H, W]`` of q's dtype, any strides.
        q, k, v, num_heads, scale, max_programs: as for the forward.
        lse: ``[B, num_heads, T, H, W]`` float32, filled by the forward's ``lse=``.

    Returns:
        ``(dq, dk, dv)``, each in q's dtype and the layout the forward would give its
        input (channels_last_3d when that input's channel stride is 1, else contiguous).
    """
    _, c, _, height, width = q.shape
    if scale is None:
        scale = (c // num_heads) ** -0.5
    grads = [
        torch.empty(t.shape, dtype=t.dtype, device=t.device,
                    memory_format=attention_output_format(t))
        for t in (q, k, v)
    ]
    poison_if_requested(*grads)
    if q.numel() == 0:
        return tuple(grads)

    grid, constants = _launch(q, num_heads, max_programs)
    with device_guard(q):
        _temporal_attention_bwd_kernel[grid](
            q, k, v, grad_out, lse, *grads,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *lse.stride(),
            *(s for g in grads for s in g.stride()),
            num_heads, height, width, float(scale), float(scale) * _LOG2E, **constants,
        )
    return tuple(grads)
