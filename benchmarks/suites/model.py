"""The ``model`` suite: one denoiser forward per preset and batch, the eager
reference backend against each fast backend and the default dispatch, with parity
against a float64 copy of the same weights; and one autoencoder decode per preset and
batch, the decoder's SPADE norms unfused (GroupNorm op, then eager modulation and SiLU:
the formulation before ops.group_norm took a spatial scale/shift) against fused."""

from __future__ import annotations

import contextlib
import copy

import torch

from harness import Case
from lddm_fast import ops
from lddm_fast.models import LatentDenoiser, VideoAutoencoder, preset
from lddm_fast.models.autoencoder import SpadeNorm
from lddm_fast.models.layers import draw_zero_parameters
from lddm_fast.models.summary import denoiser_flops
from lddm_fast.ops import dispatch
from shapes import MODEL

MODEL_OPS = ("group_norm", "temporal_attention")


def _forward_under(model, backend: str | None):
    def run(z, t, x0):
        with torch.no_grad(), ops.use_backend(backend):
            return model(z, t, x0).sample

    return run


@contextlib.contextmanager
def _unfused_spade():
    """SpadeNorm in its unfused formulation for the duration of the block."""
    fused = SpadeNorm.forward
    SpadeNorm.forward = SpadeNorm.forward_unfused
    try:
        yield
    finally:
        SpadeNorm.forward = fused


def _decode_under(model, backend: str | None, unfused: bool):
    def run(z, x0):
        spade = _unfused_spade() if unfused else contextlib.nullcontext()
        with torch.no_grad(), ops.use_backend(backend), spade:
            return model.decode(z, x0).sample

    return run


def decode_cases(device: str, dtype: torch.dtype, quick: bool) -> list[Case]:
    """Autoencoder decode, SPADE unfused vs fused, in the same run: ``unfused`` (the
    baseline) and ``fused`` with the default backends, ``eager`` all-reference unfused."""
    out = []
    for name, batch in MODEL[device][: 1 if quick else None]:
        config = preset(name)
        torch.manual_seed(0)
        base = draw_zero_parameters(VideoAutoencoder(config.autoencoder)).eval()
        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        model64 = copy.deepcopy(base).to(device=device, dtype=torch.float64)

        def make(config=config, batch=batch):
            z = torch.randn(batch, *config.latent_shape, device=device).to(dtype)
            x0 = torch.rand(batch, config.channels, config.size, config.size, device=device) * 2 - 1
            return z, x0.to(dtype)

        providers = {
            "unfused": _decode_under(model, None, unfused=True),
            "fused": _decode_under(model, None, unfused=False),
            "eager": _decode_under(model, "reference", unfused=True),
        }

        def expected(z, x0, model64=model64):
            with torch.no_grad(), ops.use_backend("reference"):
                return model64.decode(z.double(), x0.double()).sample

        out.append(
            Case(
                suite="model",
                op="autoencoder decode (SPADE unfused vs fused)",
                label=f"{name} batch {batch}",
                dtype=dtype,
                params={
                    "preset": name,
                    "batch": batch,
                    "spade_group_norm_backend": ops.default_choice("group_norm", device, dtype),
                },
                make_inputs=make,
                providers=providers,
                expected=expected,
                bytes_moved=0,
            )
        )
    return out


def cases(device: str, dtype: torch.dtype, quick: bool, compile_: bool = True) -> list[Case]:
    out = decode_cases(device, dtype, quick)
    for name, batch in MODEL[device][: 1 if quick else None]:
        config = preset(name)
        torch.manual_seed(0)
        base = draw_zero_parameters(LatentDenoiser(config.denoiser)).eval()
        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        model64 = copy.deepcopy(base).to(device=device, dtype=torch.float64)

        def make(config=config, batch=batch):
            z = torch.randn(batch, *config.latent_shape, device=device).to(dtype)
            t = torch.randint(0, config.num_train_timesteps, (batch,), device=device)
            x0 = torch.rand(batch, config.channels, config.size, config.size, device=device) * 2 - 1
            return z, t, x0.to(dtype)

        providers = {"eager": _forward_under(model, "reference")}
        notes: dict[str, str] = {}
        if compile_:
            providers["compile"] = torch.compile(_forward_under(model, "reference"))
        else:
            notes["compile"] = "torch.compile disabled (--no-compile)"
        providers["default"] = _forward_under(model, None)
        for bname, backend in dispatch.backends().items():
            if bname == "reference":
                continue
            why = next(
                (w for op in MODEL_OPS if (w := backend.refusal(op, device, dtype, False))), None
            )
            if why is None and "interpreter" in backend.status():
                why = "Triton interpreter: correctness only, not timed"
            if why is None:
                providers[bname] = _forward_under(model, bname)
            else:
                notes[bname] = why

        def expected(z, t, x0, model64=model64):
            with torch.no_grad(), ops.use_backend("reference"):
                return model64(z.double(), t, x0.double()).sample

        picks = {op: ops.default_choice(op, device, dtype) for op in MODEL_OPS}
        out.append(
            Case(
                suite="model",
                op="denoiser forward",
                label=f"{name} batch {batch}",
                dtype=dtype,
                params={"preset": name, "batch": batch, "default_backends": picks},
                make_inputs=make,
                providers=providers,
                expected=expected,
                bytes_moved=0,
                flops=denoiser_flops(name, batch)[0],
                notes=notes,
            )
        )
    return out
