"""The eval tests run convolution-heavy networks on the CPU: one thread avoids
OpenMP oversubscription on small shared machines, where two threads run slower."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
