"""Training both LDDM stages (``lddm-fast train-ae``, ``lddm-fast train-diffusion``).

- :mod:`~lddm_fast.train.data`: the splits of a data folder, per-sample seeded clips
  and the step-keyed batch order (what makes resume and DDP exact);
- :mod:`~lddm_fast.train.loop`: the shared loop (AdamW, schedule, clipping, EMA,
  autocast, DDP, checkpoints, logs);
- :mod:`~lddm_fast.train.state`: training-state saves;
- :mod:`~lddm_fast.train.autoencoder`, :mod:`~lddm_fast.train.diffusion`: the two
  stage objectives, their held-out metrics and exports.
"""
