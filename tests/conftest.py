"""Shared test setup: the `gpu` marker skips with its reason on machines without CUDA."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def make_phantom(tmp_path_factory):
    """``make_phantom(name, size=, frames=, fractions=)``: a phantom dataset of 4 benign
    and 4 malignant clips in the BUSV layout under a fresh session folder."""
    from lddm_fast.data.phantom import PhantomConfig
    from lddm_fast.data.phantom_writer import write_phantom_dataset

    def make(name: str, *, size: int, frames: int, fractions: tuple[float, float, float]):
        root = tmp_path_factory.mktemp(name)
        write_phantom_dataset(
            root,
            {"benign": 4, "malignant": 4, "normal": 0},
            config=PhantomConfig(size=size, frames=frames),
            layouts=("busv",),
            fractions=fractions,
        )
        return root

    return make
