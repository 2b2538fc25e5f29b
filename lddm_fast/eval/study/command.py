"""Do synthesized videos train better benign/malignant video classifiers?

Trains a small R(2+1)D classifier from scratch on a fraction of the real training
videos, alone and with each synthetic set made from the images: LDDM videos (through
the batch engine, cached and resumed in OUT/synthetic/lddm), "static" videos (x0
repeated) and "random warp" videos (x0 moved by a random smooth deformation whose
size matches the real videos' motion). Every arm x fraction x seed is one classifier
(early stopping on the real val split); all are tested on the fixed real test split.

Writes OUT/report.md (tables, paired comparison with real only, the FVD of each
synthetic set against the real test videos, settings, data hashes), OUT/results.json
and OUT/auc_vs_fraction.png. An interrupted study resumes: finished runs are skipped.

examples:
  lddm-fast study --real-videos data/busv --images data/busi --out study
  lddm-fast study --real-videos data/phantom --images data/images --checkpoint runs/m/checkpoint \\
      --out study --fractions 0.1,0.25,1.0 --seeds 3
"""

from __future__ import annotations

import argparse
import shlex
import sys

from lddm_fast.argtypes import positive_int

HELP = "augmentation study: classifiers trained on real vs real + synthesized videos"


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(sorted({float(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    data = parser.add_argument_group("data and outputs")
    data.add_argument(
        "--real-videos",
        required=True,
        metavar="DIR",
        help="real videos, BUSV layout with train/val/test lists (a phantom root works)",
    )
    data.add_argument(
        "--images",
        required=True,
        metavar="DIR",
        help="images in the BUSI layout (<class>/<image>; masks are ignored)",
    )
    data.add_argument("--out", required=True, metavar="DIR", help="study folder (resumable)")
    model = parser.add_argument_group("synthesis (default: the bundled model)")
    which = model.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory")
    which.add_argument("--preset", help="a randomly initialised preset (tests only)")
    model.add_argument("--videos-per-image", type=positive_int, default=1, metavar="K")
    model.add_argument("--synth-steps", type=positive_int, default=25, help="sampler steps")
    grid = parser.add_argument_group("the grid")
    grid.add_argument(
        "--fractions",
        type=_fractions,
        default=(0.1, 0.25, 1.0),
        metavar="LIST",
        help="fractions of the real training videos (default 0.1,0.25,1.0)",
    )
    grid.add_argument("--seeds", type=positive_int, default=3, help="seeds per cell (default 3)")
    fit = parser.add_argument_group("classifier training")
    fit.add_argument("--steps", type=positive_int, default=300, help="max steps (default 300)")
    fit.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    fit.add_argument("--eval-every", type=positive_int, default=25, help="default 25")
    fit.add_argument(
        "--patience", type=positive_int, default=4, help="validations without gain (default 4)"
    )
    run = parser.add_argument_group("execution")
    run.add_argument("--fvd-n", type=int, default=64, help="videos per set for FVD (0: none)")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lddm_fast.data.errors import BadInputError
    from lddm_fast.eval.study.fit import FitSettings
    from lddm_fast.eval.study.runner import StudySettings, run_study

    model_args: tuple[str, ...] = ()
    if args.checkpoint:
        model_args = ("--checkpoint", args.checkpoint)
    elif args.preset:
        model_args = ("--preset", args.preset)
    settings = StudySettings(
        fractions=args.fractions,
        seeds=args.seeds,
        videos_per_image=args.videos_per_image,
        synth_steps=args.synth_steps,
        fvd_n=max(0, args.fvd_n),
        fit=FitSettings(
            steps=args.steps,
            batch_size=args.batch_size,
            eval_every=args.eval_every,
            patience=args.patience,
        ),
        model_args=model_args,
    )
    argv = getattr(args, "argv", None) or sys.argv[1:]
    try:
        results = run_study(
            args.real_videos,
            args.images,
            args.out,
            settings,
            device=args.device,
            progress=not args.quiet,
            command="lddm-fast study " + shlex.join(argv[1:] if argv[:1] == ["study"] else argv),
        )
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(results["verdict"])
    print(
        f"{len(results['runs'])} runs ({results['runs_skipped_as_done']} already done) in "
        f"{results['wall_time_s']:.0f} s; report: {args.out}/report.md"
    )
    return 0
