"""Class labels and label files: MMAction2 lists and CSV tables.

Class ids follow BUSV's lists: benign 0, malignant 1; BUSI's third class, normal,
is 2. A label in a file may be the id or the class name. Entries that cannot be
used (malformed line, unknown label, missing folder or file) are collected as
:class:`~lddm_fast.data.errors.Skipped` with the file and line, never raised.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

from lddm_fast.data.errors import BadInputError, Scan, Skipped

CLASSES = ("benign", "malignant", "normal")
#: Label of items with no class (a folder of conditioning images, say).
UNLABELED = -1


@dataclass(frozen=True)
class LabeledPath:
    """A dataset entry named by a label file: absolute ``path`` and class id ``label``."""

    path: str
    label: int


def parse_label(value: str, classes: tuple[str, ...], where: str) -> int:
    """Class id of ``value`` (an id or a class name); BadInputError naming ``where`` if unknown."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        label = int(text)
        if 0 <= label < len(classes):
            return label
    elif text.lower() in classes:
        return classes.index(text.lower())
    known = ", ".join(f"{i} {name}" for i, name in enumerate(classes))
    raise BadInputError(where, f"unknown label {text!r} (known: {known})")


def read_mmaction_list(
    list_path: str | os.PathLike, root: str | os.PathLike, classes: tuple[str, ...] = CLASSES
) -> Scan[LabeledPath]:
    """Entries of an MMAction2 list, paths resolved against ``root``.

    Rawframe lists have ``<video_dir> <total_frames> <label>`` per line, video lists
    ``<video_file> <label>``; the frame count is not trusted (the scan counts the
    frames on disk). Paths may contain spaces, since the last fields are split off
    from the right. Blank lines and ``#`` comments are ignored.
    """
    list_path, root = os.fspath(list_path), os.fspath(root)
    scan: Scan[LabeledPath] = Scan()
    for number, line in enumerate(_read_lines(list_path), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{list_path}:{number}"
        fields = text.rsplit(maxsplit=2)
        if len(fields) == 3 and not fields[1].isdigit():
            fields = [f"{fields[0]} {fields[1]}", fields[2]]
        if len(fields) < 2:
            scan.skipped.append(
                Skipped(where, f"expected '<video> <frames> <label>' or '<video> <label>': {text}")
            )
            continue
        _add_entry(scan, fields[0], fields[-1], root, classes, where)
    return scan


def read_label_csv(
    csv_path: str | os.PathLike, root: str | os.PathLike, classes: tuple[str, ...] = CLASSES
) -> Scan[LabeledPath]:
    """Entries of a CSV with a header naming a ``video`` (or ``path``) and a ``label`` column."""
    csv_path, root = os.fspath(csv_path), os.fspath(root)
    scan: Scan[LabeledPath] = Scan()
    rows = csv.DictReader(_read_lines(csv_path))
    header = [h.strip().lower() for h in rows.fieldnames or []]
    path_key = next((k for k in ("video", "path") if k in header), None)
    if path_key is None or "label" not in header:
        raise BadInputError(
            csv_path, f"CSV header needs 'video' (or 'path') and 'label', got {header}"
        )
    rows.fieldnames = header
    for number, row in enumerate(rows, start=2):
        where = f"{csv_path}:{number}"
        if not (row.get(path_key) or "").strip() or row.get("label") is None:
            scan.skipped.append(Skipped(where, "row without a path or a label"))
            continue
        _add_entry(scan, row[path_key].strip(), row["label"], root, classes, where)
    return scan


def _add_entry(scan: Scan[LabeledPath], name, label_text, root, classes, where) -> None:
    path = name if os.path.isabs(name) else os.path.join(root, name)
    try:
        label = parse_label(label_text, classes, where)
    except BadInputError as e:
        scan.skipped.append(Skipped.from_error(e))
        return
    if not os.path.exists(path):
        scan.skipped.append(Skipped(where, f"{path} is listed but does not exist"))
        return
    scan.records.append(LabeledPath(path, label))


def _read_lines(path: str) -> list[str]:
    try:
        if os.path.getsize(path) == 0:
            raise BadInputError(path, "empty label file (0 bytes)")
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read().splitlines()
    except FileNotFoundError as e:
        raise BadInputError(path, "label file not found") from e
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"label file is not UTF-8 text ({e})") from e
