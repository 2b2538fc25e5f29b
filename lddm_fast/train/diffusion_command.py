"""Train stage 2, the conditional latent denoiser, on the latents of a trained (frozen)
autoencoder.

Before the first step the latent scale factor (1/std of z over training clips) is
measured and written into the config. With --cache-latents (the default) each
training video is encoded once, --cache-variants times with different augmentations,
into RUN/latents (reused while the autoencoder and data are unchanged); training then
never runs the autoencoder. eps or v prediction as the config says; the x0 condition
is dropped for config.cond_drop_prob of the samples (classifier-free guidance); the
checkpoint holds the EMA weights. Every checkpoint scores the val loss and writes a
preview (RUN/previews/step-N.png contact sheet, x0 then frames, and a gif) sampled
through LDDMPipeline.

examples:
  lddm-fast train-diffusion --data data/phantom --autoencoder runs/ae --out runs/ldm \\
      --steps 4000 --batch-size 16
  lddm-fast synthesize --input data/phantom/busi --out videos --checkpoint runs/ldm/checkpoint
"""

from __future__ import annotations

import argparse

from lddm_fast.argtypes import positive_int
from lddm_fast.train.common_args import add_common

HELP = "train the conditional latent denoiser (stage 2) on a frozen autoencoder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, lr=2e-4, ema_decay=0.999)
    parser.add_argument(
        "--autoencoder",
        required=True,
        metavar="RUN_OR_CKPT",
        help="a train-ae run folder (its checkpoint/) or a checkpoint directory; its "
        "config is used unless --preset/--config is given (whose autoencoder must match)",
    )
    parser.add_argument(
        "--cache-latents",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="encode the training clips once and train from the cache (default on)",
    )
    parser.add_argument(
        "--cache-variants",
        type=positive_int,
        default=4,
        help="augmented encodings cached per training video (default 4)",
    )
    parser.add_argument(
        "--latent-cache",
        default=None,
        metavar="DIR",
        help="where caches live (default RUN/latents); share it between runs",
    )
    parser.add_argument(
        "--scale-clips",
        type=positive_int,
        default=64,
        help="training clips the latent scale is measured on (default 64)",
    )
    parser.add_argument(
        "--preview-images",
        type=int,
        default=4,
        help="val images sampled at each checkpoint, 0 for none (default 4)",
    )
    parser.add_argument(
        "--preview-steps",
        type=positive_int,
        default=25,
        help="DDIM steps of the previews (default 25)",
    )


def autoencoder_checkpoint(path: str):
    """The checkpoint directory inside a run folder, or ``path`` itself."""
    from pathlib import Path

    p = Path(path)
    return p / "checkpoint" if (p / "checkpoint" / "config.json").is_file() else p


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    import torch

    from lddm_fast.models.checkpoint import from_pretrained
    from lddm_fast.synth.distributed import dist_info
    from lddm_fast.train.common_args import (
        region_fingerprint,
        resolve_config,
        run_meta,
        settings,
        setup_logging,
    )
    from lddm_fast.train.data import data_hash, model_splits
    from lddm_fast.train.diffusion import (
        DiffusionStage,
        LatentCache,
        cache_folder,
        cache_key,
        latent_scale,
    )
    from lddm_fast.train.export import autoencoder_record
    from lddm_fast.train.loop import train

    setup_logging()
    s = settings(args)
    device = (
        torch.device("cuda", dist_info().local_rank) if s.device == "cuda" else torch.device("cpu")
    )
    ckpt = autoencoder_checkpoint(args.autoencoder)
    loaded = from_pretrained(ckpt, device=device, dtype=torch.float32)
    config = resolve_config(args, default_preset=None) or loaded.config
    if config.autoencoder != loaded.config.autoencoder:
        raise SystemExit(
            f"error: the autoencoder in {ckpt} was built from another config than "
            "--preset/--config gives; train-diffusion must use the trained autoencoder's"
        )
    splits = model_splits(args.data, config, args.region)
    digest = data_hash(args.data, splits.train, splits.val)
    autoencoder = loaded.autoencoder.eval().requires_grad_(False)
    scale = latent_scale(autoencoder, splits.train, args.seed, device, count=args.scale_clips)
    config = dataclasses.replace(config, latent_scale=scale)
    ae_sha = loaded.meta["sha256"]["autoencoder.safetensors"]

    cache = None
    if args.cache_latents:
        key = cache_key(
            ae_sha, digest, args.cache_variants, args.seed, config.num_frames + 1, config.size
        ) | region_fingerprint(args)
        root = Path(args.latent_cache) if args.latent_cache else Path(args.out) / "latents"
        cache = LatentCache.build(
            cache_folder(root, key),
            key,
            autoencoder,
            splits.train,
            variants=args.cache_variants,
            seed=args.seed,
            device=device,
            workers=args.workers,
            progress=not args.quiet,
        )
    torch.manual_seed(args.seed)
    stage = DiffusionStage(
        config,
        autoencoder,
        splits.train,
        splits.val,
        cache=cache,
        preview_dir=Path(args.out) / "previews",
        preview_images=args.preview_images,
        preview_steps=args.preview_steps,
        eval_clips=args.eval_clips,
        seed=args.seed,
        device=device,
    )
    meta = run_meta(args, splits, digest)
    meta["autoencoder"] = autoencoder_record(ckpt, loaded)
    meta["latent_scale"] = scale
    meta["latent_cache"] = {"variants": args.cache_variants} if cache is not None else None
    summary = train(
        stage,
        s,
        args.out,
        resume=args.resume,
        meta=meta,
        fingerprint={
            "data_sha256": digest,
            "config": config.to_dict(),
            "autoencoder": ae_sha,
            **region_fingerprint(args),
        },
    )
    print(json.dumps(summary, indent=2))
    return 0
