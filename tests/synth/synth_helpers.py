"""Synthesis test helpers: tiny PNG corpora in a BUSI-like layout with bad files mixed
in, an in-process ``synthesize`` with the stand-in sampler, and readers of the books.

A module with its own name (not conftest) so ``from synth_helpers import ...`` cannot
pick up another folder's conftest."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image
from synth_standin import StandInSampler

from lddm_fast.synth import cli
from lddm_fast.synth.manifest import verify_record

# Heavy torch work on this shared 2-core box is far slower with 2 OpenMP threads.
torch.set_num_threads(1)

GOOD = ("benign/b1.png", "benign/b2.png", "malignant/m1.png", "normal/n1.png", "extra/x1.png")
BAD = {
    "malignant/corrupt.png": "cannot read image header",
    "normal/empty.png": "empty file",
    "benign/small.png": "image too small",
}


def write_png(path, height=20, width=24, seed=0):
    """A random gray PNG (sizes above the stand-in's 16 px, not square)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_corpus(root, *, bad=True, good=GOOD, height=20, width=24):
    """``good`` images of ``height`` x ``width`` under root, plus a BUSI mask that must
    be ignored and (``bad``) the files of :data:`BAD`."""
    for i, rel in enumerate(good):
        write_png(root / rel, height, width, seed=i)
    write_png(root / "benign" / "b1_mask.png", seed=99)
    if bad:
        for rel in BAD:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "malignant" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        (root / "normal" / "empty.png").write_bytes(b"")
        write_png(root / "benign" / "small.png", height=8, width=8)
    return root


def synth(images, out, *args, sampler=None):
    """``lddm-fast synthesize`` in-process with the stand-in; returns (status, sampler)."""
    sampler = sampler or StandInSampler()
    argv = ["--input", str(images), "--out", str(out), "--format", "npz", "--workers", "2"]
    status = cli.main([*argv, *args], make_sampler=lambda *_: sampler)
    return status, sampler


def manifest(out):
    with open(out / "manifest.jsonl") as f:
        return [json.loads(line) for line in f]


def failed(out):
    with open(out / "failed.jsonl") as f:
        return [json.loads(line) for line in f]


def summary(out):
    return json.loads((out / "summary.json").read_text())


def leftovers(out):
    """Hidden files or folders anywhere under out (atomic-write temporaries)."""
    return [
        os.path.join(d, n) for d, dirs, files in os.walk(out) for n in dirs + files if n[0] == "."
    ]


def all_verify(out, records, formats=("npz",)):
    settings = records[0]["settings"]
    return all(
        verify_record(r, str(out), settings=settings, formats=list(formats), seed=r["seed"]) is None
        for r in records
    )
