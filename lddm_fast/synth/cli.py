"""Make N videos for every image of a folder, glob or list: sharded, resumable, pipelined.

Inputs (--input): a folder (recursive; BUSI's benign/malignant/normal classes are
kept), a glob such as 'data/**/*.png', a text file with one image path per line,
or one image. PNG/JPEG and DICOM (.dcm, or the DICM preamble) mix freely; of a
multi-frame DICOM cine the first frame is used, or --frame N. Each image is
center-cropped square and resized to the model size.

Imaging region (--region): center (default) keeps the whole frame and crops its
centre square, as before. auto crops to the imaging region: the DICOM ultrasound
regions when the file has them (each 2-D tissue region is its own input, so a dual
view gives <stem>_r0 and <stem>_r1, or <stem>_r0-1 if an input named <stem>_r0 is
also there; Doppler and spectral regions are dropped), otherwise the sector or
rectangle of speckle found in the pixels, with burned-in text around it blacked out.
none keeps the whole frame, letterboxed. The region's box (and pixel spacing, when
the DICOM gives it) is recorded per video in manifest.jsonl, and for a view the
file it comes from (view_of) and its index there (view). No DICOM header value
(names, IDs, dates, institution) is written anywhere: inputs are named by their
paths.

Outputs (--out): <out>/<input's folder>/<stem>_k<k>.mp4 (and .gif, .npz, or a
folder of PNG frames), one per image and k = 0 .. N-1; manifest.jsonl (one line
per finished video: input, class, seed, outputs with size and sha256, settings);
failed.jsonl (bad inputs and failed videos, with the reason); run.json (the
arguments); summary.json. Video k of an image always gets the same seed (from
--seed, the image's relative path and k), whatever the batch size or GPU count.

Resuming: rerun the same command. Finished videos whose files are intact are
skipped, anything else is made again; a crash loses at most the videos in flight.
A rerun with different arguments is refused, naming them, unless --force (then
videos made with other settings are made again; batch size, device and thread
counts may always change).

Many GPUs or nodes: torchrun --nproc-per-node G -m lddm_fast.synth <same arguments>.
Each rank takes the inputs whose path hashes to it; rank 0 merges the manifests.

Exit status: 0 finished (some inputs may have failed: see failed.jsonl); 1 nothing
could be made (every video failed) or sampling failed; 2 bad arguments or refused
rerun; 3 stopped on an output error (disk full, unwritable folder; rerun to
continue); 130 interrupted.

examples:
  lddm-fast synthesize --input data/BUSI --out synth/busi --videos-per-image 4
  lddm-fast synthesize --input 'scans/**/*.png' --out synth/ --checkpoint ckpt/
  lddm-fast synthesize --input list.txt --out /tmp/s --preset tiny --steps 2 --format mp4,npz
  torchrun --nproc-per-node 8 -m lddm_fast.synth --input data/BUSI --out synth/busi
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from lddm_fast.argtypes import finite_float, int_at_least, positive_float, positive_int
from lddm_fast.data.regions import REGION_MODES
from lddm_fast.diffusion.samplers import SAMPLERS
from lddm_fast.models.config import PRESETS

HELP = "make N videos per image of a folder/glob/list (sharded over GPUs, resumable)"

# From the library itself: `import lddm_fast` already loads torch (for lddm_fast.ops),
# so a copy here would save the parser little (measured: import 1.23 s vs 1.27 s).
SAMPLER_NAMES = tuple(SAMPLERS)
PRESET_NAMES = tuple(PRESETS)
# CLI flag of each run.json entry, for naming a mismatch the way the user typed it.
_FLAGS = {
    "input": "--input",
    "model": "--checkpoint/--preset",
    "videos_per_image": "--videos-per-image",
    "steps": "--steps",
    "sampler": "--sampler",
    "guidance": "--guidance",
    "format": "--format",
    "seed": "--seed",
    "num_frames": "--num-frames",
    "fps": "--fps",
    "dtype": "--dtype",
    "region": "--region",
    "frame": "--frame",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help="folder (recursive), glob, text file of image paths, or one image",
    )
    io.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    io.add_argument(
        "--format",
        type=_formats,
        default=("mp4",),
        metavar="LIST",
        help="comma-separated output formats among mp4, gif, npz, png (default mp4)",
    )
    io.add_argument("--fps", type=positive_float, default=10.0, help="frame rate (default 10)")
    io.add_argument(
        "--region",
        choices=REGION_MODES,
        default="center",
        help="imaging region: auto (DICOM ultrasound regions, else the speckle area with "
        "text masked), center (whole frame, centre square; default), none (letterboxed)",
    )
    io.add_argument(
        "--frame",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="frame of a multi-frame DICOM cine to animate (default 0, the first)",
    )

    model = parser.add_argument_group("model (default: the bundled checkpoint)")
    which = model.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory")
    which.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        help="a randomly initialised preset model (for tests and benchmarks)",
    )

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--videos-per-image", type=positive_int, default=1, metavar="N", help="default 1"
    )
    sampling.add_argument("--steps", type=positive_int, default=25, help="default 25")
    sampling.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim", help="default ddim")
    sampling.add_argument(
        "--guidance",
        type=finite_float,
        default=1.0,
        help="classifier-free guidance scale (1: off)",
    )
    sampling.add_argument(
        "--num-frames", type=positive_int, metavar="T", help="frames after x0 (default: model's)"
    )
    sampling.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    sampling.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16"),
        default="auto",
        help="network dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )

    run_ = parser.add_argument_group("execution (may change between reruns)")
    run_.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        metavar="B",
        help="videos per sampler call (default 8)",
    )
    run_.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)"
    )
    run_.add_argument(
        "--workers", type=positive_int, default=4, help="image decode threads (default 4)"
    )
    run_.add_argument(
        "--writers", type=positive_int, default=2, help="encode/write threads (default 2)"
    )
    run_.add_argument(
        "--force", action="store_true", help="continue OUT even if it was made with other arguments"
    )
    run_.add_argument("--quiet", action="store_true", help="no progress bar")
    run_.add_argument(
        "--contact-sheet",
        metavar="PNG",
        default=None,
        help="after the run, write a contact sheet of the finished videos (x0 then evenly "
        "spaced frames, one row per video, at most 16 rows, in input order)",
    )
    run_.add_argument(
        "--gallery",
        action="store_true",
        help="after the run, write OUT/index.html, a static gallery of every video and "
        "failure (same as 'lddm-fast gallery OUT')",
    )


def _formats(text: str) -> tuple[str, ...]:
    from lddm_fast.synth.engine import FORMATS

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(names))  # drop repeats, keep order


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace, *, make_sampler=None) -> int:
    """Run ``lddm-fast synthesize``; returns the exit status (see the module docstring).

    ``make_sampler(args, device, dtype)`` replaces the pipeline (tests and
    benchmarks): it returns a :class:`~lddm_fast.synth.engine.VideoSampler` that also
    has ``num_frames`` and a ``model`` dict with an ``id``.
    """
    from lddm_fast.data.errors import BadInputError
    from lddm_fast.synth.distributed import ProcessGroup, dist_info
    from lddm_fast.synth.inputs import InputSet

    try:
        info = dist_info()
    except ValueError as e:
        return _error(str(e), 2)
    out = os.path.abspath(args.out)
    try:
        inputs = InputSet(args.input, exclude=out)
        if next(iter(inputs), None) is None:
            return _error(f"no input images in {inputs.describe()}", 2)
    except BadInputError as e:
        return _error(str(e), 2)
    try:
        device = _device(args.device, info.local_rank, info.world_size)
    except (RuntimeError, ValueError) as e:
        return _error(f"--device {args.device}: {e}", 2)
    dtype_name = args.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"

    with ProcessGroup(info, device) as group:
        try:
            sampler = (make_sampler or _load_sampler)(args, device, dtype_name)
        except (FileNotFoundError, ValueError) as e:
            return _error(str(e), 2)
        settings = {
            "model": sampler.model["id"],
            "steps": args.steps,
            "sampler": args.sampler,
            "guidance": args.guidance,
            "num_frames": sampler.num_frames,
            "dtype": dtype_name,
        }
        # Recorded only when not the default, so folders made before these options
        # existed resume as they are.
        if args.region != "center":
            settings["region"] = args.region
        if args.frame != 0:
            settings["frame"] = args.frame
        config = {
            **settings,
            "input": os.path.abspath(args.input),
            "videos_per_image": args.videos_per_image,
            "format": list(args.format),
            "seed": args.seed,
            "fps": args.fps,
        }
        code = _prepare_out(out, config, args.force, info.rank, group)
        if code:
            return code
        code = _synthesize(args, inputs, sampler, settings, out, info, group)
        if code == 0 and args.contact_sheet and info.rank == 0:
            from lddm_fast.synth.gallery import write_contact_sheet

            rows = write_contact_sheet(out, args.contact_sheet)
            if not rows:
                raise ValueError(f"{out}: no finished videos for a contact sheet")
            print(f"contact sheet of {rows} videos: {args.contact_sheet}")
        if code == 0 and args.gallery and info.rank == 0:
            from lddm_fast.synth.gallery import write_gallery

            gallery = write_gallery(out)
            print(f"gallery of {gallery.videos} videos: {gallery.index}")
        return code


def _device(name: str, local_rank: int, world_size: int):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available here")
        if device.index is None:
            # Under torchrun each process drives the GPU of its local rank.
            device = torch.device("cuda", local_rank if world_size > 1 else 0)
    return device


def _load_sampler(args: argparse.Namespace, device, dtype_name: str):
    from lddm_fast.synth.adapter import DTYPES, load_sampler

    return load_sampler(
        checkpoint=args.checkpoint,
        preset=args.preset,
        device=device,
        dtype=DTYPES[dtype_name],
        num_frames=args.num_frames,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
    )


def _prepare_out(out: str, config: dict[str, Any], force: bool, rank: int, group) -> int:
    """Check the run config (every rank, before anyone writes), then let rank 0 record
    it and sweep a crash's leftovers while the others wait. 0 when all is ready."""
    from lddm_fast.synth.manifest import (
        RunConfigMismatch,
        check_run_config,
        sweep_leftovers,
        write_run_config,
    )

    try:
        fresh = check_run_config(out, config)
    except RunConfigMismatch as e:
        if not force:
            changes = "\n".join(
                f"  {_FLAGS.get(name, name)}: was {old!r}, now {new!r}"
                for name, old, new in e.differences
            )
            return _error(
                f"{out} was made with other arguments:\n{changes}\nRerun with the recorded "
                "arguments to resume, or add --force to continue with the new ones "
                "(videos made with other settings are then made again).",
                2,
            )
        fresh = True
    group.barrier()  # every rank has read run.json before rank 0 rewrites it
    if rank == 0:
        try:
            os.makedirs(out, exist_ok=True)
            if fresh:
                write_run_config(out, config)
            removed = sweep_leftovers(out)
        except OSError as e:
            return _error(f"cannot write to the output folder {out}: {e}", 3)
        if removed:
            print(f"removed {removed} temporary files left by an interrupted run", file=sys.stderr)
    group.barrier()
    return 0


def _synthesize(args, inputs, sampler, settings, out, info, group) -> int:
    import signal
    import threading

    from lddm_fast.synth.engine import SynthEngine, summary_line, total_summary
    from lddm_fast.synth.manifest import close_books, gather_summaries

    engine = SynthEngine(
        sampler,
        out,
        settings=settings,
        model=sampler.model,
        formats=args.format,
        videos_per_image=args.videos_per_image,
        seed=args.seed,
        fps=args.fps,
        batch_size=args.batch_size,
        workers=args.workers,
        writers=args.writers,
        rank=info.rank,
        world_size=info.world_size,
        progress=not args.quiet and info.rank == 0,
        region=args.region,
        frame=args.frame,
    )
    # torchrun and batch schedulers stop jobs with SIGTERM: stop like on Ctrl-C, so
    # the threads finish the video in hand and the books are closed.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = engine.run(inputs)
    except Exception as e:
        import traceback

        traceback.print_exc()
        hint = " (try a smaller --batch-size)" if "out of memory" in str(e).lower() else ""
        return _error(f"sampling failed: {type(e).__name__}: {e}{hint}", 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    mine = summary.to_dict()
    if summary.stopped == "interrupted":
        # Other ranks may not reach a barrier now: skip the merge, the next run does it.
        print(f"interrupted: {summary_line(mine)}", file=sys.stderr)
        return 130
    ranks = gather_summaries(out, mine, info.rank, info.world_size, group)
    total = total_summary(ranks)
    if info.rank == 0:
        try:
            close_books(out, args.videos_per_image, total, ranks)
        except OSError as e:
            print(
                f"warning: could not merge the books in {out} ({e}); the per-rank files "
                "are kept and the next run merges them",
                file=sys.stderr,
            )
        print(summary_line(total))
        for reason in total["stopped"]:
            print(
                f"stopped: {reason}. Finished videos are recorded in manifest.jsonl; fix "
                "the cause and rerun the same command to continue.",
                file=sys.stderr,
            )
    if total["stopped"]:
        return 3
    if total["done"] + total["skipped"] == 0 and total["failed"] > 0:
        return 1
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, *, make_sampler=None) -> int:
    """``python -m lddm_fast.synth`` (what torchrun runs): the same arguments as
    ``lddm-fast synthesize``."""
    parser = argparse.ArgumentParser(prog="python -m lddm_fast.synth", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv), make_sampler=make_sampler)
