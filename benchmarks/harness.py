"""Timing, rooflines, parity and reporting for ``benchmarks/run.py``.

A :class:`Case` is one input configuration with several providers (the fast
backends and the baselines) that compute the same thing; every provider of a case is
timed in the same run on the same inputs, and checked against a float64 result.
Adding a case is building one :class:`Case` in a suite module.
"""

from __future__ import annotations

import functools
import math
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# Parity floors (max|y - ref| / max|ref|) by dtype; a provider passes when its error is
# at most max(floor, 2 x the eager baseline's error) -- FlashAttention's rule.
PARITY_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@dataclass
class Case:
    """One benchmark configuration.

    make_inputs: builds fresh inputs (a tuple passed to every provider and to expected).
    providers: name -> callable(*inputs) -> Tensor; the first is the baseline the
        speedups are relative to.
    expected: callable(*inputs) -> float64 Tensor, the ground truth for parity.
    parity_floor: the max-rel error always accepted (default: by dtype).
    bytes_moved: inputs read once + outputs written once.
    flops: floating-point operations of one call (0 when not meaningful).
    """

    suite: str
    op: str
    label: str
    dtype: torch.dtype
    params: dict[str, Any]
    make_inputs: Callable[[], tuple]
    providers: dict[str, Callable[..., torch.Tensor]]
    expected: Callable[..., torch.Tensor]
    bytes_moved: int
    flops: int = 0
    notes: dict[str, str] = field(default_factory=dict)  # provider -> why it was skipped
    parity_floor: float | None = None  # overrides PARITY_FLOOR[dtype] (e.g. uint8 outputs)
    items: int = 0  # things one call produces (e.g. videos), for a rate column
    item_name: str = "videos"
    # On a CPU, time the providers in rounds, one call of each per round
    # (time_interleaved), not one after the other: for cases a shared machine's slow
    # spells would otherwise decide (a few calls each, or differences of 1%). On CUDA
    # each provider is timed by do_bench as usual.
    interleave: bool = False


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    reps: int
    # Minor page faults per call (CPU only): pages the allocator had to map in afresh,
    # each zeroed by the kernel. A provider whose temporaries outgrow glibc's reuse
    # (its trim/mmap thresholds) pays them on every call, so its time can move by
    # several fold between runs; this column says when that is what happened.
    faults_per_call: float | None = None
    # Each call's time in call order (time_interleaved only: call i of every provider is
    # in round i, next to the others' call i).
    times_ms: list[float] | None = None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str, quick: bool) -> Timing:
    """Median and p10/p90 of one call. CUDA: triton.testing.do_bench (CUDA events, L2
    flushed between calls); elsewhere (or without Triton): wall clock per call,
    synchronised, after a warm-up, repeated for a fixed time budget."""
    budget = 0.3 if quick else 1.5
    if device == "cuda":
        try:
            from triton.testing import do_bench

            med, p10, p90 = do_bench(fn, quantiles=[0.5, 0.1, 0.9], rep=int(budget * 1000))
            return Timing(med, p10, p90, reps=-1)
        except ImportError:
            pass
    fn()  # warm-up: first-call allocations, lazy initialisation
    _sync(device)
    timing = time_interleaved({"call": fn}, device, quick)["call"]
    timing.times_ms = None  # one provider: no rounds to pair with another's
    return timing


def time_interleaved(fns: dict[str, Callable[[], Any]], device: str, quick: bool) -> dict:
    """Timing of each of ``fns`` (name -> call), taken in rounds of one call of each, the
    order rotated every round: a slow spell of a shared machine then falls on every
    provider alike, where timing them one after the other can put one provider's few
    calls (a whole model on a CPU: 5 in its budget) all inside it. Wall clock per call,
    synchronised on CUDA; at least 5 rounds, then the time budget of all of them."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    faults = dict.fromkeys(names, 0)
    deadline = time.perf_counter() + (0.3 if quick else 1.5) * len(names)
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 1000):
        for i in range(len(names)):
            name = names[(rounds + i) % len(names)]
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        rounds += 1
    timings = {}
    for n in names:
        timings[n] = _summary(times[n], None if device == "cuda" else faults[n] / rounds)
        timings[n].times_ms = times[n]
    return timings


def _summary(times: list[float], faults_per_call: float | None) -> Timing:
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return Timing(
        statistics.median(times), q[0], q[-1], len(times), faults_per_call=faults_per_call
    )


def measure_ceilings(device: str, quick: bool) -> dict[str, float]:
    """This machine's copy bandwidth (GB/s) and matmul throughput (TFLOP/s), measured
    now, so each case's % of roofline is against what the hardware really does."""
    n = (1 << 28 if device == "cuda" else 1 << 24) // 4  # 1 GiB / 64 MiB of float32
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = time_fn(lambda: dst.copy_(src), device, quick)
    ceilings = {"copy_gbs": 2 * src.numel() * 4 / copy.median_ms / 1e6}
    if device == "cuda":
        m, dt, key = 8192, torch.bfloat16, "matmul_bf16_tflops"
    else:
        m, dt, key = 1024, torch.float32, "matmul_fp32_tflops"
    a = torch.randn(m, m, device=device, dtype=dt)
    b = torch.randn(m, m, device=device, dtype=dt)
    mm = time_fn(lambda: a @ b, device, quick)
    ceilings[key] = 2 * m**3 / mm.median_ms / 1e9
    return ceilings


def _flat(t: torch.Tensor | tuple | list) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t
    return torch.cat([x.reshape(-1) for x in t])


def parity(
    out: torch.Tensor | tuple[torch.Tensor, ...] | Callable[[], torch.Tensor],
    expected: torch.Tensor | tuple[torch.Tensor, ...],
) -> tuple[float, float]:
    """(max-abs, max-rel) error, max-rel normalised by max|expected| (elementwise
    relative error is meaningless where the result crosses zero). A provider that returns
    several tensors (the grads of a training call) is compared on all of them, flattened
    here rather than in the timed call: flattening a channels-last grad is a copy. One
    that returns a function (the synthesis engine: read its files back) is compared on
    what the function returns, so the reading is not timed either."""
    if callable(out):
        out = out()
    out, expected = _flat(out), _flat(expected)
    diff = (out.double() - expected).abs()
    if not torch.isfinite(out).all():
        return math.inf, math.inf
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 1.0
    return max_abs, max_abs / max(scale, 1e-30)


def run_case(case: Case, device: str, ceilings: dict[str, float], quick: bool) -> list[dict]:
    """Time and check every provider of one case; one result row per provider."""
    inputs = case.make_inputs()
    expected = case.expected(*inputs)
    peak_flops = next((v for k, v in ceilings.items() if k.endswith("tflops")), 0.0) * 1e12
    roofline_s = max(
        case.bytes_moved / (ceilings["copy_gbs"] * 1e9),
        case.flops / peak_flops if peak_flops else 0.0,
    )
    rows: list[dict] = []
    interleave = case.interleave and device == "cpu"
    ran: dict[str, Callable[[], Any]] = {}  # providers whose first call worked
    timings: dict[str, Timing] = {}
    for name, fn in case.providers.items():
        row: dict[str, Any] = {
            "suite": case.suite,
            "op": case.op,
            "case": case.label,
            "dtype": str(case.dtype).removeprefix("torch."),
            "provider": name,
            **case.params,
        }
        rows.append(row)
        try:
            t0 = time.perf_counter()
            out = fn(*inputs)  # first call: includes compilation for compiled providers
            _sync(device)
            row["first_call_s"] = round(time.perf_counter() - t0, 3)
            row["max_abs"], row["max_rel"] = parity(out, expected)
            del out
            ran[name] = functools.partial(fn, *inputs)
            if not interleave:
                timings[name] = time_fn(ran[name], device, quick)
        except Exception as exc:  # a baseline that cannot run here is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if interleave and ran:
        timings = time_interleaved(ran, device, quick)
    baseline_ms = baseline_rel = baseline_times = None
    for row in rows:
        timing = timings.get(row["provider"])
        if timing is None:
            continue
        row.update(
            median_ms=timing.median_ms, p10_ms=timing.p10_ms, p90_ms=timing.p90_ms, reps=timing.reps
        )
        if timing.faults_per_call is not None:
            row["faults_per_call"] = timing.faults_per_call
        if case.bytes_moved:
            row["gbs"] = case.bytes_moved / timing.median_ms / 1e6
        if case.flops:
            row["tflops"] = case.flops / timing.median_ms / 1e9
        if roofline_s > 0:
            row["roofline_pct"] = 100 * roofline_s / (timing.median_ms / 1e3)
        if case.items:
            row[f"{case.item_name}_per_s"] = case.items / (timing.median_ms / 1e3)
        if baseline_ms is None:
            baseline_ms, baseline_rel = timing.median_ms, row["max_rel"]
            baseline_times = timing.times_ms
        row["speedup"] = baseline_ms / timing.median_ms
        if timing.times_ms is not None:
            # The median of the per-round ratios: what a drift of the machine's speed
            # over the run, which moves both calls of a round alike, leaves untouched.
            row["paired_speedup"] = statistics.median(
                b / t for b, t in zip(baseline_times, timing.times_ms, strict=True)
            )
        floor = (
            case.parity_floor
            if case.parity_floor is not None
            else PARITY_FLOOR.get(case.dtype, 1e-5)
        )
        tol = max(floor, 2 * baseline_rel)
        row["parity_tol"] = tol
        row["parity_ok"] = bool(row["max_rel"] <= tol)
    for name, why in case.notes.items():
        rows.append(
            {
                "suite": case.suite,
                "op": case.op,
                "case": case.label,
                "dtype": str(case.dtype).removeprefix("torch."),
                "provider": name,
                "skipped": why,
                **case.params,
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = [
        "op",
        "case",
        "dtype",
        "provider",
        "median ms",
        "p10-p90 ms",
        "GB/s",
        "% roofline",
        "rate",
        "faults/call",
        "speedup",
        "max-abs",
        "max-rel",
        "parity",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "median_ms" not in r:
            why = r.get("error") or r.get("skipped")
            lines.append(
                f"| {r['op']} | {r['case']} | {r['dtype']} | {r['provider']} | "
                f"{'failed' if 'error' in r else 'skipped'}: {why} |" + " |" * 9
            )
            continue
        rate = next(
            (f"{v:.2f} {k.removesuffix('_per_s')}/s" for k, v in r.items() if k.endswith("_per_s")),
            "-",
        )
        # Interleaved cases: the median of the per-round ratios as well.
        paired = f" (paired {r['paired_speedup']:.2f}x)" if "paired_speedup" in r else ""
        lines.append(
            f"| {r['op']} | {r['case']} | {r['dtype']} | {r['provider']} | "
            f"{r['median_ms']:.3f} | {r['p10_ms']:.3f}-{r['p90_ms']:.3f} | "
            f"{format(r['gbs'], '.1f') if 'gbs' in r else '-'} | "
            f"{format(r['roofline_pct'], '.1f') if 'roofline_pct' in r else '-'} | {rate} | "
            f"{format(r['faults_per_call'], '.0f') if 'faults_per_call' in r else '-'} | "
            f"{r['speedup']:.2f}x{paired} | {r['max_abs']:.2e} | "
            f"{r['max_rel']:.2e} | {'ok' if r['parity_ok'] else 'FAIL'} |"
        )
    return "\n".join(lines)
