"""Make the bundled model: a trained checkpoint, its weights in half precision, and a
``meta.json`` that records how it was made and how it scored.

    python -m lddm_fast.train.bundle --checkpoint runs/ldm/checkpoint \\
        --report runs/heldout.json --dataset data/phantom64 \\
        --data-command "lddm-fast phantom data/phantom64 ..." --out lddm_fast/assets/phantom64

prints the sha256 table to put in :data:`lddm_fast.models.bundled.BUNDLED_SHA256`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lddm_fast.data.atomic import atomic_folder
from lddm_fast.data.digest import sha256_file
from lddm_fast.models.checkpoint import from_pretrained, save_pretrained

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def bundle(checkpoint: Path, out: Path, *, dtype: torch.dtype, extra: dict) -> dict[str, str]:
    """Write ``checkpoint`` to ``out`` with weights in ``dtype`` and ``extra`` merged
    into meta.json; returns the sha256 of every file written."""
    models = from_pretrained(checkpoint, dtype=dtype)
    meta = {
        k: v
        for k, v in models.meta.items()
        if k not in ("format_version", "lddm_fast_version", "sha256")
    }
    meta.update(extra)
    meta["stored_dtype"] = str(dtype).removeprefix("torch.")
    with atomic_folder(out) as tmp:
        save_pretrained(tmp, models, meta=meta)
    return {p.name: sha256_file(p) for p in sorted(out.iterdir())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lddm_fast.train.bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="trained checkpoint dir")
    parser.add_argument("--out", required=True, type=Path, help="bundled model dir")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="held-out report JSON (python -m lddm_fast.eval.heldout)",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="the training data root (its dataset.json seed and counts)",
    )
    parser.add_argument("--data-command", default=None, help="the command that made the data")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    args = parser.parse_args(argv)
    extra: dict = {}
    if args.report is not None:
        extra["heldout_report"] = json.loads(args.report.read_text())
    if args.dataset is not None:
        info = json.loads((args.dataset / "dataset.json").read_text())
        extra["dataset"] = {
            "command": args.data_command,
            "seed": info["seed"],
            "split_fractions": info["split_fractions"],
            "busv_counts": info["busv"]["counts"],
            "size": info["config"]["size"],
            "frames": info["config"]["frames"],
        }
    hashes = bundle(args.checkpoint, args.out, dtype=DTYPES[args.dtype], extra=extra)
    json.dump(hashes, sys.stdout, indent=4)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
