"""Write a static gallery of a synthesis run: OUT_DIR/index.html beside its manifest.

One card per video (input image, the video as mp4 with a gif fallback, class, seed,
model, settings) and per failure (with its reason), filters by class and status
(finished, failed, non-finite), pages of --page-size cards, and one contact sheet per
class under OUT_DIR/gallery/. Open index.html from disk: no server, no network.

examples:
  lddm-fast synthesize --input data/busi --out videos --format mp4,gif
  lddm-fast gallery videos
"""

from __future__ import annotations

import argparse

from lddm_fast.argtypes import positive_int

HELP = "write a static HTML gallery (index.html) of a synthesize output folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("out_dir", metavar="OUT_DIR", help="a 'lddm-fast synthesize' output")
    parser.add_argument(
        "--page-size", type=positive_int, default=48, help="cards per page (default 48)"
    )
    parser.add_argument(
        "--sheet-rows",
        type=positive_int,
        default=12,
        help="videos per class contact sheet (default 12)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from lddm_fast.synth.gallery import write_gallery

    try:
        info = write_gallery(args.out_dir, page_size=args.page_size, sheet_rows=args.sheet_rows)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"gallery of {info.videos} videos and {info.failures} failures: {info.index} "
        f"({len(info.contact_sheets)} contact sheets in {args.out_dir}/gallery/)"
    )
    return 0
