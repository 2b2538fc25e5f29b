"""Binary classification metrics of the study (malignant is the positive class)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

__all__ = ["binary_metrics"]


def binary_metrics(scores, labels, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC and F1 of ``scores`` (probability of the
    positive class, ``[N]``) against ``labels`` (0/1, ``[N]``).

    AUC is the Mann-Whitney statistic (ties count one half); it and balanced accuracy
    are NaN when the labels hold one class only; F1 is 0 without a true positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal 1-D")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    pred = scores >= threshold
    pos, neg = labels == 1, labels == 0
    tp, fp = int(np.sum(pred & pos)), int(np.sum(pred & neg))
    fn, tn = int(np.sum(~pred & pos)), int(np.sum(~pred & neg))
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos and n_neg:
        ranks = rankdata(scores)
        auc = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        balanced = 0.5 * (tp / n_pos + tn / n_neg)
    else:
        auc = balanced = math.nan
    return {
        "accuracy": (tp + tn) / max(1, len(labels)),
        "balanced_accuracy": float(balanced),
        "auc": float(auc),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
    }
