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
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lddm_fast.layout import attention_output_format

from .utils import INTERPRET, MAX_GRID_X, cast_to, cdiv, device_guard, prune

# The row block must hold a whole sequence: T up to this many frames.
MAX_FRAMES = 128
MAX_HEAD_DIM = 128
_LOG2E = math.log2(math.e)


@triton.jit
def _dot(a, b, F32: tl.constexpr):
    """``a @ b`` with an fp32 accumulator. F32: fp32 operands through three TF32 passes
    (hi/lo split, about fp32 accuracy on the tensor cores; plain "ieee" fp32 spills)."""
    if F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
    return tl.dot(a, b)


@triton.autotune(
    configs=[
        # Interpreter: the first config whose BLOCK holds T (SUB = 2 runs the tile loop).
        triton.Config({"BLOCK": 64, "SUB": 2}, num_warps=4, num_stages=1),
        triton.Config({"BLOCK": 64, "SUB": 1}, num_warps=4, num_stages=1),
        triton.Config({"BLOCK": 64, "SUB": 4}, num_warps=4, num_stages=1),
        triton.Config({"BLOCK": 64, "SUB": 2}, num_warps=8, num_stages=1),
        triton.Config({"BLOCK": 128, "SUB": 2}, num_warps=8, num_stages=1),
        triton.Config({"BLOCK": 128, "SUB": 1}, num_warps=8, num_stages=1),
    ],
    key=["T", "HEAD_DIM", "CHANNELS_INNER"],
    prune_configs_by=prune(lambda cfg, args: cfg.kwargs["BLOCK"] >= args["T"]),
)
@triton.heuristics(
    {
        # Both depend on the autotuned BLOCK.
        "TILES_PER_SEQ": lambda a: cdiv(a["H"] * a["W"], a["BLOCK"] // a["T"]),
        "N_TILES": lambda a: attention_grid(
            a["q_ptr"].shape[0], a["HEADS"], a["H"], a["W"], a["BLOCK"] // a["T"]
        )[1],
    }
)
@triton.jit
def _temporal_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,  # [B, C, T, H, W] each, read/written through strides
    sq_b, sq_c, sq_t, sq_h, sq_w,
    sk_b, sk_c, sk_t, sk_h, sk_w,
    sv_b, sv_c, sv_t, sv_h, sv_w,
    so_b, so_c, so_t, so_h, so_w,
    HEADS, H, W,
    qk_scale,  # scale * log2(e): the softmax runs on exp2
    N_TILES, TILES_PER_SEQ,  # tiles of P positions: all of them, and per (batch, head)
    CHANNELS_INNER: tl.constexpr,  # autotuning key: q's channel stride is 1
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_F32: tl.constexpr,  # multiply in fp32 (fp32 inputs; bf16 under the interpreter)
    SPLIT_P: tl.constexpr,  # 16-bit inputs: feed P to the PV product as hi + lo halves
    BLOCK: tl.constexpr,  # rows per tile: P = BLOCK // T positions of T frames
    SUB: tl.constexpr,  # consecutive tiles per program (per loop turn of the grid)
):
    P: tl.constexpr = BLOCK // T
    r = tl.arange(0, BLOCK)
    t = r // P
    p = r % P
    row_ok = t < T
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    # Keys a query row may attend to: frames of its own position.
    same_seq = (p[:, None] == p[None, :]) & row_ok[None, :]
    t64 = t.to(tl.int64)
    d64 = d.to(tl.int64)

    # A tile's rows of one frame are P neighbouring positions: in the contiguous layout
    # they share DRAM sectors with the next tile's, which the same program reads next
    # (from its L1) when SUB > 1 rather than another SM (from L2).
    # Tile indices in int64: batch * heads * tiles may pass 2**31.
    start = tl.program_id(0).to(tl.int64) * SUB
    step = tl.num_programs(0).to(tl.int64) * SUB
    for first in range(start, N_TILES, step):
        for tile in range(first, tl.minimum(first + SUB, N_TILES)):
            bh = tile // TILES_PER_SEQ
            b = bh // HEADS
            c = (bh % HEADS) * HEAD_DIM + d64
            # flat y * W + x of each row's position (< H * W + P: int32)
            s = (tile % TILES_PER_SEQ).to(tl.int32) * P + p
            mask = d_ok[:, None] & (row_ok & (s < H * W))[None, :]
            y = (s // W).to(tl.int64)
            x = (s % W).to(tl.int64)
            # Tiles are [BLOCK_D, BLOCK]: the unit-stride axis is the channel in
            # channels_last_3d and the position (within rows of one frame) otherwise.
            q_off = b * sq_b + c[:, None] * sq_c + (t64 * sq_t + y * sq_h + x * sq_w)[None, :]
            k_off = b * sk_b + c[:, None] * sk_c + (t64 * sk_t + y * sk_h + x * sk_w)[None, :]
            v_off = b * sv_b + c[:, None] * sv_c + (t64 * sv_t + y * sv_h + x * sv_w)[None, :]
            q = tl.trans(tl.load(q_ptr + q_off, mask=mask, other=0.0))  # [BLOCK, BLOCK_D]
            kt = tl.load(k_ptr + k_off, mask=mask, other=0.0)  # [BLOCK_D, BLOCK]
            v = tl.trans(tl.load(v_ptr + v_off, mask=mask, other=0.0))  # [BLOCK, BLOCK_D]

            scores = _dot(q, kt, DOT_F32) * qk_scale
            scores = tl.where(same_seq, scores, float("-inf"))
            row_max = tl.max(scores, axis=1)
            prob = tl.exp2(scores - row_max[:, None])  # unnormalised, in [0, 1]
            denom = tl.sum(prob, axis=1)
            if SPLIT_P:
                # P rounded to 8 or 11 bits would cost as much error as the output
                # rounding itself; hi + lo halves carry ~16 bits through two products.
                p_hi = prob.to(v.dtype)
                p_lo = (prob - p_hi.to(tl.float32)).to(v.dtype)
                acc = _dot(p_hi, v, DOT_F32) + _dot(p_lo, v, DOT_F32)
            else:
                acc = _dot(prob, v, DOT_F32)
            o = acc / denom[:, None]

            o_off = b * so_b + c[:, None] * so_c + (t64 * so_t + y * so_h + x * so_w)[None, :]
            tl.store(o_ptr + o_off, cast_to(tl.trans(o), o_ptr.dtype.element_ty), mask=mask)


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
    if out.numel() == 0:
        return out

    def grid(meta):
        return attention_grid(bsz, num_heads, height, width, meta["BLOCK"] // frames,
                              meta["SUB"], max_programs)[0]

    sixteen_bit = q.dtype in (torch.bfloat16, torch.float16)
    with device_guard(q):
        _temporal_attention_kernel[grid](
            q, k, v, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            num_heads, height, width, float(scale) * _LOG2E,
            CHANNELS_INNER=q.stride(1) == 1, T=frames, HEAD_DIM=head_dim,
            BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
            # The interpreter's dot multiplies bf16 bit patterns as integers: bf16 -> fp32
            # is exact, so multiplying in fp32 there computes the same products.
            DOT_F32=not sixteen_bit or (INTERPRET and q.dtype == torch.bfloat16),
            SPLIT_P=sixteen_bit,
        )
    return out
