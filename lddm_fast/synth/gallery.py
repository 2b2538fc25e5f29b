"""A static gallery of a synthesis run: ``<out>/index.html`` beside the manifest.

One card per video (the input image, the video as mp4 with a gif fallback, class,
seed, model, settings) and one per failure (bad input or failed video, with the
reason); filters by class and by status (finished, failed, non-finite); pages of
``page_size`` cards so a run of 10,000 videos opens at once; one contact-sheet PNG per
class. Everything is read from disk by the browser: no server, no network.

Files written (atomically):

* ``index.html`` (the page; its state is in the URL hash, e.g.
  ``#class=benign&status=failed&page=2``),
* ``gallery/data.js`` (the cards as JSON, loaded by a script tag, which works from
  ``file://`` where fetching a JSON file does not), ``gallery/gallery.js`` and
  ``gallery/gallery.css``,
* ``gallery/contact_<class>.png`` (``contact_unlabeled.png`` for videos without one).

Names taken from the inputs reach the page only as JSON strings that the script puts
into ``textContent`` or URL-quoted ``src`` attributes, never as HTML.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

from lddm_fast.data.atomic import atomic_file
from lddm_fast.synth.manifest import FAILED, MANIFEST, ManifestIndex

__all__ = ["GalleryInfo", "gallery_cards", "write_contact_sheet", "write_gallery"]

# Inputs the browser shows as they are; others (DICOM, TIFF) get no picture.
_BROWSER_IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
_ASSETS = ("index.html", "gallery.js", "gallery.css")


@dataclass(frozen=True)
class GalleryInfo:
    """What :func:`write_gallery` wrote: the page, the card counts, the contact sheets."""

    index: str
    videos: int
    failures: int
    contact_sheets: dict[str, str]


def _url(path: str) -> str:
    """A relative URL for an out-relative POSIX path (each segment percent-quoted)."""
    return quote(path.replace(os.sep, "/"), safe="/")


def _settings_text(settings: dict) -> str:
    parts = [
        f"{settings.get('sampler', '?')} {settings.get('steps', '?')} steps",
        f"guidance {settings.get('guidance', '?')}",
        f"{settings.get('num_frames', '?')} frames",
        str(settings.get("dtype", "")),
    ]
    return ", ".join(p for p in parts if p)


def _input_image(out_dir: str, path: str | None) -> str | None:
    if not path or not path.lower().endswith(_BROWSER_IMAGES):
        return None
    return _url(os.path.relpath(path, out_dir))


def _read_failures(out_dir: str) -> list[dict]:
    """failed.jsonl's records (a torn last line is skipped)."""
    path = os.path.join(out_dir, FAILED)
    records = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    return records


def gallery_cards(out_dir: str) -> list[dict]:
    """The cards of ``out_dir``'s finished videos (manifest order by input and k),
    then of its failures, as the page's JSON objects."""
    cards = []
    index = ManifestIndex(out_dir)
    try:
        for key in sorted(index.keys()):
            line = index.line(key)
            record = json.loads(line) if line else {}
            outputs = {o.get("format"): o.get("path") for o in record.get("outputs", ())}
            model = record.get("model") or {}
            cards.append(
                {
                    "input": record.get("input"),
                    "k": record.get("k"),
                    "class": record.get("class") or "",
                    "seed": str(record.get("seed")),
                    "status": "finished",
                    "reason": "",
                    "image": _input_image(out_dir, record.get("path")),
                    "mp4": _url(outputs["mp4"]) if outputs.get("mp4") else None,
                    "gif": _url(outputs["gif"]) if outputs.get("gif") else None,
                    "files": [_url(p) for p in outputs.values() if p],
                    "model": str(model.get("preset") or model.get("id") or ""),
                    "settings": _settings_text(record.get("settings") or {}),
                }
            )
    finally:
        index.close()
    for record in _read_failures(out_dir):
        nonfinite = "non-finite" in str(record.get("reason", ""))
        cards.append(
            {
                "input": record.get("input"),
                "k": record.get("k"),
                "class": record.get("class") or "",
                "seed": "",
                "status": "nonfinite" if nonfinite else "failed",
                "reason": str(record.get("reason", "")),
                "image": _input_image(out_dir, record.get("path")),
                "mp4": None,
                "gif": None,
                "files": [],
                "model": "",
                "settings": str(record.get("stage", "")),
            }
        )
    return cards


def write_contact_sheet(
    out_dir: str,
    path: str,
    *,
    rows: int = 16,
    columns: int = 9,
    label: str | None = None,
) -> int:
    """A contact sheet (x0 then evenly spaced frames, one row per video) of the first
    ``rows`` finished videos of ``out_dir``, in manifest order (input, k); with
    ``label``, only that class's (``""`` for videos without one). Each video is read
    from its first written format; one that has gone missing since is left out.
    Returns the number of rows, 0 (and nothing written) when none is readable."""
    from lddm_fast.data.contact_sheet import contact_sheet
    from lddm_fast.data.errors import BadInputError
    from lddm_fast.data.video_io import read_video

    videos = []
    index = ManifestIndex(out_dir)
    try:
        for key in sorted(index.keys()):
            line = index.line(key)
            record = json.loads(line) if line else {}
            outputs = record.get("outputs") or []
            if not outputs or (label is not None and (record.get("class") or "") != label):
                continue
            try:
                videos.append(read_video(os.path.join(out_dir, outputs[0]["path"])).frames)
            except BadInputError:
                continue
            if len(videos) == rows:
                break
    finally:
        index.close()
    if videos:
        contact_sheet(videos, path, columns=columns)
    return len(videos)


def _contact_sheets(out_dir: str, cards: list[dict], rows: int) -> dict[str, str]:
    """``gallery/contact_<class>.png`` for each class with finished videos."""
    labels = {c["class"] for c in cards if c["status"] == "finished"}
    sheets = {}
    for label in sorted(labels):
        rel = f"gallery/contact_{label or 'unlabeled'}.png"
        if write_contact_sheet(out_dir, os.path.join(out_dir, rel), rows=rows, label=label):
            sheets[label or "unlabeled"] = rel
    return sheets


def _write_text(path: str, text: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_gallery(out_dir: str, *, page_size: int = 48, sheet_rows: int = 12) -> GalleryInfo:
    """Write the gallery of the synthesis output ``out_dir`` (see the module docstring).

    Args:
        page_size: cards per page.
        sheet_rows: videos (rows) per class contact sheet.

    Raises:
        FileNotFoundError: ``out_dir`` holds no ``manifest.jsonl`` or ``failed.jsonl``.
    """
    if page_size < 1 or sheet_rows < 1:
        raise ValueError("page_size and sheet_rows must be at least 1")
    if not any(os.path.isfile(os.path.join(out_dir, n)) for n in (MANIFEST, FAILED)):
        raise FileNotFoundError(
            f"{out_dir}: no {MANIFEST} or {FAILED}; is it a 'lddm-fast synthesize' output?"
        )
    cards = gallery_cards(out_dir)
    os.makedirs(os.path.join(out_dir, "gallery"), exist_ok=True)
    sheets = _contact_sheets(out_dir, cards, sheet_rows)
    data = {
        "title": os.path.basename(os.path.abspath(out_dir)),
        "pageSize": page_size,
        "cards": cards,
        "contactSheets": {label: _url(rel) for label, rel in sheets.items()},
    }
    # ensure_ascii and "<\/" keep any input name inert inside a script.
    text = json.dumps(data, ensure_ascii=True).replace("</", "<\\/")
    _write_text(os.path.join(out_dir, "gallery", "data.js"), f"window.LDDM_GALLERY = {text};\n")
    source = resources.files("lddm_fast") / "assets" / "gallery"
    for name in _ASSETS:
        target = name if name == "index.html" else f"gallery/{name}"
        _write_text(os.path.join(out_dir, target), (source / name).read_text(encoding="utf-8"))
    finished = sum(1 for c in cards if c["status"] == "finished")
    return GalleryInfo(os.path.join(out_dir, "index.html"), finished, len(cards) - finished, sheets)
