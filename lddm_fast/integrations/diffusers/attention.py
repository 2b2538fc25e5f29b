"""A diffusers attention processor that runs self-attention over frames with
:func:`lddm_fast.ops.temporal_attention`.

diffusers' temporal transformers fold every spatial position into the batch before
attention: the processor sees tokens ``[N, T, C]`` with ``N = B * H * W``. Attention is
independent at each position, so ``[N, T, C]`` is the op's ``[B, C, T, H, W]`` with
``B = N`` and ``H = W = 1``; the projections are handed over as strided views of that
layout (channel stride 1, no permute copies).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from lddm_fast import ops

# The processors whose numerics the op reproduces: plain softmax(q k^T / sqrt(d)) v.
REPLACEABLE = (AttnProcessor2_0, AttnProcessor)


def unsupported(attn: Attention) -> str | None:
    """Why :class:`TemporalAttnProcessor` would compute something else than diffusers'
    default processor for ``attn``, or None."""
    if attn.is_cross_attention:
        return "it is cross-attention"
    head_dim = attn.inner_dim // attn.heads
    reasons = {
        "spatial_norm": attn.spatial_norm is not None,
        "group_norm": attn.group_norm is not None,
        "norm_q/norm_k": attn.norm_q is not None or attn.norm_k is not None,
        "residual_connection": attn.residual_connection,
        "rescale_output_factor": attn.rescale_output_factor != 1.0,
        "fused projections": attn.fused_projections,
        "kv_heads": attn.inner_kv_dim != attn.inner_dim,
        "a logit scale other than head_dim ** -0.5": attn.scale != head_dim**-0.5,
    }
    found = [name for name, present in reasons.items() if present]
    return f"it uses {', '.join(found)}" if found else None


class TemporalAttnProcessor:
    """Self-attention over the sequence axis of ``[N, T, C]`` tokens through the fused
    op; anything else (a mask, cross-attention inputs, 4-D inputs) goes to ``fallback``.

    Also usable by hand: ``unet.set_attn_processor(TemporalAttnProcessor())`` (then every
    attention module, spatial ones included, runs through it; spatial self-attention
    is attention over a sequence too, with the op's size limits).

    Args:
        fallback: the processor for calls this one does not take (default:
            ``AttnProcessor2_0``, diffusers' SDPA processor).
        backend: force one :mod:`lddm_fast.ops` backend (None: the default choice).
    """

    def __init__(self, fallback=None, backend: str | None = None) -> None:
        self.fallback = fallback if fallback is not None else AttnProcessor2_0()
        self.backend = backend

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        """hidden_states: ``[N, T, C]`` -> ``[N, T, out_dim]``."""
        if (
            encoder_hidden_states is not None
            or attention_mask is not None
            or hidden_states.dim() != 3
            or unsupported(attn) is not None
        ):
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        n, t, _ = hidden_states.shape

        def video(x: torch.Tensor) -> torch.Tensor:  # [N, T, C] -> [N, C, T, 1, 1] view
            return x.view(n, 1, 1, t, x.shape[-1]).permute(0, 4, 3, 1, 2)

        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        # scale=None (head_dim ** -0.5): what AttnProcessor2_0's SDPA call uses.
        out = ops.temporal_attention(
            video(q), video(k), video(v), num_heads=attn.heads, backend=self.backend
        )
        out = out.permute(0, 3, 4, 2, 1).reshape(n, t, -1)
        return attn.to_out[1](attn.to_out[0](out))
