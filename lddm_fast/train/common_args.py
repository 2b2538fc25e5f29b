"""Flags and set-up shared by ``lddm-fast train-ae`` and ``lddm-fast train-diffusion``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from typing import Any

from lddm_fast.argtypes import positive_int
from lddm_fast.data.regions import REGION_MODES

DATA_HELP = (
    "training videos: a BUSV root (rawframes/ + train_list.txt, val_list.txt), a phantom "
    "root (lddm-fast phantom output) or any folder of videos (about 10%% held out for val)"
)


def add_common(parser: argparse.ArgumentParser, *, lr: float, ema_decay: float) -> None:
    """The flags both trainers share (defaults per stage for lr and EMA)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", required=True, metavar="DIR", help=DATA_HELP)
    parser.add_argument(
        "--out",
        required=True,
        metavar="RUN",
        help="run folder: RUN/checkpoint (loadable by LDDMPipeline.from_pretrained and "
        "'synthesize --checkpoint'), RUN/state (resume), RUN/log.jsonl, RUN/train.log",
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", default=None, help="model preset: tiny, phantom64, busv128")
    model.add_argument(
        "--config",
        default=None,
        metavar="JSON",
        help="model config file (a checkpoint's config.json)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=2000,
        help="optimizer steps of the whole run (default 2000)",
    )
    parser.add_argument(
        "--stop-at",
        type=positive_int,
        default=None,
        metavar="STEP",
        help="save and stop after STEP without shortening the schedule; "
        "continue later with --resume",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="global batch, split over torchrun processes (default 4)",
    )
    parser.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    parser.add_argument(
        "--min-lr-ratio",
        type=float,
        default=0.1,
        help="cosine floor as a share of --lr (default 0.1)",
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="linear warm-up steps (default 100)"
    )
    parser.add_argument(
        "--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)"
    )
    parser.add_argument(
        "--grad-clip",
        type=float,
        default=1.0,
        help="clip the gradient norm to this, 0 for off (default 1.0)",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=ema_decay,
        help=f"EMA decay of the exported weights, 0 for off (default {ema_decay})",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=250,
        metavar="N",
        help="save state, export RUN/checkpoint and score val every N steps "
        "(default 250, and at the end)",
    )
    parser.add_argument(
        "--keep", type=positive_int, default=2, help="training-state saves kept (default 2)"
    )
    parser.add_argument(
        "--eval-clips",
        type=positive_int,
        default=64,
        help="val clips scored at each checkpoint (default 64)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue RUN from its newest save, at the exact step"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds init, data order, augmentation, noise (default 0)",
    )
    parser.add_argument(
        "--device",
        default=None,
        choices=("cpu", "cuda"),
        help="default: cuda when available (bf16 autocast), else cpu (fp32)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the objective")
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader worker processes (default 2)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--region",
        choices=REGION_MODES,
        default="center",
        help="imaging region of each clip: center (default: whole frames, centre crop), "
        "auto (a DICOM's first tissue region, else the speckle area found on the clip's "
        "first frame, text around it blacked out), none (whole frames, letterboxed)",
    )


def region_fingerprint(args: argparse.Namespace) -> dict[str, str]:
    """What a resume or a latent cache must also match: the region, when not the
    default (so runs from before regions existed still resume)."""
    return {} if args.region == "center" else {"region": args.region}


def setup_logging() -> None:
    logger = logging.getLogger("lddm_fast")
    if not any(getattr(h, "_lddm_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler._lddm_console = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def resolve_config(args: argparse.Namespace, default_preset: str | None = "phantom64"):
    """The LDDMConfig named by --preset / --config (None if neither and no default)."""
    from lddm_fast.models.config import LDDMConfig, preset

    if args.config is not None:
        with open(args.config) as f:
            return LDDMConfig.from_dict(json.load(f))
    name = args.preset or default_preset
    return preset(name) if name else None


def settings(args: argparse.Namespace):
    import torch

    from lddm_fast.train.loop import TrainSettings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TrainSettings(
        steps=args.steps,
        stop_at=args.stop_at,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        seed=args.seed,
        device=device,
        compile=args.compile,
        workers=args.workers,
        progress=not args.quiet,
    )


def run_meta(args: argparse.Namespace, splits, data_sha256: str) -> dict[str, Any]:
    """meta.json entries every trainer records: command, data, hardware."""
    from lddm_fast.envinfo import environment

    env = environment()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = (
        ["torchrun", f"--nproc-per-node={world}", "-m", "lddm_fast"] if world > 1 else ["lddm-fast"]
    )
    return {
        "command": shlex.join([*launcher, *args.argv]),
        "data": {**splits.describe(), "sha256": data_sha256},
        "hardware": {k: env[k] for k in ("cpu", "cpu_count", "torch_threads", "gpu", "torch")},
    }
