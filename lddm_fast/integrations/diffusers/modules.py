"""Accelerated stand-ins for diffusers modules, swapped in by changing an instance's
class (so parameters, buffers, hooks registered afterwards and ``state_dict`` keys are
untouched, and undoing is restoring the class).

- :class:`FusedGroupNorm` is ``nn.GroupNorm`` computed by :func:`lddm_fast.ops.group_norm`,
  optionally with the SiLU that follows it and a FiLM scale/shift fused in.
- :class:`FusedAwaySiLU` is an ``nn.SiLU`` whose work a preceding FusedGroupNorm took over.
- :class:`AcceleratedResnetBlock2D` and :class:`AcceleratedTemporalResnetBlock` run the
  diffusers forward with each GroupNorm, SiLU (and scale-shift time embedding) as one op.
  Their norms are called as modules, so offload hooks on them still run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D, TemporalResnetBlock
from torch import nn

from lddm_fast import ops

# On CPU the fused op loses to ATen's GroupNorm (+ SiLU) where a channel has fewer
# positions than this, and for a GroupNorm without activation at every size measured
# (benchmarks/RESULTS.md, diffusers suite, site rows: 0.70-0.92x and 0.42-0.56x), so
# there the default keeps diffusers' own formulation.
CPU_MIN_POSITIONS = 256


class FusedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` through :func:`lddm_fast.ops.group_norm`.

    Instance attributes set by :func:`fuse_group_norm`: ``lddm_activation`` (None or
    ``"silu"``, applied after the affine) and ``lddm_backend`` (None: the default, which
    on CPU runs the unfused formulation where the fused op would be slower, see
    ``CPU_MIN_POSITIONS``; a backend name always runs the op on it).
    """

    lddm_activation: str | None
    lddm_backend: str | None

    def forward(
        self,
        x: torch.Tensor,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: ``[N, C, H, W]`` or ``[N, C, T, H, W]`` (any strides); scale, shift: ``[N, C]``
        FiLM or None. Returns ``act((norm(x) * weight + bias) * (1 + scale) + shift)``."""
        if self.lddm_backend is None and not x.is_cuda:
            if self.lddm_activation is None and scale is None and shift is None:
                # nn.GroupNorm's own call, inline: this path runs on every CPU call of a
                # temporal transformer's entry norm, where a method call would show.
                return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
            if self.lddm_activation is None or math.prod(x.shape[2:]) < CPU_MIN_POSITIONS:
                return self._unfused(x, scale, shift)
        return ops.group_norm(
            x,
            self.num_groups,
            self.weight,
            self.bias,
            self.eps,
            scale=scale,
            shift=shift,
            activation=self.lddm_activation,
            backend=self.lddm_backend,
        )

    def _unfused(self, x, scale, shift):
        # diffusers' own ops, in its order (ResnetBlock2D's scale-shift time embedding).
        y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        if scale is not None or shift is not None:
            view = (*x.shape[:2], *(1,) * (x.dim() - 2))
            if scale is not None:
                y = y * (1 + scale.reshape(view))
            if shift is not None:
                y = y + shift.reshape(view)
        return y if self.lddm_activation is None else F.silu(y)


class FusedAwaySiLU(nn.SiLU):
    """The SiLU after a :class:`FusedGroupNorm` that applies it already: identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fuse_group_norm(norm: nn.GroupNorm, activation: str | None, backend: str | None) -> None:
    norm.__class__ = FusedGroupNorm
    norm.lddm_activation = activation
    norm.lddm_backend = backend


def unfuse_group_norm(norm: FusedGroupNorm) -> None:
    del norm.lddm_activation, norm.lddm_backend
    norm.__class__ = nn.GroupNorm


class AcceleratedResnetBlock2D(ResnetBlock2D):
    """diffusers' ``ResnetBlock2D.forward`` (0.42) with ``norm1`` + SiLU and ``norm2`` (+
    scale-shift time embedding) + SiLU fused; same arguments and result.
    input_tensor: ``[N, C, H, W]``; temb: ``[N, temb_channels]`` or None."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs):
        hidden_states = self.norm1(input_tensor)
        if self.upsample is not None:
            # As diffusers: upsample_nearest_nhwc fails with large batch sizes.
            if hidden_states.shape[0] >= 64:
                input_tensor = input_tensor.contiguous()
                hidden_states = hidden_states.contiguous()
            input_tensor = self.upsample(input_tensor)
            hidden_states = self.upsample(hidden_states)
        elif self.downsample is not None:
            input_tensor = self.downsample(input_tensor)
            hidden_states = self.downsample(hidden_states)
        hidden_states = self.conv1(hidden_states)
        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        if self.time_embedding_norm == "scale_shift":
            if temb is None:
                raise ValueError(
                    f" `temb` should not be None when `time_embedding_norm` is "
                    f"{self.time_embedding_norm}"
                )
            scale, shift = torch.chunk(temb, 2, dim=1)  # [N, C, 1, 1] -> the op's [N, C]
            hidden_states = self.norm2(
                hidden_states, scale=scale.flatten(1), shift=shift.flatten(1)
            )
        else:
            if temb is not None:
                hidden_states = hidden_states + temb
            hidden_states = self.norm2(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.conv2(hidden_states)
        if self.conv_shortcut is not None:
            if self.training:
                input_tensor = input_tensor.contiguous()
            input_tensor = self.conv_shortcut(input_tensor)
        return (input_tensor + hidden_states) / self.output_scale_factor


class AcceleratedTemporalResnetBlock(TemporalResnetBlock):
    """diffusers' ``TemporalResnetBlock.forward`` (0.42) with both GroupNorm + SiLU fused.
    input_tensor: ``[B, C, T, H, W]`` (a permuted view); temb: ``[B, T, temb_channels]``."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv1(self.norm1(input_tensor))
        if self.time_emb_proj is not None:
            temb = self.time_emb_proj(self.nonlinearity(temb))[:, :, :, None, None]
            hidden_states = hidden_states + temb.permute(0, 2, 1, 3, 4)
        hidden_states = self.conv2(self.dropout(self.norm2(hidden_states)))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        return input_tensor + hidden_states


ACCELERATED_BLOCKS: dict[type, type] = {
    ResnetBlock2D: AcceleratedResnetBlock2D,
    TemporalResnetBlock: AcceleratedTemporalResnetBlock,
}
