"""The ``synthesis`` suite: end-to-end ``lddm-fast synthesize`` videos/s on a folder of
phantom images, beside the sampler-only rate on the same images and seeds (the gap
is the engine's overhead: finding and decoding inputs, queues, encoding, atomic writes,
manifest, summary).

Both rows use one sampler built before the timing (the engine gets it through
``make_sampler``, the hook tests use too): building the model is a once-per-run cost like
importing torch, which the rates leave out, and with it in, an 8-image run measured the
model's weight init more than the engine.

Parity: the engine's npz outputs must equal direct sampling of the same images with
the same per-video seeds, up to one gray level (a video's float result can differ in
the last bits with its batch companions, which may flip a rounding).
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from pathlib import Path

import torch

from harness import Case
from lddm_fast import cli
from lddm_fast.data.video_io import read_video
from lddm_fast.synth import adapter, seeds
from lddm_fast.synth import cli as synth_cli
from lddm_fast.synth.engine import load_image, output_rel
from lddm_fast.synth.inputs import InputSet
from shapes import SYNTHESIS

SEED = 0


def _phantom_folder(root: Path, count: int, size: int) -> Path:
    half = (count + 1) // 2
    argv = [
        "phantom",
        str(root),
        "--benign",
        str(half),
        "--malignant",
        str(count - half),
        "--normal",
        "0",
        "--layout",
        "busi",
        "--size",
        str(size),
        "--quiet",
    ]
    if cli.main(argv) != 0:
        raise RuntimeError(f"lddm-fast {' '.join(argv)} failed")
    return root / "busi"


def cases(device: str, dtype: torch.dtype, quick: bool, compile_: bool = True) -> list[Case]:
    out = []
    dtype_name = str(dtype).removeprefix("torch.")
    for preset, steps, count, batch in SYNTHESIS[device][: 1 if quick else None]:
        sampler = adapter.load_sampler(
            checkpoint=None,
            preset=preset,
            device=torch.device(device),
            dtype=dtype,
            num_frames=None,
            steps=steps,
            sampler="ddim",
            guidance=1.0,
        )
        work = Path(tempfile.mkdtemp(prefix="lddm-bench-synth-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
        calls = itertools.count()
        folder = _phantom_folder(work / "images", count, sampler.size)
        items = sorted(InputSet(folder), key=lambda item: item.rel)

        def make(items=items, sampler=sampler):
            images = torch.stack(
                [load_image(i.path, sampler.size, sampler.channels) for i in items]
            )
            return images, [seeds.input_video_seed(SEED, i.rel, 0) for i in items]

        def sampler_only(images, video_seeds, sampler=sampler, batch=batch):
            parts = [
                sampler(images[i : i + batch], video_seeds[i : i + batch]).videos
                for i in range(0, len(video_seeds), batch)
            ]
            return torch.cat(parts)

        def engine(
            images,
            video_seeds,
            folder=folder,
            work=work,
            items=items,
            batch=batch,
            preset=preset,
            steps=steps,
            channels=sampler.channels,
            sampler=sampler,
            calls=calls,
        ):
            # A fresh folder per call, as a real run gets: deleting the last call's
            # outputs first (1.7 ms of unlinks) is no part of the engine's work.
            dest = work / f"out-{next(calls)}"
            argv = [
                "--input",
                str(folder),
                "--out",
                str(dest),
                "--preset",
                preset,
                "--steps",
                str(steps),
                "--batch-size",
                str(batch),
                "--format",
                "npz",
                "--seed",
                str(SEED),
                "--device",
                device,
                "--dtype",
                dtype_name,
                "--quiet",
            ]
            if synth_cli.main(argv, make_sampler=lambda *_: sampler) != 0:
                raise RuntimeError(f"lddm-fast synthesize {' '.join(argv)} failed")

            def written() -> torch.Tensor:
                videos = []
                for item in items:
                    frames = read_video(dest / output_rel(item.rel, 0, "npz"), channels=channels)
                    # [T, H, W] or [T, H, W, 3] -> [C, T, H, W], the pipeline's layout
                    video = torch.from_numpy(frames.frames)
                    videos.append(video[None] if channels == 1 else video.permute(3, 0, 1, 2))
                return torch.stack(videos)

            # Read back by the parity check, after the call and outside its timing.
            return written

        def expected(images, video_seeds, sampler_only=sampler_only):
            return sampler_only(images, video_seeds).double()

        out.append(
            Case(
                suite="synthesis",
                op="synthesize",
                label=f"{preset}, {count} images, {steps} steps",
                dtype=dtype,
                params={"preset": preset, "images": count, "steps": steps, "batch": batch},
                make_inputs=make,
                providers={"sampler only": sampler_only, "engine": engine},
                expected=expected,
                bytes_moved=0,
                parity_floor=2 / 255,
                items=count,
            )
        )
    return out
