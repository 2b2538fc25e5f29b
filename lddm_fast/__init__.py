"""lddm_fast: fast ultrasound image-to-video synthesis with latent dynamic diffusion.

Public entry points: :mod:`lddm_fast.ops` (fused ops with backend dispatch),
:class:`lddm_fast.LDDMPipeline` (images in, videos out; imported on first use so
``import lddm_fast`` stays light), :func:`lddm_fast.accelerate` (the same kernels inside a
diffusers video UNet; imports diffusers only when used) and the ``lddm-fast`` command
(:mod:`lddm_fast.cli`).
"""

__version__ = "0.1.0"

from lddm_fast import ops  # noqa: E402  (ops needs __version__-free import order only)

__all__ = ["LDDMPipeline", "__version__", "accelerate", "ops"]


def __getattr__(name: str):
    # PEP 562 lazy attributes: the pipeline pulls in the models and samplers, accelerate
    # pulls in diffusers (an optional extra).
    if name == "LDDMPipeline":
        from lddm_fast.diffusion.pipeline import LDDMPipeline

        return LDDMPipeline
    if name == "accelerate":
        from lddm_fast.integrations.diffusers import accelerate

        return accelerate
    raise AttributeError(f"module 'lddm_fast' has no attribute {name!r}")
