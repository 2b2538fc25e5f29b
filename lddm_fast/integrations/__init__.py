"""Our kernels inside other libraries' models (optional dependencies, imported only on
use): :mod:`lddm_fast.integrations.diffusers` backs :func:`lddm_fast.accelerate`."""
