"""Large offline batch synthesis: many images to many videos, sharded and resumable.

The command is ``lddm-fast synthesize`` (or ``torchrun ... -m lddm_fast.synth``,
:mod:`lddm_fast.synth.cli`). The parts:

* :mod:`~lddm_fast.synth.inputs`: the input listing, streamed (:class:`InputSet`).
* :mod:`~lddm_fast.synth.seeds`: the seed of video k of an input (:func:`input_video_seed`).
* :mod:`~lddm_fast.synth.engine`: the decode -> sample -> write pipeline
  (:class:`SynthEngine`), which takes any :class:`VideoSampler`.
* :mod:`~lddm_fast.synth.adapter`: the sampler over :class:`lddm_fast.LDDMPipeline`.
* :mod:`~lddm_fast.synth.manifest`: manifest, failures, run config, crash leftovers.
* :mod:`~lddm_fast.synth.distributed`: ranks, shards, barriers.

Names are imported on first use, so importing the package (as the CLI parser does)
does not import torch.
"""

from __future__ import annotations

from lddm_fast._lazy import lazy_exports

_EXPORTS = {
    "InputItem": "inputs",
    "InputSet": "inputs",
    "input_video_seed": "seeds",
    "SampledBatch": "engine",
    "Summary": "engine",
    "SynthEngine": "engine",
    "VideoSampler": "engine",
    "load_sampler": "adapter",
    "shard_of": "distributed",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
