"""The LDDM networks, their configs and presets, and checkpoint I/O.

- :class:`VideoAutoencoder` (stage 1): frames -> latent dynamics z -> frames, with
  the first frame x0 modulating the decoder.
- :class:`LatentDenoiser` (stage 2): predicts eps or v of a noisy z given t and x0.
- :class:`LDDMConfig` and :func:`preset` (``tiny``, ``phantom64``, ``busv128``).
- :func:`save_pretrained` / :func:`from_pretrained`: the checkpoint directory.

Names are imported on first use (PEP 562), like the other subpackages.
"""

from __future__ import annotations

from lddm_fast._lazy import lazy_exports

_EXPORTS = {
    "PRESETS": "config",
    "AutoencoderConfig": "config",
    "AutoencoderOutput": "autoencoder",
    "CheckpointError": "checkpoint",
    "ConfigFieldError": "config",
    "DecoderOutput": "autoencoder",
    "DenoiserConfig": "config",
    "DenoiserOutput": "denoiser",
    "DiagonalGaussian": "autoencoder",
    "EncoderOutput": "autoencoder",
    "LDDMConfig": "config",
    "LDDMModels": "checkpoint",
    "LatentDenoiser": "denoiser",
    "VideoAutoencoder": "autoencoder",
    "build_models": "checkpoint",
    "from_pretrained": "checkpoint",
    "preset": "config",
    "save_pretrained": "checkpoint",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
