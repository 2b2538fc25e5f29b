"""Fixtures for the model tests: tiny configs, perturbed weights, backend selection."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from lddm_fast import ops
from lddm_fast.models import LDDMConfig, build_models, preset
from lddm_fast.ops.dispatch import Backend, backends

# Every backend but the reference is compared against the reference.
FAST_BACKENDS = ("cpp", "cuda", "triton")


def backend_device(backend: Backend) -> torch.device | None:
    """The device to test ``backend`` on (CUDA when it and a GPU are there), or None."""
    if "cuda" in backend.devices and torch.cuda.is_available():
        return torch.device("cuda")
    if "cpu" in backend.devices:
        return torch.device("cpu")
    return None


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request) -> tuple[str, torch.device, Backend]:
    """Each non-reference backend that works here, with the device it runs on."""
    name = request.param
    backend = backends().get(name)
    if backend is None:
        pytest.skip(f"backend {name!r} is not registered in lddm_fast.ops")
    status = ops.available_backends()[name]
    if not status.startswith("ok"):
        pytest.skip(f"backend {name!r} unavailable: {status}")
    device = backend_device(backend)
    if device is None:
        pytest.skip(f"backend {name!r} runs on {'/'.join(backend.devices)}; no such device here")
    return name, device, backend


@pytest.fixture(autouse=True)
def _one_thread():
    """Run each test single-threaded: the tiny tensors here are far too small to gain
    from intra-op parallelism, and on a busy 2-core machine every op's thread
    hand-off then costs milliseconds (a 0.2 ms GroupNorm took 75 ms with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config() -> LDDMConfig:
    return preset("tiny")


@pytest.fixture
def perturb() -> Callable[[nn.Module, int], nn.Module]:
    """Add N(0, 0.05) noise to every parameter.

    Fresh models end every residual branch in a zero projection, so they output
    zeros and pass no gradient into the branches; perturbed weights make parity and
    gradient checks meaningful.
    """

    def apply(module: nn.Module, seed: int = 0) -> nn.Module:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))
        return module

    return apply


@pytest.fixture
def tiny_models(tiny_config, perturb):
    """Perturbed tiny autoencoder and denoiser (seeded), in eval mode."""
    torch.manual_seed(0)
    models = build_models(tiny_config)
    perturb(models.autoencoder, 1)
    perturb(models.denoiser, 2)
    models.autoencoder.eval()
    models.denoiser.eval()
    return models


def tiny_inputs(config: LDDMConfig, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random frames, x0, latent and timesteps for ``config``."""
    gen = torch.Generator().manual_seed(seed)
    c, s, t = config.channels, config.size, config.num_frames
    return {
        "frames": torch.randn(batch, c, t, s, s, generator=gen),
        "x0": torch.randn(batch, c, s, s, generator=gen),
        "z": torch.randn(batch, *config.latent_shape, generator=gen),
        "t": torch.randint(0, config.num_train_timesteps, (batch,), generator=gen),
    }


@pytest.fixture
def make_inputs() -> Callable[..., dict[str, torch.Tensor]]:
    return tiny_inputs
