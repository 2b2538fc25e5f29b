"""Fixtures of the trainer tests: a small phantom dataset in the BUSV layout (32 px,
6 frames per clip, which the ``tiny`` preset's 4 + 1 frames crop from), made once."""

import pytest

from lddm_fast.data.phantom import PhantomConfig
from lddm_fast.data.phantom_writer import write_phantom_dataset


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(
        root,
        {"benign": 4, "malignant": 4, "normal": 0},
        config=PhantomConfig(size=32, frames=6),
        layouts=("busv",),
        fractions=(0.75, 0.25, 0.0),
    )
    return root
