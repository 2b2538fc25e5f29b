"""``CUDAGraphRunner``: capture a whole sampling loop once, replay it per batch.

A sampling loop of n steps is hundreds of small kernel launches per step; at small
batch the GPU waits on the CPU issuing them. The runner records the entire loop (every
denoiser forward and every fused update) into one CUDA graph per key and replays it
with a single launch.

How (following the "whole network capture" recipe of the PyTorch CUDA-graph docs):

- Static buffers: the first call for a key allocates one buffer per input tensor with
  the input's shape, dtype and strides; every call copies its inputs into them, replays,
  and returns a clone of the static output (later replays overwrite it).
- Warm-up: ``warmup_iters`` eager runs on a side stream before capture, so lazy
  initialisation (cuBLAS/cuDNN handles, algorithm searches, Triton autotuning and
  compilation) happens outside the graph.
- One memory pool shared by all graphs of the runner: intermediates of different keys
  reuse the same memory. That is safe because replays are serialised on the current
  stream (a graph's intermediates are dead before the next replay starts) and every
  static output stays referenced by its cache entry, so no capture is handed memory
  that holds another graph's live output.
- ``capture_error_mode="thread_local"``: other threads may use CUDA during a capture.
- No host sync inside: the function must read everything from its tensor inputs (the
  schedule's timesteps and abar, guidance scale, pre-drawn noise) with device ops; the
  samplers in :mod:`lddm_fast.diffusion.samplers` do.

A capture that fails (a host sync or an op that cannot be captured) falls back to the
eager function with a one-line ``RuntimeWarning`` saying why, once per key; later calls
with that key run eagerly without warning. On a CPU device the eager function runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

__all__ = ["CUDAGraphRunner"]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor


def _signature(inputs: dict[str, torch.Tensor]) -> tuple:
    return tuple(
        (name, tuple(t.shape), tuple(t.stride()), t.dtype, t.device) for name, t in inputs.items()
    )


class CUDAGraphRunner:
    """Runs ``fn(**inputs) -> Tensor`` through a CUDA graph captured once per key.

    Args:
        warmup_iters: eager runs on a side stream before each capture.

    The cache key of a call is the caller's ``key`` plus the shape, strides, dtype and
    device of every input, so batch size, latent shape, dtype and step count (the
    length of the timestep input) are part of it automatically; ``key`` must name the
    rest of what changes ``fn``'s computation (sampler and its knobs, guidance on/off,
    the ops backend).
    """

    def __init__(self, warmup_iters: int = 1) -> None:
        if warmup_iters < 1:
            raise ValueError("warmup_iters must be >= 1: capture needs a warmed-up function")
        self.warmup_iters = warmup_iters
        self._graphs: dict[tuple, _Captured] = {}
        self._failed: dict[tuple, str] = {}
        self._pool = None

    def __len__(self) -> int:
        """Number of captured graphs held."""
        return len(self._graphs)

    @property
    def failures(self) -> dict[tuple, str]:
        """Cache key -> why its capture failed (those keys run eagerly)."""
        return dict(self._failed)

    def clear(self) -> None:
        """Drop every graph, its static buffers and the pool."""
        self._graphs.clear()
        self._failed.clear()
        self._pool = None

    def __call__(
        self, key: Hashable, fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``fn(**inputs)``, by graph replay on CUDA, eagerly on CPU or after a failed
        capture. Inputs must all be on one device; the result is a fresh tensor."""
        devices = {t.device for t in inputs.values()}
        if len(devices) != 1:
            raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
        device = devices.pop()
        if device.type != "cuda":
            return fn(**inputs)
        full_key = (key, _signature(inputs))
        if full_key in self._failed:
            return fn(**inputs)
        captured = self._graphs.get(full_key)
        if captured is None:
            captured = self._capture(full_key, fn, inputs, device)
            if captured is None:
                return fn(**inputs)
        for name, t in inputs.items():
            captured.inputs[name].copy_(t)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(
        self,
        full_key: tuple,
        fn: Callable[..., torch.Tensor],
        inputs: dict[str, torch.Tensor],
        device: torch.device,
    ) -> _Captured | None:
        static = {
            name: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device).copy_(t)
            for name, t in inputs.items()
        }
        # Warm-up errors are errors of fn itself and propagate; only capture may fall back.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_iters):
                fn(**static)
        torch.cuda.current_stream(device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        output, error = _capture_into(graph, self._pool, fn, static, device)
        if error is not None:
            if not self._graphs:
                # The failed capture may have left its pool without users; a fresh
                # handle for the next capture rather than a pool being freed.
                self._pool = None
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            reason = f"{type(error).__name__}: {first_line}"
            self._failed[full_key] = reason
            warnings.warn(
                f"CUDA graph capture failed, running the eager loop instead ({reason})",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"fn must return a Tensor, got {type(output).__name__}")
        captured = _Captured(graph, static, output)
        self._graphs[full_key] = captured
        return captured


def _capture_into(
    graph: torch.cuda.CUDAGraph,
    pool,
    fn: Callable[..., torch.Tensor],
    static: dict[str, torch.Tensor],
    device: torch.device,
) -> tuple[torch.Tensor | None, Exception | None]:
    """Capture ``fn(**static)`` into ``graph`` on a side stream: ``(output, None)``, or
    ``(None, the exception that broke the capture)`` with the process left as it was
    before.

    Not ``torch.cuda.graph``: when a capture breaks (a host sync inside), its exit
    raises from ``capture_end`` before restoring the stream, ending the allocator's
    recording into the pool, or releasing the generator's capture state, and every
    later CUDA random draw or capture in the process then fails. Here each of those
    is undone, so a failed capture costs only its warning.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    torch.cuda.synchronize(device)
    output, cause = None, None
    with torch.cuda.stream(side):
        # thread_local: CUDA calls from other threads (a synthesis engine's decode and
        # writer threads) neither break this capture nor are refused by it.
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
        try:
            output = fn(**static)
        except Exception as exc:
            cause = exc
        try:
            graph.capture_end()
        except Exception as exc:
            # cudaStreamEndCapture failed: torch ended neither the pool recording nor
            # the pool's use by this capture.
            for undo in (torch._C._cuda_endAllocateToPool, torch._C._cuda_releasePool):
                try:
                    undo(device.index, pool)
                except RuntimeError:
                    pass
            cause = cause or exc
        if cause is not None:
            graph.reset()  # drops the partial graph and (newer torch) its RNG capture state
            _end_generator_capture(device)
    torch.cuda.current_stream(device).wait_stream(side)
    return (None, cause) if cause is not None else (output, None)


def _end_generator_capture(device: torch.device) -> None:
    """Take the default CUDA generator out of capture mode after a failed capture.

    torch 2.11 marks the generator as capturing at ``capture_begin`` and unmarks it
    only in a ``capture_end`` that succeeds; a failed one leaves it marked, and every
    later random draw in the process raises "Offset increment outside graph capture"
    (seen on an H200, also after ``graph.reset()``). A capture of one tiny op that
    succeeds runs the generator's epilogue; where torch tracks that state per capture
    it changes nothing.
    """
    probe = torch.zeros(1, device=device)
    graph = torch.cuda.CUDAGraph()
    graph.capture_begin()
    probe.add_(1)
    graph.capture_end()
    graph.reset()
