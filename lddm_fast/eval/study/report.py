"""The study's outputs: aggregate the runs, compare each augmented arm with real only
(paired by seed and real subset), write ``results.json``, ``report.md`` and a PNG plot
of a metric against the fraction of real training videos."""

from __future__ import annotations

import json
import math
import statistics

__all__ = ["METRICS", "aggregate", "paired", "plot", "render_markdown"]

METRICS = ("auc", "balanced_accuracy", "accuracy", "f1")
ARM_COLORS = {
    "real": (40, 40, 40),
    "real+lddm": (200, 40, 40),
    "real+static": (40, 90, 200),
    "real+warp": (30, 150, 60),
}


def _mean_std(values: list[float]) -> dict:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}


def aggregate(runs: list[dict], arms: list[str], fractions: list[float]) -> dict:
    """``{arm: {fraction: {metric: {mean, std, n}}}}`` over seeds (keys as strings)."""
    out: dict = {}
    for arm in arms:
        out[arm] = {}
        for fraction in fractions:
            chosen = [r for r in runs if r["arm"] == arm and r["fraction"] == fraction]
            out[arm][str(fraction)] = {
                m: _mean_std([r["test"][m] for r in chosen]) for m in METRICS
            }
    return out


def paired(runs: list[dict], arms: list[str], fractions: list[float]) -> dict:
    """Per augmented arm and fraction: the differences arm - real over the seeds both
    ran (same seed, same real subset), as mean, std, n, and how many are above zero."""
    by_key = {(r["arm"], r["fraction"], r["seed"]): r for r in runs}
    out: dict = {}
    for arm in arms:
        if arm == "real":
            continue
        out[arm] = {}
        for fraction in fractions:
            out[arm][str(fraction)] = {}
            for m in METRICS:
                diffs = [
                    r["test"][m] - by_key[("real", fraction, r["seed"])]["test"][m]
                    for r in runs
                    if r["arm"] == arm
                    and r["fraction"] == fraction
                    and ("real", fraction, r["seed"]) in by_key
                ]
                summary = _mean_std(diffs)
                summary["wins"] = sum(d > 0 for d in diffs if math.isfinite(d))
                out[arm][str(fraction)][m] = summary
    return out


def _fmt(s: dict, digits: int = 3) -> str:
    if not s["n"]:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def render_markdown(results: dict) -> str:
    """``report.md`` from the content of ``results.json``."""
    arms, fractions = results["arms"], results["fractions"]
    agg, pair = results["aggregate"], results["paired"]
    lines = [
        "# Augmentation study: do synthesized videos train better classifiers?",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Test metrics on the fixed real test split ({results['data']['real']['test']}), mean ± "
        f"std over {results['settings']['seeds']} seeds per cell. Malignant is the positive "
        "class.",
        "",
    ]
    for metric in METRICS:
        lines += [f"## {metric}", ""]
        head = "| fraction of real train videos | " + " | ".join(arms) + " |"
        lines += [head, "|---" * (len(arms) + 1) + "|"]
        for f in fractions:
            cells = [_fmt(agg[a][str(f)][metric]) for a in arms]
            n_real = results["real_train_counts"][str(f)]
            lines.append(f"| {f:g} ({n_real} videos) | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Paired comparison with real only",
        "",
        "Difference arm - real of each metric for the same seed and the same real subset: "
        "mean ± std over the seeds, and in how many seeds the arm was better.",
        "",
        "| arm | fraction | AUC diff | wins | balanced accuracy diff | wins |",
        "|---|---|---|---|---|---|",
    ]
    for arm, by_fraction in pair.items():
        for f in fractions:
            d = by_fraction[str(f)]
            lines.append(
                f"| {arm} | {f:g} | {_fmt(d['auc'])} | {d['auc']['wins']}/{d['auc']['n']} | "
                f"{_fmt(d['balanced_accuracy'])} | {d['balanced_accuracy']['wins']}/"
                f"{d['balanced_accuracy']['n']} |"
            )
    lines += ["", "## Verdict at the smallest fraction", "", results["verdict"], ""]
    lines += ["## Synthetic sets", "", "| set | videos | FVD vs real test (N) |", "|---|---|---|"]
    for name, info in results["synthetic"].items():
        fvd = info.get("fvd")
        shown = "not measured"
        if fvd:
            shown = f"{fvd['value']:.1f} ({fvd['n_fake']} vs {fvd['n_real']})"
        lines.append(f"| {name} | {info['videos']} | {shown} |")
    if results.get("fvd_note"):
        lines += ["", results["fvd_note"]]
    lines += ["", "## Settings", "", "```json"]
    lines += [json.dumps(results["settings"], indent=2), "```", "", "## Data", "", "```json"]
    lines += [json.dumps(results["data"], indent=2), "```", ""]
    lines += [f"Plot: `{results['plot']}`. Raw runs: `results.json`.", ""]
    return "\n".join(lines)


def plot(results: dict, path: str, metric: str = "auc", size: tuple[int, int] = (720, 480)):
    """``metric`` (mean ± std over seeds) against the fraction of real training videos,
    one line per arm with error bars, as a PNG at ``path``."""
    from PIL import Image, ImageDraw

    arms, fractions = results["arms"], results["fractions"]
    agg = results["aggregate"]
    w, h = size
    left, right, top, bottom = 70, 170, 40, 60
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    values = [
        v
        for a in arms
        for f in fractions
        for v in (
            agg[a][str(f)][metric]["mean"] - agg[a][str(f)][metric]["std"],
            agg[a][str(f)][metric]["mean"] + agg[a][str(f)][metric]["std"],
        )
        if math.isfinite(v)
    ] or [0.0, 1.0]
    lo, hi = min(values), max(values)
    pad = max(0.02, 0.08 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    if hi - lo < 1e-6:
        lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05)

    def xy(i: int, v: float) -> tuple[float, float]:
        span = max(1, len(fractions) - 1)
        x = left + (w - left - right) * (i / span if len(fractions) > 1 else 0.5)
        return x, top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))

    draw.rectangle([left, top, w - right, h - bottom], outline=(120, 120, 120))
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        _, y = xy(0, v)
        draw.line([left - 4, y, left, y], fill=(120, 120, 120))
        draw.text((8, y - 6), f"{v:.2f}", fill=(0, 0, 0))
    for i, f in enumerate(fractions):
        x, _ = xy(i, lo)
        draw.line([x, h - bottom, x, h - bottom + 4], fill=(120, 120, 120))
        draw.text((x - 14, h - bottom + 8), f"{f:g}", fill=(0, 0, 0))
    draw.text((left, h - 22), "fraction of real training videos", fill=(0, 0, 0))
    draw.text((left, 12), f"test {metric} (mean ± std over seeds)", fill=(0, 0, 0))
    for n, arm in enumerate(arms):
        color = ARM_COLORS.get(arm, (120, 120, 120))
        shift = (n - (len(arms) - 1) / 2) * 4  # keeps error bars of arms apart
        points = []
        for i, f in enumerate(fractions):
            s = agg[arm][str(f)][metric]
            if not math.isfinite(s["mean"]):
                continue
            x, y = xy(i, s["mean"])
            x += shift
            _, y_lo = xy(i, s["mean"] - s["std"])
            _, y_hi = xy(i, s["mean"] + s["std"])
            draw.line([x, y_lo, x, y_hi], fill=color, width=1)
            draw.line([x - 3, y_lo, x + 3, y_lo], fill=color)
            draw.line([x - 3, y_hi, x + 3, y_hi], fill=color)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
            points.append((x, y))
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        ly = top + 10 + 18 * n
        draw.line([w - right + 12, ly + 6, w - right + 36, ly + 6], fill=color, width=2)
        draw.text((w - right + 42, ly), arm, fill=(0, 0, 0))
    image.save(path)
