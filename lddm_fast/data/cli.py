"""Write a seeded phantom ultrasound dataset (BUSV-like clips and/or BUSI-like images).

Clips go to OUT/busv/rawframes/<class>/<video>/000000.png ... with MMAction2 lists
OUT/busv/{train,val,test}_list.txt ("<class>/<video> <frames> <label>", benign 0,
malignant 1, normal 2); images to OUT/busi/<class>/<class> (<n>).png with a
"_mask.png" beside each; OUT/dataset.json records classes, splits, parameters and
every item's seed. The same arguments always give the same bytes.

examples:
  lddm-fast phantom data/phantom --benign 500 --malignant 500 --normal 0 --layout busv
  lddm-fast phantom data/tiny --benign 4 --malignant 4 --normal 4 --size 128 --frames 9
"""

from __future__ import annotations

import argparse

from lddm_fast.argtypes import int_at_least

HELP = "write a seeded phantom ultrasound dataset (BUSV-like clips, BUSI-like images)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("out", metavar="OUT", help="output root folder (created if missing)")
    counts = parser.add_argument_group("items per class (for each layout written)")
    for name in ("benign", "malignant", "normal"):
        counts.add_argument(
            f"--{name}",
            type=int_at_least(0),
            default=10,
            metavar="N",
            help=f"{name} items (default 10)",
        )
    parser.add_argument(
        "--layout",
        choices=("busv", "busi", "both"),
        default="both",
        help="busv: clips as frame folders + label lists; busi: single images with "
        "masks; both (default)",
    )
    parser.add_argument(
        "--size",
        type=int_at_least(16, "pixels"),
        default=64,
        help="frame width and height in pixels (default 64)",
    )
    parser.add_argument(
        "--frames", type=int_at_least(0), default=17, help="frames per clip, x0 plus T (default 17)"
    )
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate recorded (default 10)")
    parser.add_argument(
        "--fov-mm", type=float, default=40.0, help="field of view width and depth (default 40)"
    )
    parser.add_argument(
        "--appearance-overlap",
        type=float,
        default=0.0,
        metavar="P",
        help="0..1: half of it is the chance a lesion looks like the other class (its "
        "stiffness still follows its class); 1: only motion separates the classes "
        "(default 0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--splits",
        type=_fractions,
        default=(0.7, 0.15, 0.15),
        metavar="TRAIN,VAL,TEST",
        help="split shares per class (default 0.7,0.15,0.15)",
    )
    parser.add_argument(
        "--workers",
        type=int_at_least(0),
        default=1,
        help="processes simulating in parallel (default 1)",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into OUT even if it is not empty"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    import time

    from tqdm import tqdm

    from lddm_fast.data.phantom import PhantomConfig
    from lddm_fast.data.phantom_writer import write_phantom_dataset

    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        print(f"error: {args.out} is not empty (use --force to write into it)", file=sys.stderr)
        return 2
    if args.frames < 1 or args.workers < 1:
        print("error: --frames and --workers must be at least 1", file=sys.stderr)
        return 2
    layouts = ("busv", "busi") if args.layout == "both" else (args.layout,)
    counts = {"benign": args.benign, "malignant": args.malignant, "normal": args.normal}
    config = PhantomConfig(
        size=args.size,
        frames=args.frames,
        fov_mm=args.fov_mm,
        appearance_overlap=args.appearance_overlap,
    )
    per_layout = sum(counts.values())
    total = per_layout * len(layouts)
    bar = tqdm(total=total, unit="item", disable=args.quiet, desc="phantom")
    finished: dict[str, float] = {}

    def progress(layout: str) -> None:
        finished[layout] = time.perf_counter()
        bar.update(1)

    start = time.perf_counter()
    write_phantom_dataset(
        args.out,
        counts,
        config=config,
        layouts=layouts,
        seed=args.seed,
        fps=args.fps,
        fractions=args.splits,
        workers=args.workers,
        progress=progress,
    )
    bar.close()
    elapsed = time.perf_counter() - start
    # Layouts are written in order, so each one's time runs from the previous end.
    parts, begin = [], start
    for layout, noun in (("busv", "clips"), ("busi", "images")):
        if layout in layouts:
            seconds = finished.get(layout, begin) - begin
            rate = per_layout / seconds if seconds > 0 else 0.0
            parts.append(f"{per_layout} {noun} in {seconds:.1f} s ({rate:.1f} {noun}/s)")
            begin = finished.get(layout, begin)
    print(
        f"wrote {' and '.join(parts)} at {args.size}x{args.size}, {args.frames} frames "
        f"per clip, to {args.out} ({elapsed:.1f} s in all, {args.workers} worker(s))"
    )
    return 0


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.7,0.15,0.15: {e}") from e
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three shares summing to 1, got {text}")
    return parts
