"""The synthesis engine: decode -> batched sampling -> encode and write, pipelined.

Threads and queues (one engine per rank)::

    input thread ──work (2 x workers)──▶ decode workers ──images (2 x batch)──▶
        sampler loop (caller's thread) ──videos (2 x batch)──▶ writer threads

* The **input thread** streams the input listing twice: once to count this rank's
  shard (the progress bar's total), then to feed names to the decode workers. It
  also refuses inputs whose outputs would collide (same folder and stem).
* **Decode workers** (``workers`` threads) check which of an input's k videos the
  manifest already holds with intact files (those are skipped), then decode the
  image (or frame ``frame`` of a DICOM cine), cut its imaging region(s) (``region``,
  see :mod:`lddm_fast.data.regions`), crop square and resize to the model size
  (Pillow releases the GIL for both). A bad image goes to ``failed.jsonl`` with the
  reason. A DICOM with two tissue regions (dual view) under ``region="auto"`` gives
  two inputs, ``<stem>_r0`` and ``<stem>_r1`` (``<stem>_r0-1`` when another input
  has the stem ``<stem>_r0``; see :meth:`InputItem.view`), recorded with the file
  they come from (``view_of``) and their index in it (``view``).
* The **sampler loop** gathers ``batch_size`` (image, k) pairs (the k videos of one
  image may span two batches), gives each its seed
  (:func:`~lddm_fast.synth.seeds.input_video_seed`) and calls the sampler. It waits only
  when no decoded image is ready (time counted as "waited for input") or when the
  writers are two batches behind ("waited for writers"); the rest of its time is
  the sampler's busy fraction.
* **Writer threads** (``writers``) encode each video in every format, write it
  atomically, hash it and append its manifest line (fsynced by the first append
  ``MANIFEST_SYNC_S`` or more after the last fsync, and when the run ends: an fsync
  per line measured 0.4-6 ms here, beside 2 ms to encode a 64 px npz video; a rerun
  checks every recorded file's sha256 anyway, so a line lost to a power cut only
  means a video made again). A video flagged NaN/Inf is not written; it goes to ``failed.jsonl``.

Every queue is bounded, so at most about ``3 x batch_size`` images and
``3 x batch_size`` videos are in memory however long the input list is.

Stopping: an interruption (Ctrl-C, SIGTERM) or a sampler error stops reading and
sampling, but the videos already sampled are still written and recorded. An
``OSError`` while writing (disk full, read-only or unwritable folder) stops every
thread after the item in hand. Either way nothing half-written is recorded, the
reason is in the summary, and a rerun continues where the run stopped.
"""

from __future__ import annotations

import errno
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from lddm_fast.data.errors import BadInputError
from lddm_fast.data.regions import FIT_MODE, Region, read_views
from lddm_fast.data.video_io import write_video
from lddm_fast.synth.distributed import shard_of
from lddm_fast.synth.inputs import InputItem
from lddm_fast.synth.manifest import (
    FAILED,
    MANIFEST,
    JsonlLog,
    ManifestIndex,
    output_digest,
    part_path,
    verify_record,
)
from lddm_fast.synth.seeds import input_video_seed

__all__ = [
    "FORMATS",
    "SampledBatch",
    "Summary",
    "SynthEngine",
    "VideoSampler",
    "load_image",
    "load_views",
    "output_rel",
    "summary_line",
    "total_summary",
]

#: Output formats and the suffix each adds (a PNG sequence is a folder of frames).
FORMATS = {"mp4": ".mp4", "gif": ".gif", "npz": ".npz", "png": ""}
# How often blocked queue operations look at the stop flag, in seconds.
_POLL_S = 0.1
# Least time between manifest fsyncs: the lines appended in between are fsynced
# together by the next append after it (or at the end of the run).
MANIFEST_SYNC_S = 1.0
# Failures printed as they happen; the rest are only in failed.jsonl.
_PRINTED_FAILURES = 10


@dataclass
class SampledBatch:
    """What a sampler returns for B images.

    Attributes:
        videos: uint8 ``[B, C, T+1, H, W]`` on the CPU, frame 0 the input image.
        nonfinite: bool ``[B]``, True where the video came out with NaN/Inf.
    """

    videos: torch.Tensor
    nonfinite: torch.Tensor


class VideoSampler(Protocol):
    """The model side of the engine: uint8 images ``[B, C, size, size]`` and one
    generator seed per image in, :class:`SampledBatch` out. A video must depend only
    on its image and seed, not on the rest of the batch."""

    size: int
    channels: int

    def __call__(self, images: torch.Tensor, seeds: list[int]) -> SampledBatch: ...


@dataclass
class Summary:
    """Counts and timings of one rank's run (videos unless named otherwise)."""

    inputs: int = 0
    videos: int = 0
    done: int = 0
    skipped: int = 0
    redone: int = 0
    failed: int = 0
    bad_inputs: int = 0
    duplicates: int = 0
    batches: int = 0
    wall_s: float = 0.0
    sampler_wall_s: float = 0.0
    sample_s: float = 0.0
    wait_input_s: float = 0.0
    wait_output_s: float = 0.0
    stopped: str | None = None

    @property
    def busy(self) -> float:
        """Fraction of the sampler loop's time spent inside the sampler."""
        return self.sample_s / self.sampler_wall_s if self.sampler_wall_s > 0 else 0.0

    @property
    def videos_per_s(self) -> float:
        """Videos made (not skipped) per second of wall time."""
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["busy"] = self.busy
        data["videos_per_s"] = self.videos_per_s
        return data


def output_rel(rel: str, k: int, fmt: str) -> str:
    """Output path of video ``k`` of input ``rel`` in format ``fmt``, relative to
    ``<out>``: ``<rel folder>/<stem>_k<k>.<ext>`` (a folder for ``png``)."""
    return f"{os.path.splitext(rel)[0]}_k{k}{FORMATS[fmt]}"


def load_views(
    path: str, size: int, channels: int, *, region: str = "center", frame: int = 0
) -> list[tuple[torch.Tensor, Region]]:
    """Decode ``path`` (an image, or frame ``frame`` of a DICOM cine), cut its views
    for ``region`` (:func:`lddm_fast.data.regions.read_views`) and fit each to the
    model by :func:`lddm_fast.data.transforms.fit_image`, as ``LDDMPipeline`` fits
    the same image.

    Returns ``(uint8 [channels, size, size], region)`` per view: one, or one per
    DICOM tissue region under ``"auto"``. A view that would need upscaling is refused
    (:class:`BadInputError` naming the file, the region and both sizes).
    """
    from lddm_fast.data.transforms import fit_image

    # "center" refuses a small frame before decoding it, as it always did.
    min_side = size if region == "center" else 1
    views = read_views(path, channels=channels, mode=region, frame=frame, min_side=min_side)
    fitted = []
    for view in views:
        image = torch.from_numpy(np.ascontiguousarray(view.pixels))
        image = image[None] if channels == 1 else image.permute(2, 0, 1)
        try:
            image = fit_image(image, size, FIT_MODE[region])
        except ValueError as e:
            where = view.region.source, list(view.region.box)
            raise BadInputError(path, f"region {where[0]} {where[1]}: {e}") from None
        fitted.append((image.contiguous(), view.region))
    return fitted


def load_image(path: str, size: int, channels: int) -> torch.Tensor:
    """:func:`load_views` with the default region (the centre square): uint8
    ``[channels, size, size]``."""
    return load_views(path, size, channels)[0][0]


class _Stopped(Exception):
    """Raised inside a thread when the run is stopping."""


# Marks the end of a queue's stream.
_DONE = object()


class SynthEngine:
    """Turn a stream of input images into ``videos_per_image`` videos each.

    Args:
        sampler: the model (:class:`VideoSampler`).
        out_dir: the output folder (created if missing).
        settings: everything besides the seed and frame rate that shapes a video
            (model identity, steps, sampler, guidance, frames, dtype); recorded in
            every manifest line, and a line with other settings is not trusted.
        model: how to find the model again (checkpoint path, preset, sha256),
            recorded in every manifest line.
        formats: output formats, a subset of :data:`FORMATS`, in this order.
        videos_per_image: N, videos per input (k = 0 .. N-1).
        seed: the run seed (``--seed``).
        fps: frame rate written into the videos.
        batch_size: videos per sampler call.
        workers: decode threads.
        writers: encode/write threads.
        rank, world_size: this process's shard (see :mod:`~lddm_fast.synth.distributed`).
        progress: show a progress bar.
        region: ``"center"``, ``"auto"`` or ``"none"`` (:mod:`lddm_fast.data.regions`);
            the region of each video is recorded in its manifest line.
        frame: the frame of a multi-frame DICOM to animate.
    """

    def __init__(
        self,
        sampler: VideoSampler,
        out_dir: str | os.PathLike,
        *,
        settings: dict[str, Any],
        model: dict[str, Any] | None = None,
        formats: Iterable[str] = ("mp4",),
        videos_per_image: int = 1,
        seed: int = 0,
        fps: float = 10.0,
        batch_size: int = 8,
        workers: int = 4,
        writers: int = 2,
        rank: int = 0,
        world_size: int = 1,
        progress: bool = True,
        region: str = "center",
        frame: int = 0,
    ) -> None:
        self.formats = list(formats)
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ValueError(
                f"formats must be a non-empty subset of {list(FORMATS)}, got {unknown}"
            )
        for name, value in (
            ("videos_per_image", videos_per_image),
            ("batch_size", batch_size),
            ("workers", workers),
            ("writers", writers),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if region not in FIT_MODE:
            raise ValueError(f"region must be one of {', '.join(FIT_MODE)}, got {region!r}")
        if frame < 0:
            raise ValueError(f"frame must be at least 0, got {frame}")
        self.sampler = sampler
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.settings = {**settings, "seed": int(seed), "fps": float(fps)}
        self.model = dict(model or {})
        self.videos_per_image = videos_per_image
        self.seed = int(seed)
        self.fps = float(fps)
        self.batch_size = batch_size
        self.workers = workers
        self.writers = writers
        self.rank = rank
        self.world_size = world_size
        self.progress = progress
        self.region = region
        self.frame = int(frame)

    # ----------------------------------------------------------------- the run
    def run(self, inputs: Iterable[InputItem]) -> Summary:
        """Make every missing video of this rank's shard of ``inputs``.

        ``inputs`` is iterated twice (count, then feed): pass an
        :class:`~lddm_fast.synth.inputs.InputSet` or a list, not a generator.
        Returns the :class:`Summary`; ``summary.stopped`` says why the run ended
        early (output error, interruption), None when it finished. An exception from
        the sampler is re-raised after the other threads have stopped.
        """
        from tqdm.auto import tqdm

        started = time.perf_counter()
        os.makedirs(self.out_dir, exist_ok=True)
        self._summary = Summary()
        self._lock = threading.Lock()
        self._stop = threading.Event()  # everything stops (an output error)
        self._drain = threading.Event()  # no more sampling; writers finish the queue
        self._printed = 0
        self._stems: set[str] = set()  # every input's output stem, filled by _feed
        self._work: queue.Queue = queue.Queue(maxsize=2 * self.workers)
        self._ready: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)
        self._written: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)
        # Shown once the inputs are counted (delay lifted in _feed): drawn before, it
        # leaves an empty "0video" line in logs ahead of the real bar.
        self._bar = tqdm(
            total=None,
            unit="video",
            dynamic_ncols=True,
            disable=not self.progress,
            file=sys.stderr,
            delay=math.inf,
        )
        # A view's record is sharded like the file it was cut from.
        self._index = ManifestIndex(self.out_dir, keep=self._mine)
        self._manifest = JsonlLog(self._log_path(MANIFEST), sync_interval=MANIFEST_SYNC_S)
        self._failed = JsonlLog(self._log_path(FAILED))
        threads = [threading.Thread(target=self._guard, args=(self._feed, inputs), name="feed")]
        threads += [
            threading.Thread(target=self._guard, args=(self._decode,), name=f"decode-{i}")
            for i in range(self.workers)
        ]
        writers = [
            threading.Thread(target=self._guard, args=(self._write,), name=f"write-{i}")
            for i in range(self.writers)
        ]
        for thread in threads + writers:
            thread.daemon = True  # never keep a dying interpreter alive
            thread.start()
        error: BaseException | None = None
        try:
            self._sample_loop()
        except _Stopped:
            pass
        except KeyboardInterrupt:
            self._halt("interrupted", drain=True)
        except BaseException as e:  # the sampler failed: stop cleanly, then re-raise
            self._halt(f"sampling failed: {type(e).__name__}: {e}", drain=True)
            error = e
        finally:
            # Videos already sampled are written (device time is the expensive
            # part) unless an output error stopped the writers.
            try:
                for _ in writers:
                    self._put(self._written, _DONE, hard_only=True)
            except _Stopped:
                pass
            for thread in writers + threads:
                thread.join()
            self._manifest.close()
            self._failed.close()
            self._index.close()
            self._bar.close()
            self._summary.wall_s = time.perf_counter() - started
        if error is not None:
            raise error
        return self._summary

    def _log_path(self, name: str) -> str:
        # A single process appends to the final file; ranks to parts rank 0 merges.
        if self.world_size == 1:
            return os.path.join(self.out_dir, name)
        return part_path(self.out_dir, name, self.rank)

    def _mine(self, rel: str) -> bool:
        return self.world_size == 1 or shard_of(rel, self.world_size) == self.rank

    # ------------------------------------------------------------ thread plumbing
    def _guard(self, target, *args) -> None:
        """Run a thread body; a stop ends it quietly, anything unexpected stops the run."""
        try:
            target(*args)
        except _Stopped:
            pass
        except BaseException as e:
            self._halt(f"{threading.current_thread().name} failed: {type(e).__name__}: {e}")

    def _halt(self, reason: str, *, drain: bool = False) -> None:
        """Stop the run; the first reason given is the one reported.

        ``drain``: stop reading and sampling but let the writers finish the videos
        already sampled; otherwise every thread stops after the item in hand.
        """
        with self._lock:
            if self._summary.stopped is None:
                self._summary.stopped = reason
        (self._drain if drain else self._stop).set()

    def _check(self, hard_only: bool) -> None:
        if self._stop.is_set() or (self._drain.is_set() and not hard_only):
            raise _Stopped

    def _put(self, q: queue.Queue, item, *, hard_only: bool = False) -> None:
        """``q.put`` that gives up (:class:`_Stopped`) when the run stops; with
        ``hard_only`` (writers) only when everything stops."""
        while True:
            self._check(hard_only)
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue, *, hard_only: bool = False):
        """``q.get`` that gives up like :meth:`_put`."""
        while True:
            self._check(hard_only)
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _count(self, videos: int = 0, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self._summary, name, getattr(self._summary, name) + value)
            if videos:
                s = self._summary
                self._bar.set_postfix(
                    done=s.done, skipped=s.skipped, failed=s.failed, refresh=False
                )
                self._bar.update(videos)

    def _fail(self, item: InputItem, k: int | None, stage: str, reason: str, videos: int) -> None:
        """Record a bad input (k None, ``videos`` of its videos lost) or a failed video."""
        record = {
            "input": item.rel,
            "path": item.path,
            "class": item.label,
            "k": k,
            "stage": stage,
            "reason": reason,
            "time": time.time(),
        }
        try:
            self._failed.append(record)
        except OSError as e:
            self._halt(f"cannot write {self._failed.path}: {e}")
            raise _Stopped from e
        self._count(videos, failed=videos, bad_inputs=int(k is None))
        with self._lock:
            self._printed += 1
            printed = self._printed
        if printed <= _PRINTED_FAILURES:
            what = item.rel if k is None else f"{item.rel} k={k}"
            more = " (further failures: see failed.jsonl)" if printed == _PRINTED_FAILURES else ""
            self._bar.write(f"failed: {what}: {reason}{more}", file=sys.stderr)

    # ------------------------------------------------------------------- stages
    def _feed(self, inputs: Iterable[InputItem]) -> None:
        n = self.videos_per_image
        # Every input's output stem, known before any file is decoded: a dual view's
        # views are named clear of them (InputItem.view), the same way on every rank.
        stems: set[str] = set()
        mine = 0
        for item in inputs:
            stems.add(os.path.splitext(item.rel)[0])
            mine += self._mine(item.rel)
        self._stems = stems
        with self._lock:
            self._summary.videos = mine * n
            self._bar.total = mine * n
            self._bar.delay = 0
            self._bar.refresh()
        # Output stem -> the input that claimed it: two inputs that differ only in
        # suffix would overwrite each other's videos. Every rank sees every name,
        # so all agree on which input is first.
        claimed: dict[str, str] = {}
        for item in inputs:
            self._check(hard_only=False)
            stem = os.path.splitext(item.rel)[0]
            first = claimed.get(stem)
            if first is None:
                claimed[stem] = item.rel
            if not self._mine(item.rel):
                continue
            if first == item.rel:
                self._count(n, duplicates=1)  # listed twice: its videos are made once
                continue
            if first is not None:
                reason = (
                    f"its videos would overwrite those of {first} (same folder and "
                    "file stem); rename one of them"
                )
                self._fail(item, None, "input", reason, videos=n)
                continue
            self._count(inputs=1)
            self._put(self._work, item)
        for _ in range(self.workers):
            self._put(self._work, _DONE)

    def _decode(self) -> None:
        while True:
            item = self._get(self._work)
            if item is _DONE:
                self._put(self._ready, _DONE)
                return
            todo = self._todo(item)
            if not todo:
                continue
            try:
                views = load_views(
                    item.path,
                    self.sampler.size,
                    self.sampler.channels,
                    region=self.region,
                    frame=self.frame,
                )
            except BadInputError as e:
                self._fail(item, None, "input", e.reason, videos=len(todo))
                continue
            except Exception as e:  # a decoder bug on an odd file must not stop the run
                reason = f"cannot read image ({type(e).__name__}: {e})"
                self._fail(item, None, "input", reason, videos=len(todo))
                continue
            if len(views) == 1:
                self._put(self._ready, (item, *views[0], todo))
                continue
            # Several tissue views: each is an input of its own, known only now.
            more = (len(views) - 1) * self.videos_per_image
            with self._lock:
                self._summary.videos += more
                self._bar.total += more
            for index, (image, region) in enumerate(views):
                view = item.view(index, self._stems)
                view_todo = self._todo(view)
                if view_todo:
                    self._put(self._ready, (view, image, region, view_todo))

    def _todo(self, item: InputItem) -> list[int]:
        """The k of ``item`` still to make; counts the others as skipped."""
        todo = []
        redo = 0
        for k in range(self.videos_per_image):
            record = self._index.get(item.rel, k)
            if record is not None:
                why = verify_record(
                    record,
                    self.out_dir,
                    settings=self.settings,
                    formats=self.formats,
                    seed=input_video_seed(self.seed, item.rel, k),
                )
                if why is None:
                    continue
                redo += 1
            todo.append(k)
        skipped = self.videos_per_image - len(todo)
        self._count(skipped, skipped=skipped, redone=redo)
        return todo

    def _sample_loop(self) -> None:
        # The loop's wall time is the busy fraction's denominator, also when it ends
        # early.
        start = time.perf_counter()
        try:
            self._batches()
        finally:
            self._summary.sampler_wall_s = time.perf_counter() - start

    def _batches(self) -> None:
        summary = self._summary
        pending: deque = deque()  # (item, image, k) not yet sampled
        finished_workers = 0
        while True:
            while len(pending) < self.batch_size and finished_workers < self.workers:
                t0 = time.perf_counter()
                entry = self._get(self._ready)
                summary.wait_input_s += time.perf_counter() - t0
                if entry is _DONE:
                    finished_workers += 1
                    continue
                item, image, region, todo = entry
                pending.extend((item, image, region, k) for k in todo)
            if not pending:
                break
            batch = [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]
            images = torch.stack([image for _, image, _, _ in batch])
            seeds = [input_video_seed(self.seed, item.rel, k) for item, _, _, k in batch]
            t0 = time.perf_counter()
            result = self.sampler(images, seeds)
            summary.sample_s += time.perf_counter() - t0
            summary.batches += 1
            if result.videos.shape[0] != len(batch) or result.nonfinite.shape[0] != len(batch):
                raise RuntimeError(
                    f"the sampler returned {result.videos.shape[0]} videos and "
                    f"{result.nonfinite.shape[0]} flags for {len(batch)} images"
                )
            nonfinite = result.nonfinite.tolist()
            for (item, _, region, k), seed, video, bad in zip(
                batch, seeds, result.videos, nonfinite, strict=True
            ):
                t0 = time.perf_counter()
                self._put(self._written, (item, k, seed, video, bad, region))
                summary.wait_output_s += time.perf_counter() - t0

    def _write(self) -> None:
        while True:
            entry = self._get(self._written, hard_only=True)
            if entry is _DONE:
                return
            item, k, seed, video, bad, region = entry
            if bad:
                reason = "non-finite values (NaN/Inf) in the sampled video; nothing written"
                self._fail(item, k, "sample", reason, videos=1)
                continue
            self._write_video(item, k, seed, video, region)

    def _write_video(
        self, item: InputItem, k: int, seed: int, video: torch.Tensor, region: Region
    ) -> None:
        # [C, T+1, H, W] -> [T+1, H, W] (gray) or [T+1, H, W, 3]
        frames = video[0].numpy() if video.shape[0] == 1 else video.permute(1, 2, 3, 0).numpy()
        outputs = []
        path = self.out_dir
        try:
            for fmt in self.formats:
                rel_out = output_rel(item.rel, k, fmt)
                path = os.path.join(self.out_dir, rel_out)
                write_video(path, frames, fps=self.fps)
                size, digest = output_digest(path)
                outputs.append({"format": fmt, "path": rel_out, "size": size, "sha256": digest})
            path = self._manifest.path
            # The input is named by its path only: no header value of a DICOM file
            # (patient, dates, institution) is ever copied here.
            record = {
                "input": item.rel,
                "path": item.path,
                "class": item.label,
                "k": k,
                "seed": seed,
                "frames": int(frames.shape[0]),
                "region": region.to_dict(),
                "outputs": outputs,
                "settings": self.settings,
                "model": self.model,
                "finished": time.time(),
            }
            if item.view_of is not None:  # which file, and which of its views
                record["view_of"], record["view"] = item.view_of, item.view_index
            self._manifest.append(record)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                self._fail(item, k, "write", f"output name too long: {path}", videos=1)
                return
            self._halt(f"cannot write {path}: {e.strerror or e}")
            raise _Stopped from e
        except Exception as e:  # an encoder refusing this one video (e.g. PyAV errors)
            self._fail(item, k, "write", f"cannot encode {path}: {type(e).__name__}: {e}", 1)
            return
        self._count(1, done=1)


def total_summary(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """All ranks' :meth:`Summary.to_dict` added up: counts summed, wall time of the
    slowest rank, sampler busy averaged; ``stopped`` lists every rank's reason."""
    counted = (
        "inputs",
        "videos",
        "done",
        "skipped",
        "redone",
        "failed",
        "bad_inputs",
        "duplicates",
        "batches",
        "sample_s",
        "wait_input_s",
        "wait_output_s",
    )
    total: dict[str, Any] = {name: sum(r[name] for r in ranks) for name in counted}
    total["wall_s"] = max(r["wall_s"] for r in ranks)
    total["busy"] = sum(r["busy"] for r in ranks) / len(ranks)
    total["videos_per_s"] = total["done"] / total["wall_s"] if total["wall_s"] > 0 else 0.0
    total["stopped"] = [r["stopped"] for r in ranks if r["stopped"]]
    total["world_size"] = len(ranks)
    return total


def summary_line(s: dict[str, Any]) -> str:
    """The one-line report of a run (one rank's or the total) that synthesize prints."""
    failed = f"{s['failed']} failed"
    if s["bad_inputs"]:
        failed += f" ({s['bad_inputs']} bad inputs)"
    return (
        f"synthesize: {s['done']} done, {s['skipped']} skipped, {failed} of {s['videos']} "
        f"videos from {s['inputs']} inputs in {s['wall_s']:.1f} s: "
        f"{s['videos_per_s']:.2f} videos/s, sampler busy {100 * s['busy']:.0f}% "
        f"(waited {s['wait_input_s']:.1f} s for input, {s['wait_output_s']:.1f} s for writers)"
    )
