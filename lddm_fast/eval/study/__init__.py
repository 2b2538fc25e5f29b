"""The augmentation study (``lddm-fast study``): do LDDM-synthesized videos train
better benign/malignant video classifiers than real videos alone, or than simple
synthetic baselines? See :mod:`lddm_fast.eval.study.command` for the command and
:func:`lddm_fast.eval.study.runner.run_study` for the API."""
