"""Train stage 1, the video autoencoder, on ultrasound videos.

Clips are the config's num_frames + 1 frames (x0, then T), randomly cropped in time
and space and flipped; the loss is L1 + KL (+ 1 - SSIM with --ssim-weight, + a 3-D
patch discriminator's hinge term with --adv-weight, + the coarse L1 of x0 warped
alone for a warping decoder, --warp-weight, + on phantom data the L1 of its
displacement field against the phantom's true motion, --flow-weight, + the texture
code's KL, --texture-kl-weight). At every checkpoint the val split is scored
(reconstruction PSNR/SSIM next to the "x0 repeated" baseline) and RUN/checkpoint is
rewritten; its denoiser is untrained until train-diffusion. Ctrl-C or SIGTERM saves
and stops; --resume continues exactly. Under torchrun each process takes an equal
share of the global batch (DDP).

examples:
  lddm-fast phantom data/phantom --benign 200 --malignant 200 --normal 0 --layout busv
  # the bundled model's stage 1 (docs/TRAINING.md): the field also on the phantom's motion
  lddm-fast train-ae --data data/phantom --out runs/ae --preset phantom64 --steps 4000 \\
      --flow-weight 2.0
  # go on training the decoder alone; z (and stage 2) stay as they are
  lddm-fast train-ae --data data/phantom --out runs/aef --preset phantom64 \\
      --init runs/ae/checkpoint --freeze-encoder --flow-weight 4.0 --steps 2000
  torchrun --nproc-per-node 8 -m lddm_fast train-ae --data busv --out runs/ae \\
      --preset busv128 --batch-size 64 --device cuda
"""

from __future__ import annotations

import argparse

from lddm_fast.train.common_args import add_common

HELP = "train the video autoencoder (stage 1) on a video folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, lr=2e-4, ema_decay=0.0)
    parser.add_argument(
        "--kl-weight",
        type=float,
        default=1e-4,
        help="weight of KL(q(z)||N(0,I)) per pixel (default 1e-4)",
    )
    parser.add_argument(
        "--ssim-weight",
        type=float,
        default=0.0,
        help="weight of the (1 - SSIM) structure term (default 0: off)",
    )
    parser.add_argument(
        "--adv-weight",
        type=float,
        default=0.0,
        help="weight of the 3-D patch-discriminator term, balanced against the "
        "reconstruction terms by their gradients at the decoder's last layer (0.5 is the "
        "usual choice; default 0: off, no discriminator)",
    )
    parser.add_argument(
        "--adv-start",
        type=int,
        default=0,
        metavar="STEP",
        help="step from which the decoder follows the discriminator; the discriminator "
        "itself learns from step 0 (default 0)",
    )
    parser.add_argument(
        "--warp-weight",
        type=float,
        default=1.0,
        help="weight of the coarse (4x, 8x pooled) L1 of x0 warped alone, which steers "
        "the displacement field of a warping decoder (config autoencoder.warp; ignored "
        "otherwise; default 1.0)",
    )
    parser.add_argument(
        "--flow-weight",
        type=float,
        default=0.0,
        help="weight of the L1 between a warping decoder's displacement field and the "
        "phantom's true tissue motion (with its strain, see lddm_fast.train.autoencoder."
        "flow_l1); phantom data only (lddm-fast phantom output, its dataset.json gives "
        "each clip's motion), and its clips are then not cropped or flipped (default 0: "
        "off)",
    )
    parser.add_argument(
        "--texture-kl-weight",
        type=float,
        default=0.1,
        help="weight of KL(q(n)||N(0,I)) per pixel for a texture code (config "
        "autoencoder.texture_channels; ignored otherwise). Near the L1's typical size "
        "(0.1 on [-1, 1] frames) it is the ELBO of a Laplace likelihood, so draws from "
        "the prior look like the codes the decoder learned from (default 0.1)",
    )
    parser.add_argument(
        "--texture-kl-warmup",
        type=int,
        default=0,
        metavar="STEPS",
        help="ramp the texture KL weight up from 0 over this many steps, so the decoder "
        "learns to read the code before the KL can empty it (default 0: full weight "
        "from the start)",
    )
    parser.add_argument(
        "--init",
        metavar="CHECKPOINT",
        default=None,
        help="start from this exported checkpoint's autoencoder weights (e.g. RUN/checkpoint); "
        "modules the config adds to it (a texture code) start fresh",
    )
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="with --init: keep the z encoder fixed, so the latents and a stage-2 model "
        "trained on them stay valid while the decoder learns",
    )


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from lddm_fast.train.autoencoder import FLOW_GRADIENT_SCALE, AutoencoderStage
    from lddm_fast.train.common_args import (
        region_fingerprint,
        resolve_config,
        run_meta,
        settings,
        setup_logging,
    )
    from lddm_fast.train.data import data_hash, model_splits
    from lddm_fast.train.loop import train

    setup_logging()
    config = resolve_config(args)
    splits = model_splits(args.data, config, args.region)
    digest = data_hash(args.data, splits.train, splits.val)
    s = settings(args)
    torch.manual_seed(args.seed)
    try:
        stage = AutoencoderStage(
            config,
            splits.train,
            splits.val,
            kl_weight=args.kl_weight,
            ssim_weight=args.ssim_weight,
            adv_weight=args.adv_weight,
            adv_start=args.adv_start,
            warp_weight=args.warp_weight,
            texture_kl_weight=args.texture_kl_weight,
            texture_kl_warmup=args.texture_kl_warmup,
            flow_weight=args.flow_weight,
            flow_root=args.data,
            init=args.init,
            freeze_encoder=args.freeze_encoder,
            eval_clips=args.eval_clips,
        )
    except ValueError as err:  # --init that does not fit or is missing; --flow-weight's data
        raise SystemExit(f"error: {err}") from None
    meta = run_meta(args, splits, digest)
    meta["losses"] = {"l1": 1.0, "kl": args.kl_weight, "ssim": args.ssim_weight}
    if config.autoencoder.warp:
        meta["losses"]["warp_coarse_l1"] = args.warp_weight
    if args.flow_weight > 0:
        meta["losses"]["true_flow_l1"] = args.flow_weight
        meta["losses"]["flow_gradient_scale"] = FLOW_GRADIENT_SCALE
    if config.autoencoder.texture_channels:
        meta["losses"]["texture_kl"] = args.texture_kl_weight
        meta["losses"]["texture_kl_warmup"] = args.texture_kl_warmup
    if args.init is not None:
        meta["init"] = {"checkpoint": str(args.init), "freeze_encoder": args.freeze_encoder}
    if args.adv_weight > 0:
        meta["losses"].update(adversarial=args.adv_weight, adversarial_start=args.adv_start)
    summary = train(
        stage,
        s,
        args.out,
        resume=args.resume,
        meta=meta,
        fingerprint={
            "data_sha256": digest,
            "config": config.to_dict(),
            "losses": meta["losses"],
            **({"init": meta["init"]} if "init" in meta else {}),
            **region_fingerprint(args),
        },
    )
    print(json.dumps(summary, indent=2))
    return 0
