"""lddm_fast: fast ultrasound image-to-video synthesis with latent dynamic diffusion.

Public entry points: :mod:`lddm_fast.ops` (fused ops with backend dispatch) and the
``lddm-fast`` command (:mod:`lddm_fast.cli`).
"""

__version__ = "0.1.0"

from lddm_fast import ops  # noqa: E402  (ops needs __version__-free import order only)

__all__ = ["__version__", "ops"]
