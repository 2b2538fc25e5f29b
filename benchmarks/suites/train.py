"""The ``train`` suite: one optimizer step (forward, backward, AdamW) of each LDDM
stage at the phantom64 preset, batch 4: the reference backend (eager PyTorch ops)
against the default dispatch (the fused kernels with their backward where a backend
has one) and torch.compile of the reference step, in the same run. Parity: the
parameter gradients of the first step against a float64 copy of the same weights."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from harness import Case
from lddm_fast import ops
from lddm_fast.models import LatentDenoiser, VideoAutoencoder, preset
from lddm_fast.models.layers import draw_zero_parameters
from lddm_fast.train.autoencoder import AutoencoderObjective
from lddm_fast.train.diffusion import DiffusionObjective

PRESET = "phantom64"
BATCH = {"cpu": 4, "cuda": 16}


def _grads(objective: nn.Module) -> torch.Tensor:
    """Every parameter gradient of the step, flattened into one float32 vector."""
    grads = [p.grad.flatten().float() for p in objective.parameters() if p.grad is not None]
    return torch.cat(grads)


def _step(objective: nn.Module, backend: str | None, compiled: bool = False) -> Callable:
    """A provider: one AdamW step of its own copy of ``objective``; returns the flat
    parameter gradients of that step (taken before the update)."""
    objective = copy.deepcopy(objective)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    forward = torch.compile(objective) if compiled else objective

    def run(*inputs):
        with ops.use_backend(backend):
            optimizer.zero_grad(set_to_none=True)
            loss, _ = forward(*inputs)
            loss.backward()
        grads = _grads(objective)
        optimizer.step()
        return grads

    return run


def _expected(objective: nn.Module) -> Callable:
    objective64 = copy.deepcopy(objective).double()

    def run(*inputs):
        objective64.zero_grad(set_to_none=True)
        with ops.use_backend("reference"):
            loss, _ = objective64(*(t.double() if t.is_floating_point() else t for t in inputs))
            loss.backward()
        return _grads(objective64).double()

    return run


def _case(
    stage: str, objective: nn.Module, make: Callable, device: str, dtype, batch: int, compile_: bool
) -> Case:
    objective = objective.to(device=device, dtype=dtype).train()
    providers = {"reference": _step(objective, "reference")}
    notes: dict[str, str] = {}
    if compile_:
        providers["compile"] = _step(objective, "reference", compiled=True)
    else:
        notes["compile"] = "torch.compile disabled (--no-compile)"
    providers["default"] = _step(objective, None)
    picks = {
        op: ops.default_choice(op, device, dtype, needs_grad=True)
        for op in ("group_norm", "temporal_attention")
    }
    return Case(
        suite="train",
        op=f"{stage} training step",
        label=f"{PRESET} batch {batch}",
        dtype=dtype,
        params={"preset": PRESET, "batch": batch, "default_backends": picks},
        make_inputs=make,
        providers=providers,
        expected=_expected(objective),
        bytes_moved=0,
        notes=notes,
        items=batch,
        item_name="clips",
        interleave=True,  # a step of 0.1-1 s: a few calls per provider
    )


def cases(device: str, dtype: torch.dtype, quick: bool, compile_: bool = True) -> list[Case]:
    config = preset(PRESET)
    batch = BATCH[device]
    c_z, t, h, w = config.latent_shape
    torch.manual_seed(0)
    ae = draw_zero_parameters(VideoAutoencoder(config.autoencoder))
    ae_objective = AutoencoderObjective(ae, kl_weight=1e-4, ssim_weight=0.0)
    dn_objective = DiffusionObjective(draw_zero_parameters(LatentDenoiser(config.denoiser)), config)

    def ae_inputs():
        clip = torch.rand(batch, config.channels, t + 1, config.size, config.size) * 2 - 1
        eps = torch.randn(batch, c_z, t, h, w)
        return clip.to(device, dtype), eps.to(device, dtype)

    def dn_inputs():
        z0 = torch.randn(batch, c_z, t, h, w, device=device, dtype=dtype)
        x0 = torch.rand(batch, config.channels, config.size, config.size, device=device) * 2 - 1
        steps = torch.randint(0, config.num_train_timesteps, (batch,), device=device)
        noise = torch.randn_like(z0)
        drop = torch.zeros(batch, dtype=torch.bool, device=device)
        return z0, x0.to(dtype), steps, noise, drop

    return [
        _case("autoencoder", ae_objective, ae_inputs, device, dtype, batch, compile_),
        _case("denoiser", dn_objective, dn_inputs, device, dtype, batch, compile_),
    ]
