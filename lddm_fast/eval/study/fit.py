"""Train one classifier of the study and measure it on the real test split.

Class-balanced batches (each clip drawn with probability 1 / its class's count),
standard clip augmentation (random temporal crop, horizontal flip, gain and offset
jitter), AdamW with a cosine schedule, and early stopping on the real val split's
AUC: the weights of the best validation are the ones tested. Every random draw comes
from one generator seeded by the run's seed, so a run is reproducible on one machine.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lddm_fast.eval.study.classifier import ClassifierConfig, VideoClassifier
from lddm_fast.eval.study.metrics import binary_metrics
from lddm_fast.eval.study.videos import VideoSet

__all__ = ["FitSettings", "fit_and_test", "scores_of"]


@dataclass(frozen=True)
class FitSettings:
    """steps: optimiser steps at most; eval_every: steps between validations;
    patience: validations without a better val AUC before stopping; clip_frames:
    frames per training clip (a random window of the video's)."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-2
    eval_every: int = 25
    patience: int = 4
    clip_frames: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


def _as_input(videos: torch.Tensor) -> torch.Tensor:
    # uint8 [B, T, H, W] -> float [B, 1, T, H, W] in [-1, 1]
    return videos.float().div(127.5).sub(1.0).unsqueeze(1)


def _augment(batch: torch.Tensor, frames: int, g: torch.Generator) -> torch.Tensor:
    """uint8 ``[B, T+1, H, W]`` -> augmented float ``[B, 1, frames, H, W]``."""
    b, total = batch.shape[:2]
    frames = min(frames, total)
    starts = torch.randint(0, total - frames + 1, (b,), generator=g)
    clips = torch.stack([batch[i, s : s + frames] for i, s in enumerate(starts.tolist())])
    x = _as_input(clips)
    flip = torch.rand(b, generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    gain = 1 + 0.1 * (2 * torch.rand(b, 1, 1, 1, 1, generator=g) - 1)
    offset = 0.05 * (2 * torch.rand(b, 1, 1, 1, 1, generator=g) - 1)
    return (x * gain + offset).clamp(-1, 1)


@torch.no_grad()
def scores_of(
    model: VideoClassifier, videos: VideoSet, frames: int, device: torch.device, batch: int = 32
) -> torch.Tensor:
    """P(malignant) ``[N]`` of each video's first ``frames`` frames (no augmentation)."""
    model.eval()
    out = []
    for start in range(0, len(videos), batch):
        x = _as_input(videos.videos[start : start + batch, :frames]).to(device)
        out.append(torch.softmax(model(x).float(), dim=1)[:, 1].cpu())
    return torch.cat(out) if out else torch.empty(0)


def fit_and_test(
    train: VideoSet,
    val: VideoSet,
    test: VideoSet,
    *,
    settings: FitSettings,
    seed: int,
    config: ClassifierConfig | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Train on ``train``, stop early on ``val``, return the test metrics of the best
    validation's weights with the training record (steps run, best step, val AUC,
    wall time)."""
    device = torch.device(device)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the network's initial weights and dropout
    model = VideoClassifier(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / settings.steps))
    )
    counts = torch.bincount(train.labels, minlength=2).float()
    weights = 1.0 / counts[train.labels]
    best = {"auc": -math.inf, "step": 0, "state": copy.deepcopy(model.state_dict())}
    stale, step, losses = 0, 0, []
    while step < settings.steps:
        model.train()
        index = torch.multinomial(weights, settings.batch_size, replacement=True, generator=g)
        x = _augment(train.videos[index], settings.clip_frames, g).to(device)
        loss = F.cross_entropy(model(x), train.labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(loss.item())
        if step % settings.eval_every == 0 or step == settings.steps:
            val_scores = scores_of(model, val, settings.clip_frames, device)
            auc = binary_metrics(val_scores, val.labels)["auc"]
            if auc > best["auc"]:
                best = {"auc": auc, "step": step, "state": copy.deepcopy(model.state_dict())}
                stale = 0
            else:
                stale += 1
                if stale >= settings.patience:
                    break
    model.load_state_dict(best["state"])
    test_scores = scores_of(model, test, settings.clip_frames, device)
    return {
        "test": binary_metrics(test_scores, test.labels),
        "val_auc": best["auc"],
        "best_step": best["step"],
        "steps_run": step,
        "final_train_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "train_videos": train.class_counts(),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
