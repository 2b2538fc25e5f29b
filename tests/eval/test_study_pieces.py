"""The study's pieces: metrics against brute force, the classifier's shapes, the
paired real subsets, and the report's aggregation, tables and plot."""

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lddm_fast.eval.study import report
from lddm_fast.eval.study.classifier import ClassifierConfig, VideoClassifier
from lddm_fast.eval.study.metrics import binary_metrics
from lddm_fast.eval.study.videos import VideoSet, real_subset


def _brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_metrics_match_their_definitions():
    rng = np.random.default_rng()
    labels = rng.integers(0, 2, 41)
    labels[:2] = (0, 1)
    scores = rng.integers(0, 8, 41) / 7  # many ties
    m = binary_metrics(scores, labels)
    assert m["auc"] == pytest.approx(_brute_auc(scores, labels))
    pred = scores >= 0.5
    tp = np.sum(pred & (labels == 1))
    fp, fn = np.sum(pred & (labels == 0)), np.sum(~pred & (labels == 1))
    tpr, tnr = tp / np.sum(labels == 1), np.sum(~pred & (labels == 0)) / np.sum(labels == 0)
    assert m["accuracy"] == pytest.approx(np.mean(pred == labels))
    assert m["balanced_accuracy"] == pytest.approx((tpr + tnr) / 2)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_metrics_edge_cases():
    assert binary_metrics([0.9, 0.1], [1, 0])["auc"] == 1.0
    assert binary_metrics([0.1, 0.9], [1, 0])["auc"] == 0.0
    one_class = binary_metrics([0.2, 0.7], [1, 1])
    assert math.isnan(one_class["auc"]) and math.isnan(one_class["balanced_accuracy"])
    assert binary_metrics([0.1, 0.2], [1, 0])["f1"] == 0.0
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics([0.5], [2])


@pytest.mark.parametrize("shape", [(3, 1, 7, 64, 64), (2, 1, 1, 1, 1), (1, 1, 16, 40, 24)])
def test_classifier_takes_odd_clips(shape):
    model = VideoClassifier(ClassifierConfig(widths=(8, 16), stem_width=8))
    logits = model(torch.randn(shape))
    assert logits.shape == (shape[0], 2) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_classifier_refuses_color_or_4d_input():
    model = VideoClassifier()
    with pytest.raises(ValueError, match=r"\[B, 1, T, H, W\]"):
        model(torch.randn(2, 3, 4, 8, 8))


def _set(n_benign, n_malignant):
    labels = torch.tensor([0] * n_benign + [1] * n_malignant)
    videos = torch.randint(0, 256, (len(labels), 3, 4, 4), dtype=torch.uint8)
    return VideoSet(videos, labels, [f"v{i}" for i in range(len(labels))])


def test_real_subset_is_stratified_paired_and_seeded():
    train = _set(30, 10)
    a = real_subset(train, 0.1, seed=4)
    assert a == real_subset(train, 0.1, seed=4)  # every arm gets the same clips
    assert a != real_subset(train, 0.1, seed=5)
    counts = torch.bincount(train.labels[a], minlength=2).tolist()
    assert counts == [3, 1]
    assert sorted(real_subset(train, 1.0, seed=0)) == list(range(40))
    assert torch.bincount(train.labels[real_subset(train, 0.01, 0)]).tolist() == [1, 1]
    with pytest.raises(ValueError, match="fraction"):
        real_subset(train, 0.0, 0)


def _runs():
    runs = []
    for fraction, seed, arm in itertools.product((0.1, 1.0), range(3), ("real", "real+lddm")):
        auc = 0.6 + 0.1 * (arm == "real+lddm") + 0.2 * (fraction == 1.0) + 0.01 * seed
        test = {"auc": auc, "balanced_accuracy": auc - 0.1, "accuracy": auc, "f1": auc}
        runs.append({"arm": arm, "fraction": fraction, "seed": seed, "test": test})
    return runs


def test_aggregate_and_paired_differences():
    runs, arms, fractions = _runs(), ["real", "real+lddm"], [0.1, 1.0]
    agg = report.aggregate(runs, arms, fractions)
    cell = agg["real+lddm"]["0.1"]["auc"]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(0.71)
    assert cell["std"] == pytest.approx(0.01)
    diff = report.paired(runs, arms, fractions)["real+lddm"]["0.1"]["auc"]
    assert diff["mean"] == pytest.approx(0.1) and diff["std"] == pytest.approx(0.0, abs=1e-12)
    assert diff["wins"] == 3 and "real" not in report.paired(runs, arms, fractions)


def test_markdown_and_plot(tmp_path):
    runs, arms, fractions = _runs(), ["real", "real+lddm"], [0.1, 1.0]
    results = {
        "command": "lddm-fast study ...",
        "arms": arms,
        "fractions": fractions,
        "settings": {"seeds": 3},
        "data": {"real": {"test": 60}},
        "real_train_counts": {"0.1": 12, "1.0": 120},
        "aggregate": report.aggregate(runs, arms, fractions),
        "paired": report.paired(runs, arms, fractions),
        "verdict": "At fraction 0.1, ...",
        "synthetic": {"lddm": {"videos": 4, "fvd": {"value": 12.5, "n_real": 4, "n_fake": 4}}},
        "fvd_note": "",
        "plot": "auc_vs_fraction.png",
    }
    text = report.render_markdown(results)
    for heading in ("## auc", "## Paired comparison", "## Verdict", "## Synthetic sets"):
        assert heading in text
    assert "| 0.1 (12 videos) | 0.610 ± 0.010 | 0.710 ± 0.010 |" in text
    assert "| lddm | 4 | 12.5 (4 vs 4) |" in text
    path = tmp_path / "plot.png"
    report.plot(results, str(path))
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (480, 720, 3)
    # both arms' colours are drawn
    for color in (report.ARM_COLORS["real"], report.ARM_COLORS["real+lddm"]):
        assert (image == np.array(color, dtype=np.uint8)).all(axis=-1).sum() > 20
