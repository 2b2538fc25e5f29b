"""The LDDM networks, their configs and presets, and checkpoint I/O.

- :class:`VideoAutoencoder` (stage 1): frames -> latent dynamics z -> frames, with
  the first frame x0 modulating the decoder.
- :class:`LatentDenoiser` (stage 2): predicts eps or v of a noisy z given t and x0.
- :class:`LDDMConfig` and :func:`preset` (``tiny``, ``phantom64``, ``busv128``).
- :func:`save_pretrained` / :func:`from_pretrained`: the checkpoint directory.
"""

from lddm_fast.models.autoencoder import (
    AutoencoderOutput,
    DecoderOutput,
    DiagonalGaussian,
    EncoderOutput,
    VideoAutoencoder,
)
from lddm_fast.models.checkpoint import (
    CheckpointError,
    LDDMModels,
    build_models,
    from_pretrained,
    save_pretrained,
)
from lddm_fast.models.config import (
    PRESETS,
    AutoencoderConfig,
    ConfigFieldError,
    DenoiserConfig,
    LDDMConfig,
    preset,
)
from lddm_fast.models.denoiser import DenoiserOutput, LatentDenoiser

__all__ = [
    "PRESETS",
    "AutoencoderConfig",
    "AutoencoderOutput",
    "CheckpointError",
    "ConfigFieldError",
    "DecoderOutput",
    "DenoiserConfig",
    "DenoiserOutput",
    "DiagonalGaussian",
    "EncoderOutput",
    "LDDMConfig",
    "LDDMModels",
    "LatentDenoiser",
    "VideoAutoencoder",
    "build_models",
    "from_pretrained",
    "preset",
    "save_pretrained",
]
