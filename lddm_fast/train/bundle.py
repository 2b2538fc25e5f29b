"""Make the bundled model: a trained checkpoint, its weights in half precision, and a
``meta.json`` that records how it was made and how it scored.

    python -m lddm_fast.train.bundle --checkpoint runs/ldm/checkpoint \\
        --report runs/heldout.json --report runs/heldout_seed4.json --dataset data/phantom64 \\
        --data-command "lddm-fast phantom data/phantom64 ..." --out lddm_fast/assets/phantom64

prints the sha256 table to put in :data:`lddm_fast.models.bundled.BUNDLED_SHA256`.

``--autoencoder RUN/checkpoint`` swaps in an autoencoder fine-tuned from the
checkpoint's own with ``train-ae --init ... --freeze-encoder`` (e.g. with a texture
code added): its z encoder must be bit-identical, so the denoiser's latents are too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from lddm_fast.data.atomic import atomic_folder
from lddm_fast.data.digest import sha256_file
from lddm_fast.models.checkpoint import (
    LDDMModels,
    carried_meta,
    from_pretrained,
    save_pretrained,
)
from lddm_fast.train.export import autoencoder_record

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def with_autoencoder(models: LDDMModels, checkpoint: Path) -> LDDMModels:
    """``models`` with the autoencoder of ``checkpoint``, whose z encoder must equal
    ``models``' bit for bit (a ``--freeze-encoder`` fine-tune of it): the denoiser
    was trained on that encoder's latents, and the latent scale stays ``models``'."""
    new = from_pretrained(checkpoint, dtype=next(models.autoencoder.parameters()).dtype)
    old_encoder = models.autoencoder.encoder.state_dict()
    for name, tensor in new.autoencoder.encoder.state_dict().items():
        if name not in old_encoder or not torch.equal(old_encoder[name], tensor):
            raise ValueError(
                f"{checkpoint}: its z encoder differs from the checkpoint's at {name!r}; "
                "only an autoencoder fine-tuned with --freeze-encoder keeps the denoiser's "
                "latents valid"
            )
    config = dataclasses.replace(models.config, autoencoder=new.config.autoencoder)
    meta = dict(models.meta)
    meta["autoencoder"] = {
        **autoencoder_record(checkpoint, new),
        "replaces": models.meta.get("autoencoder"),
    }
    return LDDMModels(config, new.autoencoder, models.denoiser, meta)


def bundle(
    checkpoint: Path,
    out: Path,
    *,
    dtype: torch.dtype,
    extra: dict,
    autoencoder: Path | None = None,
) -> dict[str, str]:
    """Write ``checkpoint`` (its autoencoder replaced by ``autoencoder``'s, see
    :func:`with_autoencoder`) to ``out`` with weights in ``dtype`` and ``extra`` merged
    into meta.json; returns the sha256 of every file written."""
    models = from_pretrained(checkpoint)
    if autoencoder is not None:
        models = with_autoencoder(models, autoencoder)
    models.autoencoder.to(dtype)
    models.denoiser.to(dtype)
    meta = carried_meta(models.meta)
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
        action="append",
        default=[],
        help="held-out report JSON (python -m lddm_fast.eval.heldout); repeat it for "
        "reports at other --seed values: the first is meta.json's heldout_report, the "
        "others its heldout_reports_other_seeds",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="the training data root (its dataset.json seed and counts)",
    )
    parser.add_argument("--data-command", default=None, help="the command that made the data")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    parser.add_argument(
        "--autoencoder",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="take the autoencoder from this checkpoint instead (trained with train-ae "
        "--init CHECKPOINT --freeze-encoder: its z encoder must be identical)",
    )
    args = parser.parse_args(argv)
    extra: dict = {}
    reports = []
    for path in args.report:
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"--report {path}: {err}")
    if reports:
        extra["heldout_report"] = reports[0]
    if len(reports) > 1:
        extra["heldout_reports_other_seeds"] = reports[1:]
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
    hashes = bundle(
        args.checkpoint,
        args.out,
        dtype=DTYPES[args.dtype],
        extra=extra,
        autoencoder=args.autoencoder,
    )
    json.dump(hashes, sys.stdout, indent=4)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
