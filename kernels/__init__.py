"""Triton kernels for :mod:`lddm_fast.ops`, installed as ``lddm_fast.kernels`` (PyPI
already has a package named ``kernels``). One module per op: its ``@triton.jit``
kernels and the host function that launches them."""
