"""lddm_fast: fast ultrasound image-to-video synthesis with latent dynamic diffusion.

Public entry points: :mod:`lddm_fast.ops` (fused ops with backend dispatch),
:class:`lddm_fast.LDDMPipeline` (images in, videos out; imported on first use so
``import lddm_fast`` stays light) and the ``lddm-fast`` command (:mod:`lddm_fast.cli`).
"""

__version__ = "0.1.0"

from lddm_fast import ops  # noqa: E402  (ops needs __version__-free import order only)

__all__ = ["LDDMPipeline", "__version__", "ops"]


def __getattr__(name: str):
    # PEP 562 lazy attribute: the pipeline pulls in the models and samplers.
    if name == "LDDMPipeline":
        from lddm_fast.diffusion.pipeline import LDDMPipeline

        return LDDMPipeline
    raise AttributeError(f"module 'lddm_fast' has no attribute {name!r}")
