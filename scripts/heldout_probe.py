"""What the set-B probes share (``generated_strain.py``, ``x0_estimates.py``): their
arguments, every (256 / n)-th clip of the held-out set B and the checkpoint's pipeline."""

from __future__ import annotations

import argparse

from lddm_fast.diffusion.pipeline import LDDMPipeline
from lddm_fast.eval.heldout import heldout_sets


def probe_parser(doc: str, n: int) -> argparse.ArgumentParser:
    """--data, --checkpoint and --n (clips of set B, default ``n``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the phantom dataset root")
    parser.add_argument("--checkpoint", default=None, help="checkpoint dir (default: bundled)")
    parser.add_argument("--n", type=int, default=n, help=f"clips of set B (default {n})")
    return parser


def probe_inputs(args: argparse.Namespace) -> tuple[list[dict], LDDMPipeline]:
    """(the clips of set B the probe reads, the checkpoint's pipeline on the CPU)."""
    _, set_b = heldout_sets(args.data, 256)
    return set_b[:: max(1, 256 // args.n)], LDDMPipeline.from_pretrained(
        args.checkpoint, device="cpu"
    )
