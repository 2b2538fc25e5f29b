"""Walk a diffusers video UNet and swap in the fused ops where the numerics are the same.

What is replaced (everything else is left to PyTorch, and named in the report):

- every ``ResnetBlock2D`` / ``TemporalResnetBlock`` with SiLU: both GroupNorm + SiLU
  pairs, and the scale-shift time embedding where the config asks for it, become one
  :func:`lddm_fast.ops.group_norm` call each;
- GroupNorm followed by SiLU inside an ``nn.Sequential`` (``TemporalConvLayer``);
- the GroupNorm at the entry of every temporal transformer;
- self-attention over frames inside the temporal transformers: a
  :class:`~lddm_fast.integrations.diffusers.attention.TemporalAttnProcessor`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
    TransformerTemporalModel,
)
from diffusers.models.unets.unet_i2vgen_xl import I2VGenXLTransformerTemporalEncoder
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from lddm_fast.integrations.diffusers.attention import (
    REPLACEABLE,
    TemporalAttnProcessor,
    unsupported,
)
from lddm_fast.integrations.diffusers.modules import (
    ACCELERATED_BLOCKS,
    FusedAwaySiLU,
    FusedGroupNorm,
    fuse_group_norm,
    unfuse_group_norm,
)

REPORT_ATTR = "lddm_fast_acceleration"
_ENTRY_NORM = (TransformerTemporalModel, TransformerSpatioTemporalModel, AnimateDiffTransformer3D)


@dataclass
class AccelerationReport:
    """What :func:`accelerate` did to one model.

    replaced: module name -> what runs there now.
    skipped: module name -> why it was left alone (every GroupNorm and attention
        module that was not replaced is listed).
    """

    replaced: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"lddm_fast.accelerate: {len(self.replaced)} replaced, {len(self.skipped)} skipped"
        ]
        lines += [f"  replaced {name}: {what}" for name, what in self.replaced.items()]
        lines += [f"  skipped  {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _hooked(*modules: nn.Module) -> bool:
    # accelerate's and diffusers' hooks both wrap a module by setting an instance
    # `forward`; such a wrapper calls the forward it saw, so a class swap would not run.
    return any("forward" in vars(m) for m in modules)


HOOK_REASON = "its forward is wrapped by a hook (e.g. CPU offload) set before accelerate"


def _is_group_norm(m: nn.Module) -> bool:
    return type(m) in (nn.GroupNorm, FusedGroupNorm)


def _is_silu(m: nn.Module) -> bool:
    return type(m) in (nn.SiLU, FusedAwaySiLU)


def _block_refusal(block: nn.Module) -> str | None:
    if not (_is_group_norm(block.norm1) and _is_group_norm(block.norm2)):
        return "its norms are not nn.GroupNorm"
    if not isinstance(block.nonlinearity, nn.SiLU):
        return f"its activation is {type(block.nonlinearity).__name__}, not SiLU"
    if getattr(block, "time_embedding_norm", "default") not in ("default", "scale_shift"):
        return f"time_embedding_norm={block.time_embedding_norm!r}"
    if _hooked(block, block.norm1, block.norm2):
        return HOOK_REASON
    return None


def _temporal_attention_modules(model: nn.Module) -> dict[str, Attention]:
    """Attention modules that attend over frames, by qualified name."""
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, TransformerSpatioTemporalModel):
            scope, prefix = m.temporal_transformer_blocks, f"{name}.temporal_transformer_blocks"
        elif isinstance(m, TransformerTemporalModel | AnimateDiffTransformer3D):
            scope, prefix = m.transformer_blocks, f"{name}.transformer_blocks"
        elif isinstance(m, I2VGenXLTransformerTemporalEncoder):
            scope, prefix = m, name
        else:
            continue
        for sub, attn in scope.named_modules():
            if isinstance(attn, Attention):
                found[f"{prefix}.{sub}" if sub else prefix] = attn
    return found


def accelerate_module(model: nn.Module, backend: str | None) -> AccelerationReport:
    """Swap the fused ops into ``model`` in place; see the module docstring."""
    report = AccelerationReport()
    done: set[int] = set()  # ids of GroupNorms handled (fused or deliberately skipped)
    modules = dict(model.named_modules())
    for name, m in modules.items():
        base = type(m).__mro__[1] if type(m) in ACCELERATED_BLOCKS.values() else type(m)
        if base in ACCELERATED_BLOCKS:
            done.update((id(m.norm1), id(m.norm2)))
            why = _block_refusal(m)
            if why is not None:
                report.skipped[name] = f"{base.__name__}: {why}"
                continue
            m.__class__ = ACCELERATED_BLOCKS[base]
            fuse_group_norm(m.norm1, "silu", backend)
            fuse_group_norm(m.norm2, "silu", backend)
            film = getattr(m, "time_embedding_norm", "default") == "scale_shift"
            film = " with the scale-shift time embedding" if film else ""
            report.replaced[name] = f"{base.__name__}: GroupNorm+SiLU x2{film} -> ops.group_norm"
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (norm_name, norm), (_, act) in zip(children, children[1:], strict=False):
                if _is_group_norm(norm) and _is_silu(act) and id(norm) not in done:
                    done.add(id(norm))
                    if _hooked(norm, act):
                        report.skipped[f"{name}.{norm_name}"] = f"GroupNorm: {HOOK_REASON}"
                        continue
                    fuse_group_norm(norm, "silu", backend)
                    act.__class__ = FusedAwaySiLU
                    report.replaced[f"{name}.{norm_name}"] = "GroupNorm+SiLU -> ops.group_norm"
        elif isinstance(m, _ENTRY_NORM) and _is_group_norm(m.norm):
            done.add(id(m.norm))
            if _hooked(m.norm):
                report.skipped[f"{name}.norm"] = f"GroupNorm: {HOOK_REASON}"
                continue
            fuse_group_norm(m.norm, None, backend)
            report.replaced[f"{name}.norm"] = (
                "temporal transformer entry GroupNorm -> ops.group_norm"
            )
    for name, m in modules.items():
        if _is_group_norm(m) and id(m) not in done:
            report.skipped[name] = (
                "GroupNorm outside the blocks accelerate rewrites (its SiLU, if any, is "
                "applied by the parent's forward)"
            )
    temporal = _temporal_attention_modules(model)
    for name, attn in temporal.items():
        processor = attn.processor
        if isinstance(processor, TemporalAttnProcessor):
            processor.backend = backend
        elif not isinstance(processor, REPLACEABLE):
            report.skipped[name] = f"attention: custom processor {type(processor).__name__}"
            continue
        why = unsupported(attn)
        if why is not None:
            report.skipped[name] = f"attention: {why}"
            continue
        if not isinstance(processor, TemporalAttnProcessor):
            attn.set_processor(TemporalAttnProcessor(processor, backend))
        report.replaced[name] = "self-attention over frames -> ops.temporal_attention"
    for name, m in modules.items():
        if isinstance(m, Attention) and name not in temporal:
            report.skipped[name] = "attention over pixels or text, not frames"
    return report


def undo_module(model: nn.Module) -> None:
    """Restore every module :func:`accelerate_module` changed (classes and processors)."""
    for m in model.modules():
        if type(m) in ACCELERATED_BLOCKS.values():
            m.__class__ = type(m).__mro__[1]
        elif isinstance(m, FusedGroupNorm):
            unfuse_group_norm(m)
        elif isinstance(m, FusedAwaySiLU):
            m.__class__ = nn.SiLU
        elif isinstance(m, Attention) and isinstance(m.processor, TemporalAttnProcessor):
            m.set_processor(m.processor.fallback)
