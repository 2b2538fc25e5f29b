"""The input images of a synthesis run, streamed: a folder, a glob, a list file, one image.

``--input`` is read as

* a **folder**: every image file under it, recursively (sorted, numbers by value;
  hidden entries, BUSI ``*_mask*.png`` files and files without an image suffix are
  left out). DICOM files count as images: ``.dcm``/``.dicom``, and files without a
  suffix that start with the DICM preamble (``IM_0001`` exports; ``DICOMDIR``, an
  index, is left out). A BUSI layout (``benign/``, ``malignant/``, ``normal/``) is a folder like
  any other; its class is kept, see below.
* a **glob** (``data/**/*.png``; ``**`` spans folders): every matching file.
* a **text file of paths**, one per line (blank lines and ``#`` comments ignored);
  relative paths are relative to the list file's folder. Every line is an input: a
  missing or unreadable file is reported as a bad input, not dropped silently.
* one **image file**.

Each input gets a relative path ``rel`` (POSIX separators), its identity for the whole
run: seeds, shards, manifest keys and the output layout
``<out>/<rel folder>/<stem>_k<k>.<ext>`` derive from it. ``rel`` is relative to the
folder, to the glob's fixed leading folders, or to the list file's folder; a listed
path outside that folder keeps its absolute path minus the leading ``/`` (so
``/data/x/a.png`` becomes ``data/x/a.png``), which never climbs out of ``<out>``.
When the first folder of ``rel`` is a class name (benign, malignant, normal, in any
case), the input carries that class: BUSI's layout is preserved in the output
folders and recorded in the manifest.

Nothing is read or held beyond the current folder listing or line, so a list of
100k images costs no more memory than a list of ten; :class:`InputSet` can be
iterated again (the engine counts first, for the progress bar, then feeds).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Container, Iterator
from dataclasses import dataclass

from lddm_fast.data.busi import MASK_NAME
from lddm_fast.data.dicom import DICOM_SUFFIXES, is_dicom
from lddm_fast.data.errors import BadInputError
from lddm_fast.data.images import IMAGE_SUFFIXES
from lddm_fast.data.labels import CLASSES
from lddm_fast.data.video_io import natural_key

__all__ = ["InputItem", "InputSet"]

_GLOB_MAGIC = re.compile(r"[*?[]")
INPUT_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES


@dataclass(frozen=True)
class InputItem:
    """One input image.

    Attributes:
        path: the file to read.
        rel: POSIX path relative to the input root (see the module docstring).
        label: the class name (``"benign"``, ``"malignant"``, ``"normal"``) when the
            first folder of ``rel`` names one, else None.
        view_of: for one view of a file with several (a DICOM dual view under
            ``--region auto``), the ``rel`` of that file; else None.
        view_index: that view's index in the file (left to right), with ``view_of``.
    """

    path: str
    rel: str
    label: str | None
    view_of: str | None = None
    view_index: int | None = None

    def view(self, index: int, taken: Container[str] = ()) -> InputItem:
        """View ``index`` of this file as an input of its own, with its own seeds and
        outputs: ``rel`` ``<stem>_r<index><suffix>``, outputs ``<stem>_r<index>_k<k>``.

        ``taken`` holds the stems (``rel`` without suffix) of every input of the run.
        When another input already has the view's stem (``x_r0.png`` next to a dual
        view ``x.dcm``), the view becomes ``<stem>_r<index>-<n>``, n >= 1 the least
        free. A view's stem never equals another view's (``_r<index>``, then
        ``-<n>``, parse back from the end uniquely), so names are unique and depend
        only on the run's inputs, not on the order their files are decoded in.
        """
        stem, suffix = os.path.splitext(self.rel)
        name, n = f"{stem}_r{index}", 0
        while name in taken:
            n += 1
            name = f"{stem}_r{index}-{n}"
        return InputItem(self.path, name + suffix, self.label, view_of=self.rel, view_index=index)

    @classmethod
    def make(cls, path: str, rel: str) -> InputItem:
        """An item for ``path`` at ``rel`` (OS separators allowed), its label derived."""
        rel = rel.replace(os.sep, "/")
        first, _, rest = rel.partition("/")
        label = first.lower() if rest and first.lower() in CLASSES else None
        return cls(path, rel, label)


class InputSet:
    """The inputs named by ``spec`` (folder, glob, list file or image), re-iterable.

    Args:
        spec: the ``--input`` value.
        exclude: a folder never to descend into (the output folder, when it lies
            inside the input folder, so earlier outputs are not taken as inputs).

    Raises:
        BadInputError: ``spec`` names nothing that exists (and is not a glob).
    """

    def __init__(self, spec: str | os.PathLike, *, exclude: str | os.PathLike | None = None):
        self.spec = os.fspath(spec)
        self._exclude = os.path.realpath(exclude) if exclude is not None else None
        if os.path.isdir(self.spec):
            self.kind, self.root = "folder", os.path.abspath(self.spec)
        elif os.path.isfile(self.spec):
            is_image = self.spec.lower().endswith(INPUT_SUFFIXES) or is_dicom(self.spec)
            self.kind = "image" if is_image else "list"
            self.root = os.path.dirname(os.path.abspath(self.spec))
        elif _GLOB_MAGIC.search(self.spec):
            self.kind, self.root = "glob", os.path.abspath(_glob_root(self.spec))
        else:
            raise BadInputError(
                self.spec, "input not found (expected a folder, a glob, a list file or an image)"
            )

    def describe(self) -> str:
        """E.g. ``folder /data/busi`` or ``list of paths /data/train.txt``."""
        what = {"folder": "folder", "image": "image", "list": "list of paths", "glob": "glob"}
        where = self.root if self.kind == "folder" else self.spec
        return f"{what[self.kind]} {where}"

    def __iter__(self) -> Iterator[InputItem]:
        if self.kind == "folder":
            return self._walk()
        if self.kind == "image":
            return iter([InputItem.make(self.spec, os.path.basename(self.spec))])
        if self.kind == "list":
            return self._listed()
        return self._globbed()

    def _walk(self) -> Iterator[InputItem]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(
                (
                    d
                    for d in dirnames
                    if not d.startswith(".")
                    and os.path.realpath(os.path.join(dirpath, d)) != self._exclude
                ),
                key=natural_key,
            )
            for name in sorted(filenames, key=natural_key):
                stem, suffix = os.path.splitext(name)
                path = os.path.join(dirpath, name)
                if name.startswith(".") or not _is_input(path, suffix):
                    continue
                if MASK_NAME.match(stem):  # annotations, not images to animate
                    continue
                yield InputItem.make(path, os.path.relpath(path, self.root))

    def _globbed(self) -> Iterator[InputItem]:
        for path in glob.iglob(self.spec, recursive=True):
            if os.path.isfile(path):
                yield InputItem.make(path, os.path.relpath(os.path.abspath(path), self.root))

    def _listed(self) -> Iterator[InputItem]:
        try:
            with open(self.spec, encoding="utf-8-sig") as lines:
                for line in lines:
                    entry = line.strip()
                    if not entry or entry.startswith("#"):
                        continue
                    path = os.path.normpath(os.path.join(self.root, entry))
                    yield InputItem.make(path, _rel_in(path, self.root))
        except UnicodeDecodeError as e:
            raise BadInputError(self.spec, f"list of paths is not UTF-8 text ({e})") from e


def _is_input(path: str, suffix: str) -> bool:
    if suffix:
        return suffix.lower() in INPUT_SUFFIXES
    # Only suffix-less files are opened (132 bytes), so a big folder of PNGs costs nothing.
    return os.path.basename(path).upper() != "DICOMDIR" and is_dicom(path)


def _glob_root(pattern: str) -> str:
    """The leading folders of ``pattern`` that hold no wildcard (``.`` if none)."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    if not fixed:
        return "."
    return os.sep.join(fixed) or os.sep


def _rel_in(path: str, root: str) -> str:
    """``path`` relative to ``root``; outside it, ``path`` without its leading ``/``."""
    rel = os.path.relpath(path, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        drive, tail = os.path.splitdrive(path)
        return (drive.rstrip(":") + tail).lstrip(os.sep)
    return rel
