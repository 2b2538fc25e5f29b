"""The output folder's books: manifest, failures, run config, leftovers of a crash.

Files in ``<out>``:

``manifest.jsonl``
    One JSON line per finished video (input, class, k, seed, every output with its
    format, relative path, size and sha256, the generation settings, checkpoint,
    finish time). A line is appended only after all of the video's files are renamed
    into place, with one ``write`` (fsynced in groups, see :class:`JsonlLog`):
    a line that exists describes complete files. A run with several ranks appends to
    ``manifest.rank<r>.jsonl``; rank 0 merges the parts (and earlier ones a crash
    left) into ``manifest.jsonl``, sorted by input and k, when all ranks are done.
``failed.jsonl``
    One line per bad input (k is null) or failed video (NaN/Inf, cannot encode) with
    the reason; ``failed.rank<r>.jsonl`` per rank, merged likewise. After a merge it
    lists only what is still not done.
``run.json``
    The arguments that shape the videos. A rerun with other values is refused unless
    ``--force``, naming each difference.

A rerun trusts a manifest line only after checking that the listed files exist with
the recorded size and sha256 and that the line's settings are the current ones;
anything else is made again. An incomplete last line (a write cut off by a crash or
a full disk) is ignored, and cut off by the writer before it appends.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from lddm_fast.data.atomic import atomic_file, fsync_dir, write_json
from lddm_fast.data.digest import sha256_file

__all__ = [
    "FAILED",
    "MANIFEST",
    "RUN_CONFIG",
    "SUMMARY",
    "JsonlLog",
    "ManifestIndex",
    "RunConfigMismatch",
    "check_run_config",
    "close_books",
    "gather_summaries",
    "merge_logs",
    "output_digest",
    "part_path",
    "sweep_leftovers",
    "write_json",
]

MANIFEST = "manifest.jsonl"
FAILED = "failed.jsonl"
RUN_CONFIG = "run.json"
SUMMARY = "summary.json"
RUN_CONFIG_VERSION = 1

# Temporaries of lddm_fast.data.atomic: tempfile's 8 random characters, then
# ".tmp<suffix>" for a file, ".tmp"/".old" for a folder.
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")
_TEMP_DIR = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")


def part_path(out_dir: str, name: str, rank: int) -> str:
    """``<out>/manifest.rank<r>.jsonl`` for ``name`` = ``manifest.jsonl`` (same for failed)."""
    stem, suffix = os.path.splitext(name)
    return os.path.join(out_dir, f"{stem}.rank{rank}{suffix}")


def _parts(out_dir: str, name: str) -> list[str]:
    stem, suffix = os.path.splitext(name)
    pattern = re.compile(rf"^{re.escape(stem)}\.rank(\d+){re.escape(suffix)}$")
    found = []
    for path in glob.glob(os.path.join(glob.escape(out_dir), f"{stem}.rank*{suffix}")):
        match = pattern.match(os.path.basename(path))
        if match:
            found.append((int(match[1]), path))
    return [path for _, path in sorted(found)]


def output_digest(path: str) -> tuple[int, str]:
    """``(size in bytes, sha256 hex)`` of an output file, or of a PNG-sequence folder.

    A folder's size is the sum of its files' and its digest the sha256 of
    ``"<name> <sha256>\\n"`` for each file in name order.
    """
    if os.path.isdir(path):
        outer = hashlib.sha256()
        total = 0
        for name in sorted(os.listdir(path)):
            size, digest = output_digest(os.path.join(path, name))
            total += size
            outer.update(f"{name} {digest}\n".encode())
        return total, outer.hexdigest()
    return os.path.getsize(path), sha256_file(path)


def _cut_incomplete_tail(path: str) -> bool:
    """Truncate ``path`` after its last newline; True if something was cut."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(pos, 65536)
            f.seek(pos - step)
            block = f.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                pos = pos - step + newline + 1
                break
            pos -= step
        if pos == end:
            return False
        f.truncate(pos)
        os.fsync(f.fileno())
        return True


class JsonlLog:
    """An append-only JSON-lines file, thread-safe.

    Each record reaches the file in one ``write`` before :meth:`append` returns, so a
    crashed process loses none. It is on disk (survives a power cut) once fsynced:
    after every append by default; with ``sync_interval``, by the first append at
    least that many seconds after the last fsync (the fsyncs of a burst of appends
    become one; no timer, so the lines of a burst's end wait for the next append), and
    always at :meth:`close`.
    Opening cuts off an incomplete last line (left by a crash) so the next record
    starts on a line of its own. If a write fails (disk full), the partial bytes are
    truncated away again before the error propagates.
    """

    def __init__(self, path: str, sync_interval: float = 0.0) -> None:
        self.path = path
        self.sync_interval = sync_interval
        created = not os.path.exists(path)
        if not created:
            self.repaired = _cut_incomplete_tail(path)
        else:
            self.repaired = False
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A new file's directory entry must be durable too, or a crash could lose the
        # whole file although its lines were fsynced; it is flushed with the first
        # lines (an empty log, the usual failures file, never pays for it).
        self._new_entry = created
        self._lock = threading.Lock()
        self._synced = time.monotonic()
        self._unsynced = False

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode()
        with self._lock:
            start = os.fstat(self._fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
                self._unsynced = True
                if time.monotonic() - self._synced >= self.sync_interval:
                    self._sync()
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                raise

    def _sync(self) -> None:
        os.fsync(self._fd)
        if self._new_entry:
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            self._new_entry = False
        self._synced = time.monotonic()
        self._unsynced = False

    def close(self) -> None:
        """fsync what is not on disk yet, then close."""
        with self._lock:
            if self._fd >= 0:
                try:
                    if self._unsynced:
                        self._sync()
                finally:
                    os.close(self._fd)
                    self._fd = -1


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of every complete line of ``path`` (none if it is missing)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        offset = 0
        for line in f:
            if not line.endswith(b"\n"):
                return  # cut off by a crash or a full disk: never a finished record
            yield offset, line
            offset += len(line)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


class ManifestIndex:
    """Where the newest record of each finished video is: ``manifest.jsonl`` and parts.

    Only an offset per video is kept (records are re-read on demand), so memory
    grows with the number of finished videos by a few dozen bytes each, never with
    their content. Of two records for the same ``(input, k)`` the later ``finished``
    time wins (a video redone after its files were damaged).

    Args:
        out_dir: the output folder.
        keep: ``keep(rel)`` selects the inputs to index (a rank's shard; a view of a
            dual-view file is kept with its file, ``view_of``); None: all.
    """

    def __init__(self, out_dir: str, keep: Callable[[str], bool] | None = None) -> None:
        self.sources = [os.path.join(out_dir, MANIFEST), *_parts(out_dir, MANIFEST)]
        self._entries: dict[tuple[str, int], tuple[float, int, int, int]] = {}
        self._fds: list[int] = []
        self.unreadable = 0
        # Whether manifest.jsonl is already what merge_logs would write: no parts, and
        # every line a complete record of a distinct video, in (input, k) order.
        self.merged = keep is None and len(self.sources) == 1
        previous, end = None, 0
        for source, path in enumerate(self.sources):
            for offset, line in _lines(path):
                end = offset + len(line)
                record = _parse(line)
                key = _video_key(record)
                if key is None:
                    self.unreadable += 1
                    self.merged = False
                    continue
                if previous is not None and key <= previous:
                    self.merged = False
                previous = key
                if keep is not None and not keep(_shard_rel(record)):
                    continue
                finished = float(record.get("finished") or 0.0)
                old = self._entries.get(key)
                if old is None or finished >= old[0]:
                    self._entries[key] = (finished, source, offset, len(line))
        for path in self.sources:
            try:
                self._fds.append(os.open(path, os.O_RDONLY))
            except FileNotFoundError:
                self._fds.append(-1)
        if self.merged and self._fds[0] >= 0 and os.fstat(self._fds[0]).st_size != end:
            self.merged = False  # an incomplete last line, which a merge drops

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._entries

    def keys(self) -> list[tuple[str, int]]:
        return list(self._entries)

    def line(self, key: tuple[str, int]) -> bytes | None:
        """The raw newest line recorded for ``(rel, k)``, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        _, source, offset, length = entry
        return os.pread(self._fds[source], length, offset)

    def get(self, rel: str, k: int) -> dict[str, Any] | None:
        """The newest record for video ``k`` of input ``rel``, or None."""
        line = self.line((rel, k))
        return None if line is None else _parse(line)

    def close(self) -> None:
        for fd in self._fds:
            if fd >= 0:
                os.close(fd)
        self._fds = []


def _shard_rel(record: dict[str, Any]) -> str:
    """The input a record is sharded by: a view's file (``view_of``), else its input."""
    view_of = record.get("view_of")
    return view_of if isinstance(view_of, str) else record["input"]


def _video_key(record: dict[str, Any] | None) -> tuple[str, int] | None:
    if record is None:
        return None
    rel, k = record.get("input"), record.get("k")
    if not isinstance(rel, str) or not isinstance(k, int):
        return None
    return rel, k


def verify_record(
    record: dict[str, Any],
    out_dir: str,
    *,
    settings: dict[str, Any],
    formats: list[str],
    seed: int,
) -> str | None:
    """Why ``record`` cannot count as done now, or None if it can.

    It counts when its settings, seed and formats are the current ones and every
    listed file exists with the recorded size and sha256.
    """
    if record.get("settings") != settings or record.get("seed") != seed:
        return "made with other settings"
    outputs = record.get("outputs")
    if not isinstance(outputs, list) or [o.get("format") for o in outputs] != formats:
        return "made in other formats"
    for output in outputs:
        path = os.path.join(out_dir, output["path"])
        try:
            size, digest = output_digest(path)
        except OSError:
            return f"{output['path']} is missing or unreadable"
        if size != output.get("size") or digest != output.get("sha256"):
            return f"{output['path']} differs from its recorded size/sha256"
    return None


class RunConfigMismatch(ValueError):
    """``<out>/run.json`` records other arguments; ``differences`` lists
    ``(name, recorded, now)``."""

    def __init__(self, path: str, differences: list[tuple[str, Any, Any]]) -> None:
        self.path = path
        self.differences = differences
        listed = "; ".join(f"{n}: was {old!r}, now {new!r}" for n, old, new in differences)
        super().__init__(f"{path}: this folder was made with other arguments ({listed})")


def check_run_config(out_dir: str, config: dict[str, Any]) -> bool:
    """Compare ``config`` with ``<out>/run.json``.

    Returns True when there is no ``run.json`` yet (a new output folder), False when
    it matches. Raises :class:`RunConfigMismatch` naming every differing argument.
    """
    path = os.path.join(out_dir, RUN_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return True  # nothing recorded; whether <out> is writable shows when it is made
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunConfigMismatch(path, [("run.json", f"unreadable ({e})", "valid")]) from e
    old = recorded.get("arguments") if isinstance(recorded, dict) else None
    if not isinstance(old, dict):
        raise RunConfigMismatch(path, [("run.json", "no 'arguments' table", "valid")])
    differences = [
        (name, old.get(name), config.get(name))
        for name in sorted(set(old) | set(config))
        if old.get(name) != config.get(name)
    ]
    if differences:
        raise RunConfigMismatch(path, differences)
    return False


def write_run_config(out_dir: str, config: dict[str, Any]) -> None:
    """Record ``config`` as the arguments of ``<out>``."""
    from lddm_fast import __version__

    write_json(
        os.path.join(out_dir, RUN_CONFIG),
        {
            "format_version": RUN_CONFIG_VERSION,
            "lddm_fast_version": __version__,
            "written": time.time(),
            "arguments": config,
        },
    )


def sweep_leftovers(out_dir: str) -> int:
    """Delete the temporaries an interrupted atomic write left under ``out_dir``.

    Only names of the exact shape :mod:`lddm_fast.data.atomic` creates are touched.
    Call it while nothing writes into ``out_dir`` (rank 0, before the others start).
    Returns how many entries were removed.
    """
    removed = 0
    for dirpath, dirnames, filenames in os.walk(out_dir):
        for name in filenames:
            if _TEMP_FILE.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(dirpath, name))
                    removed += 1
        for name in list(dirnames):
            if _TEMP_DIR.match(name):
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
                dirnames.remove(name)
                removed += 1
    return removed


def merge_logs(out_dir: str, videos_per_image: int) -> tuple[int, int]:
    """Merge the manifest and failure parts into ``manifest.jsonl`` and ``failed.jsonl``.

    Run by rank 0 once every rank has finished appending. The manifest keeps the
    newest record per video, sorted by input and k. A failure is kept (the newest
    per input and k) only while its video, or for a bad input any of its
    ``videos_per_image`` videos, is still not in the manifest (a file cut into views
    counts as read once a video of a view is there). Each file is replaced
    atomically before its parts are deleted, so a crash in between leaves duplicates
    that the next merge removes, never a gap. Returns ``(videos, failures)`` written.
    """
    index = ManifestIndex(out_dir)
    viewed = set()  # files whose views (dual view) have videos: their inputs are read
    try:
        keys = sorted(index.keys())
        with contextlib.ExitStack() as stack:
            # Rewritten unless it is already the merge's result (the usual single-process
            # run, whose writers finished in input order): then no copy and no fsyncs.
            out = None
            if not index.merged:
                tmp = stack.enter_context(atomic_file(os.path.join(out_dir, MANIFEST)))
                out = stack.enter_context(open(tmp, "wb"))
            for key in keys:
                line = index.line(key)
                view_of = (_parse(line) or {}).get("view_of")
                if isinstance(view_of, str):
                    viewed.add(view_of)
                if out is not None:
                    out.write(line)
            if out is not None:
                out.flush()
                os.fsync(out.fileno())
    finally:
        index.close()
    if not index.merged:
        fsync_dir(out_dir)
        for path in _parts(out_dir, MANIFEST):
            os.remove(path)
    return len(keys), _merge_failures(out_dir, set(keys), viewed, videos_per_image)


def _merge_failures(
    out_dir: str, done: set[tuple[str, int]], viewed: set[str], videos_per_image: int
) -> int:
    """:func:`merge_logs`' second half: ``failed.jsonl`` without what is now done.
    Returns the failures written."""
    path = os.path.join(out_dir, FAILED)
    parts = _parts(out_dir, FAILED)
    if not parts and _empty_file(path):
        return 0  # the usual clean run: nothing to merge, and no fsyncs to pay
    failures: dict[tuple[str, int | None], tuple[float, bytes]] = {}
    for source in [path, *parts]:
        for _, line in _lines(source):
            record = _parse(line)
            if record is None or not isinstance(record.get("input"), str):
                continue
            k = record.get("k")
            rel = record["input"]
            if (rel, k) in done or (
                k is None
                and (rel in viewed or all((rel, j) in done for j in range(videos_per_image)))
            ):
                continue
            time_ = float(record.get("time") or 0.0)
            old = failures.get((rel, k))
            if old is None or time_ >= old[0]:
                failures[(rel, k)] = (time_, line)
    order = sorted(failures, key=lambda key: (key[0], -1 if key[1] is None else key[1]))
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        for key in order:
            f.write(failures[key][1])
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(out_dir)
    for part in parts:
        os.remove(part)
    return len(order)


def _empty_file(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def gather_summaries(
    out_dir: str, mine: dict[str, Any], rank: int, world_size: int, group
) -> list[dict[str, Any]]:
    """Every rank's summary, in rank order: each writes its own part, all read all
    (``group`` is the ranks' :class:`~lddm_fast.synth.distributed.ProcessGroup`)."""
    if world_size == 1:
        return [mine]
    write_json(part_path(out_dir, SUMMARY, rank), mine)
    group.barrier()
    ranks = []
    for r in range(world_size):
        with open(part_path(out_dir, SUMMARY, r), encoding="utf-8") as f:
            ranks.append(json.load(f))
    group.barrier()  # all ranks have read the parts before rank 0 removes them
    return ranks


def close_books(
    out_dir: str, videos_per_image: int, total: dict[str, Any], ranks: list[dict[str, Any]]
) -> None:
    """Rank 0, after a run: merge the ranks' manifests and failure logs, write
    ``summary.json`` (the total and every rank's), remove the summary parts.

    Raises:
        OSError: a file could not be written or removed; the parts are kept and the
            next run merges them.
    """
    merge_logs(out_dir, videos_per_image)
    write_json(os.path.join(out_dir, SUMMARY), {**total, "ranks": ranks})
    for r in range(len(ranks) if len(ranks) > 1 else 0):
        os.remove(part_path(out_dir, SUMMARY, r))
