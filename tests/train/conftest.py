"""Fixtures of the trainer tests: a small phantom dataset in the BUSV layout (32 px,
6 frames per clip, which the ``tiny`` preset's 4 + 1 frames crop from), made once."""

import pytest


@pytest.fixture(scope="session")
def phantom_root(make_phantom):
    return make_phantom("phantom", size=32, frames=6, fractions=(0.75, 0.25, 0.0))
