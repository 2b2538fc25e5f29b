"""Size and cost of a preset, for ``lddm-fast info --preset NAME``."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from lddm_fast import ops
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.config import preset as get_preset
from lddm_fast.models.denoiser import LatentDenoiser

__all__ = ["denoiser_flops", "describe"]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def denoiser_flops(preset: str, batch: int = 1) -> tuple[int, dict[str, int]]:
    """FLOPs of one denoiser forward for a preset at ``batch`` (x0 encoder included).

    The model and inputs are fake tensors (shapes only: nothing is allocated or
    computed, so busv128 costs milliseconds), and the ops run under the ``reference``
    backend because custom kernels are opaque to the counter; the count is the same
    math either way. Norms and elementwise ops count as 0, as in
    :class:`torch.utils.flop_counter.FlopCounterMode`.

    Returns:
        (total FLOPs, FLOPs per aten op name).
    """
    if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    config = get_preset(preset)
    with FakeTensorMode():
        model = LatentDenoiser(config.denoiser).eval()
        z = torch.empty(batch, *config.latent_shape)
        x0 = torch.empty(batch, config.channels, config.size, config.size)
        t = torch.zeros(batch)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), ops.use_backend("reference"), counter:
            model(z, t, x0)
    per_op = {
        str(op).removeprefix("aten."): int(n)
        for op, n in counter.get_flop_counts()["Global"].items()
    }
    return counter.get_total_flops(), per_op


def describe(preset: str, batch: int = 1) -> str:
    """A human-readable summary of a preset: data layout, schedule, parameter counts
    of each network and the FLOPs of one denoiser forward at ``batch``.

    Args:
        preset: ``tiny``, ``phantom64`` or ``busv128``.
        batch: videos per denoiser forward.
    """
    config = get_preset(preset)
    with torch.device("meta"):
        counts = {
            "autoencoder": _count(VideoAutoencoder(config.autoencoder)),
            "denoiser": _count(LatentDenoiser(config.denoiser)),
        }
    total, per_op = denoiser_flops(preset, batch)
    c_z, t, h, w = config.latent_shape
    lines = [
        f"preset {preset}: {config.channels}-channel {config.size}x{config.size}, "
        f"{config.num_frames} frames; latent z [{c_z}, {t}, {h}, {w}]",
        f"schedule: {config.beta_schedule}, {config.num_train_timesteps} steps, "
        f"{config.prediction_type}-prediction",
        "parameters:",
        *(f"  {name:<12} {n:>13,} ({n / 1e6:.2f} M)" for name, n in counts.items()),
        f"  {'total':<12} {sum(counts.values()):>13,}",
        f"denoiser forward at batch {batch}: {total / 1e9:.3f} GFLOP "
        f"({total / batch / 1e9:.3f} per video; reference-backend ops)",
        *(
            f"  {op:<28} {n / 1e9:>9.3f} GFLOP"
            for op, n in sorted(per_op.items(), key=lambda kv: -kv[1])
        ),
    ]
    return "\n".join(lines)
