"""The eval tests run convolution-heavy networks on the CPU: one thread avoids
OpenMP oversubscription on small shared machines, where two threads run slower."""

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _TinyI3D(torch.nn.Module):
    """A stand-in FVD network: [B, 3, T, 224, 224] -> [B, 8] from a few pooled
    statistics and a fixed random projection (random weights, a fast forward)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = (x[:, :, 1:] - x[:, :, :-1]).abs()
        stats = torch.stack(
            [
                x.mean(dim=(1, 2, 3, 4)),
                x.std(dim=(1, 2, 3, 4)),
                diff.mean(dim=(1, 2, 3, 4)),
                x.amax(dim=(1, 2, 3, 4)),
            ],
            dim=1,
        )
        return self.proj(stats)


@pytest.fixture(scope="module")
def tiny_i3d(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_i3d.pt"
    with pytest.warns(DeprecationWarning, match="torch.jit.script"):
        torch.jit.script(_TinyI3D()).save(str(path))
    return path


def sine_video(seed, frames=16, size=(24, 32)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    phase = rng.uniform(0, 6)
    return np.stack(
        [np.sin((xx + 2 * t) / 4 + phase) * np.cos(yy / 5) * 80 + 128 for t in range(frames)]
    ).astype(np.uint8)


@pytest.fixture(scope="session")
def make_video():
    """``make_video(seed, frames=16, size=(24, 32))``: a uint8 ``[T, H, W]`` moving
    sine pattern, different for each seed."""
    return sine_video
