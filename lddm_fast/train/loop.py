"""The stage-independent training loop: AdamW, warm-up + cosine learning rate, gradient
clipping, EMA, bf16 autocast on CUDA, DDP under torchrun, exact resume, logs.

A stage (:mod:`~lddm_fast.train.autoencoder`, :mod:`~lddm_fast.train.diffusion`)
supplies the objective module, the per-sample inputs of a batch, held-out evaluation
and the checkpoint export; this module does the rest the same way for both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset

from lddm_fast.ops import dispatch
from lddm_fast.synth.distributed import DistInfo, ProcessGroup, dist_info
from lddm_fast.train.data import StepBatches
from lddm_fast.train.state import (
    latest_state,
    load_state,
    optimizer_from_flat,
    optimizer_to_flat,
    save_state,
)

__all__ = ["Stage", "TrainSettings", "learning_rate", "train"]

log = logging.getLogger("lddm_fast.train")

LOG_FILE = "log.jsonl"
TEXT_LOG = "train.log"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainSettings:
    """Hyperparameters shared by both stages (the CLI flags of the same names).

    Args:
        steps: optimizer steps of the whole run (the schedule's length).
        stop_at: stop (saving first) after this step without changing the schedule;
            continue later with ``resume``. None: run to ``steps``.
        batch_size: global batch (split evenly over the torchrun processes).
        lr: peak learning rate; warm-up from 0 over ``warmup`` steps, then cosine
            down to ``lr * min_lr_ratio`` at ``steps``.
        weight_decay, betas: AdamW's.
        grad_clip: clip the gradient norm to this (0: off); the network and an
            adversarial critic are clipped apart (:func:`gradient_clip_groups`).
        ema_decay: EMA of the weights with decay ``min(ema_decay, (1+n)/(10+n))``
            after n updates (0: no EMA); the checkpoint holds the EMA weights.
        checkpoint_every: save the training state and export the checkpoint every N
            steps (and at the end).
        keep: training-state saves kept.
        seed: seeds initialisation, data order, augmentation and noise.
        device: ``cpu`` or ``cuda`` (``cuda:<local rank>`` under torchrun).
        compile: run the objective through ``torch.compile``.
        workers: DataLoader worker processes (0: load in the main process).
        progress: show a progress bar (rank 0).
    """

    steps: int = 1000
    stop_at: int | None = None
    batch_size: int = 4
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    checkpoint_every: int = 500
    keep: int = 2
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    workers: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(f"stop_at must be in 1..steps={self.steps}, got {self.stop_at}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1 (lr={self.lr})")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.warmup < 0 or self.workers < 0 or self.grad_clip < 0:
            raise ValueError("warmup, workers and grad_clip must be >= 0")


def learning_rate(step: int, s: TrainSettings) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then a
    cosine from ``lr`` to ``lr * min_lr_ratio`` at ``steps``."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    span = max(1, s.steps - s.warmup)
    progress = min(1.0, (step - s.warmup) / span)
    floor = s.lr * s.min_lr_ratio
    return floor + (s.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Stage(Protocol):
    """What a training stage gives the loop."""

    name: str
    #: trainable module; ``objective(**inputs)`` returns ``(loss, {metric: scalar})``.
    objective: nn.Module
    #: the network inside ``objective`` that is averaged (EMA) and exported.
    network: nn.Module
    dataset: Dataset
    collate: Callable[[list], dict]

    def inputs(self, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        """The objective's keyword inputs for a collated batch (per-sample noise from
        the batch's item seeds)."""

    def evaluate(self, network: nn.Module, step: int) -> dict[str, float]:
        """Held-out metrics of ``network`` (rank 0 only, no grad)."""

    def export(self, network: nn.Module, directory: Path, meta: dict[str, Any]) -> None:
        """Write the checkpoint directory the pipeline loads."""


def _ema_avg(decay: float):
    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor):
        d = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
        return averaged * d + current * (1.0 - d)

    return avg


def _device(settings: TrainSettings, info: DistInfo) -> torch.device:
    if settings.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU here")
        return torch.device("cuda", info.local_rank)
    if settings.device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {settings.device!r}")
    return torch.device("cpu")


class _JsonLog:
    """Appends one JSON object per line (rank 0 only), flushed at once."""

    def __init__(self, path: Path | None) -> None:
        self._file = open(path, "a", buffering=1) if path is not None else None  # noqa: SIM115

    def write(self, **record: Any) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _setup_text_log(run: Path, rank: int) -> logging.Handler | None:
    if rank != 0:
        return None
    handler = logging.FileHandler(run / TEXT_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("lddm_fast")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def training_backends(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """The backend each fused op runs on when its inputs need grad (training)."""
    out = {
        op: dispatch.default_choice(op, device.type, dtype, needs_grad=True)
        for op in ("group_norm", "temporal_attention")
    }
    forced, source = dispatch.requested_backend()
    if forced is not None:
        out = {op: f"{forced} (forced by {source})" for op in out}
    return out


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGINT to the main process. Ctrl-C, `timeout`,
    `kill -- -PGID` and batch schedulers signal the whole process group; a worker that
    died of it made the main process raise before it could save."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _StopRequest:
    """SIGTERM/SIGINT during training: finish the step, save, exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.requested = True
        log.warning("signal %d: saving at the end of this step, then stopping", signum)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    stage: Stage,
    settings: TrainSettings,
    run: str | os.PathLike,
    *,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``stage`` and write ``run/`` (state saves, checkpoint, logs).

    Args:
        stage: the stage; its objective's parameters are the ones trained.
        settings: the shared hyperparameters.
        run: the run folder (created).
        resume: continue from the newest save in ``run`` (start at 0 if none).
        meta: entries for the checkpoint's meta.json (command, data, ...).
        fingerprint: values that must be equal for a resume (data hash, config...).

    Returns:
        A summary: steps, wall time, throughput and the last held-out metrics.
    """
    run = Path(run)
    info = dist_info()
    device = _device(settings, info)
    meta = dict(meta or {})
    # JSON round trip: the saved copy is compared with this one on resume.
    fingerprint = json.loads(
        json.dumps(
            {
                **(fingerprint or {}),
                "seed": settings.seed,
                "batch_size": settings.batch_size,
                "steps": settings.steps,
            }
        )
    )
    with ProcessGroup(info, device) as group:
        if info.rank == 0:
            run.mkdir(parents=True, exist_ok=True)
        group.barrier()
        handler = _setup_text_log(run, info.rank)
        try:
            return _train(stage, settings, run, device, info, group, resume, meta, fingerprint)
        finally:
            if handler is not None:
                logging.getLogger("lddm_fast").removeHandler(handler)
                handler.close()


def gradient_clip_groups(objective: nn.Module) -> list[list[nn.Parameter]]:
    """The trainable parameters in the groups whose gradient norms are clipped apart:
    the network first, then an adversarial critic (``objective.discriminator``) if
    there is one. One global norm over both would let the critic's gradient (10-30x
    the decoder's early in a run) set the step of the network it judges."""
    critic = getattr(objective, "discriminator", None)
    critic_ids = {id(p) for p in critic.parameters()} if critic is not None else set()
    trainable = [p for p in objective.parameters() if p.requires_grad]
    groups = [
        [p for p in trainable if id(p) not in critic_ids],
        [p for p in trainable if id(p) in critic_ids],
    ]
    return [g for g in groups if g]


def clip_gradients(groups: list[list[nn.Parameter]], max_norm: float) -> torch.Tensor:
    """Clip each group's gradient norm to ``max_norm``; returns the first group's norm
    before clipping (the network's, which the log reports)."""
    norms = [torch.nn.utils.clip_grad_norm_(g, max_norm) for g in groups]
    return norms[0]


def _train(stage, settings, run, device, info, group, resume, meta, fingerprint):
    rank0 = info.rank == 0
    objective = stage.objective.to(device)
    network = stage.network
    params = [p for p in objective.parameters() if p.requires_grad]
    clip_groups = gradient_clip_groups(objective)
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
    )
    ema = (
        AveragedModel(network, avg_fn=_ema_avg(settings.ema_decay), use_buffers=True)
        if settings.ema_decay > 0
        else None
    )

    start_step, elapsed = 0, 0.0
    saved = latest_state(run)
    if saved is not None and not resume:
        raise FileExistsError(
            f"{run} already holds training state ({saved.name}); pass --resume to continue "
            "it, or choose another --out"
        )
    if saved is not None:
        tensors, state = load_state(saved)
        before = state.get("fingerprint", {})
        # Both ways: an entry only recorded when set (the region) must not vanish either.
        for key in sorted(set(fingerprint) | set(before)):
            if before.get(key) != fingerprint.get(key):
                raise ValueError(
                    f"{saved}: cannot resume, {key} differs (saved {before.get(key)!r}, now "
                    f"{fingerprint.get(key)!r}); the data, config, seed, batch size and steps "
                    "must be those of the saved run"
                )
        objective.load_state_dict(
            {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True
        )
        optimizer.load_state_dict(optimizer_from_flat(tensors, state["optimizer"]))
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        torch.set_rng_state(tensors["rng.cpu"])
        start_step, elapsed = int(state["step"]), float(state["elapsed_s"])
        if rank0:
            log.info("resumed from %s at step %d", saved, start_step)
    elif resume and rank0:
        log.info("--resume: no saved state in %s, starting at step 0", run)

    model: nn.Module = objective
    if info.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    if settings.compile:
        model = torch.compile(model)

    stop_step = settings.stop_at or settings.steps
    batches = StepBatches(
        len(stage.dataset),
        settings.batch_size,
        seed=settings.seed,
        start_step=start_step,
        stop_step=stop_step,
        rank=info.rank,
        world_size=info.world_size,
    )
    loader = DataLoader(
        stage.dataset,
        batch_sampler=batches,
        collate_fn=stage.collate,
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        # Worker seeds come from this generator, not the global one, so loading leaves
        # the global RNG state (saved for resume) as the model code alone moved it.
        generator=torch.Generator().manual_seed(settings.seed),
        worker_init_fn=_ignore_stop_signals,
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    backends = training_backends(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    jlog = _JsonLog(run / LOG_FILE if rank0 else None)
    if rank0:
        log.info(
            "training %s: steps %d..%d of %d, global batch %d on %d process(es), device %s, "
            "backends with backward: %s",
            stage.name,
            start_step,
            stop_step,
            settings.steps,
            settings.batch_size,
            info.world_size,
            device,
            backends,
        )
        jlog.write(
            event="start",
            stage=stage.name,
            step=start_step,
            backends=backends,
            world_size=info.world_size,
            device=str(device),
        )

    from tqdm import tqdm

    bar = tqdm(
        total=stop_step,
        initial=start_step,
        disable=not (rank0 and settings.progress),
        desc=stage.name,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    seen_bad: set[str] = set()
    step = start_step
    metrics_eval: dict[str, float] = {}
    segment_start = time.perf_counter()
    clips_done = 0

    def checkpoint(final: bool) -> None:
        nonlocal metrics_eval
        elapsed_now = elapsed + time.perf_counter() - segment_start
        if rank0:
            tensors = {f"model.{k}": v for k, v in objective.state_dict().items()}
            if ema is not None:
                tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
            opt_tensors, opt_info = optimizer_to_flat(optimizer.state_dict())
            tensors.update(opt_tensors)
            tensors["rng.cpu"] = torch.get_rng_state()
            save_state(
                run,
                step,
                tensors,
                {
                    "optimizer": opt_info,
                    "elapsed_s": elapsed_now,
                    "fingerprint": fingerprint,
                    "settings": asdict(settings),
                },
                keep=settings.keep,
            )
            exported = ema.module if ema is not None else network
            was_training = exported.training
            exported.eval()
            with torch.no_grad():
                metrics_eval = stage.evaluate(exported, step)
            exported.train(was_training)
            record = {
                **meta,
                "stage": stage.name,
                "steps": step,
                "steps_planned": settings.steps,
                "wall_time_s": round(elapsed_now, 1),
                "world_size": info.world_size,
                "training_backends": backends,
                "settings": asdict(settings),
                "heldout_metrics": metrics_eval,
                "finished": final,
            }
            stage.export(exported, run / CHECKPOINT_DIR, record)
            jlog.write(
                event="checkpoint", step=step, **{f"eval/{k}": v for k, v in metrics_eval.items()}
            )
            log.info("step %d: saved; held-out %s", step, json.dumps(metrics_eval))
        group.barrier()

    objective.train()
    with _StopRequest() as stop:
        for batch in loader:
            for path, reason in batch["skipped"]:
                if path not in seen_bad:
                    seen_bad.add(path)
                    log.warning("skipped clip %s: %s", path, reason)
                    jlog.write(event="skipped_clip", step=step, path=path, reason=reason)
            t0 = time.perf_counter()
            lr = learning_rate(step, settings)
            for group_ in optimizer.param_groups:
                group_["lr"] = lr
            inputs = stage.inputs(batch, device)
            with autocast:
                loss, parts = model(**inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                clip_gradients(clip_groups, settings.grad_clip)
                if settings.grad_clip > 0
                else torch.zeros(())
            )
            optimizer.step()
            if ema is not None:
                ema.update_parameters(network)
            step += 1
            values = torch.stack([loss.detach().float(), *(v.float() for v in parts.values())])
            if info.world_size > 1:
                torch.distributed.all_reduce(values)
                values /= info.world_size
            values = values.tolist()
            if not math.isfinite(values[0]):
                raise FloatingPointError(
                    f"step {step}: the loss is {values[0]} (not finite); lower --lr or check "
                    "the data"
                )
            clips_done += settings.batch_size
            rate = clips_done / max(1e-9, time.perf_counter() - segment_start)
            record = {
                "step": step,
                "loss": values[0],
                "lr": lr,
                "grad_norm": float(grad_norm),
                "clips_per_s": rate,
                "step_s": time.perf_counter() - t0,
            }
            record.update(dict(zip(parts, values[1:], strict=True)))
            jlog.write(**record)
            bar.set_postfix(loss=f"{values[0]:.4f}", clips_s=f"{rate:.2f}", refresh=False)
            bar.update(1)
            stopping = stop.requested
            if info.world_size > 1:
                flag = torch.tensor([float(stopping)], device=device)
                torch.distributed.all_reduce(flag)
                stopping = bool(flag.item())
            if step % settings.checkpoint_every == 0 or step == stop_step or stopping:
                checkpoint(final=step == settings.steps)
            if stopping:
                break
        if step == start_step and start_step >= stop_step and rank0:
            log.info("nothing to do: the run is at step %d of %d", step, stop_step)
    bar.close()
    wall = elapsed + time.perf_counter() - segment_start
    summary = {
        "stage": stage.name,
        "step": step,
        "steps": settings.steps,
        "finished": step == settings.steps,
        "wall_time_s": round(wall, 1),
        "clips_per_s": clips_done / max(1e-9, time.perf_counter() - segment_start),
        "heldout_metrics": metrics_eval,
        "checkpoint": str(run / CHECKPOINT_DIR),
    }
    if rank0:
        jlog.write(event="end", **summary)
        log.info("summary: %s", json.dumps(summary))
    jlog.close()
    return summary
