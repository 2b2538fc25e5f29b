"""The benchmark harness: a quick CPU run produces timed, parity-checked rows, and a
parity failure makes the run exit non-zero."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lddm_fast import ops

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402


def _load_run_module():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_quick_cpu_run_writes_timed_rows(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--suite",
            "kernels",
            "--device",
            "cpu",
            "--quick",
            "--no-compile",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["ceilings"]["copy_gbs"] > 0
    rows = [r for r in data["results"] if "median_ms" in r]
    providers = {(r["op"], r["provider"]) for r in rows}
    assert ("group_norm", "eager") in providers and ("temporal_attention", "sdpa") in providers
    if ops.available_backends()["cpp"] == "ok":
        assert ("group_norm", "cpp") in providers and ("temporal_attention", "cpp") in providers
    for r in rows:
        assert r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["parity_ok"], r
    assert "| group_norm |" in proc.stdout  # the markdown table is printed


def _case(provider):
    x = torch.randn(4, 8)
    return harness.Case(
        suite="kernels",
        op="toy",
        label="toy",
        dtype=torch.float32,
        params={},
        make_inputs=lambda: (x,),
        providers={"eager": lambda t: t * 2, "broken": provider},
        expected=lambda t: t.double() * 2,
        bytes_moved=2 * x.numel() * 4,
    )


def test_parity_failure_is_flagged():
    rows = harness.run_case(_case(lambda t: t * 2 + 1e-3), "cpu", {"copy_gbs": 10.0}, quick=True)
    by = {r["provider"]: r for r in rows}
    assert by["eager"]["parity_ok"] and not by["broken"]["parity_ok"]


def test_unwritten_output_fails_parity():
    rows = harness.run_case(
        _case(lambda t: torch.full_like(t, float("nan"))), "cpu", {"copy_gbs": 10.0}, True
    )
    assert not {r["provider"]: r for r in rows}["broken"]["parity_ok"]


def test_run_exits_nonzero_on_parity_failure(monkeypatch, capsys):
    run = _load_run_module()
    monkeypatch.setattr(run, "SUITES", {"kernels": lambda *a: [_case(lambda t: t * 3)]})
    monkeypatch.setattr(run.harness, "measure_ceilings", lambda device, quick: {"copy_gbs": 10.0})
    assert run.main(["--suite", "kernels", "--device", "cpu", "--quick"]) == 1
    assert "PARITY FAILURE" in capsys.readouterr().err


def test_unknown_suite_is_refused():
    run = _load_run_module()
    with pytest.raises(SystemExit) as exc:
        run.main(["--suite", "nope", "--device", "cpu"])
    assert exc.value.code == 2


def test_page_faults_per_call_are_counted():
    """A call that maps fresh pages shows them in faults_per_call; one that reuses its
    buffer shows none. The anonymous mapping is released at the end of each call, so
    its pages are new every time whatever the allocator's state."""
    import mmap

    pages = 256

    def fresh_pages():
        with mmap.mmap(-1, pages * mmap.PAGESIZE) as m:
            for i in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
                m[i] = 1

    buf = torch.zeros(pages * mmap.PAGESIZE // 4)
    faulting = harness.time_fn(fresh_pages, "cpu", quick=True)
    reusing = harness.time_fn(lambda: buf.add_(1.0), "cpu", quick=True)
    assert faulting.faults_per_call >= 0.9 * pages
    assert reusing.faults_per_call < 0.1 * pages


def test_interleaved_timing_takes_rounds_of_every_provider():
    calls: list[str] = []

    def provider(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)

        return run

    fns = {"slow": provider("slow", 0.004), "fast": provider("fast", 0.0)}
    timings = harness.time_interleaved(fns, "cpu", quick=True)
    rounds = [calls[i : i + 2] for i in range(0, len(calls), 2)]
    assert len(rounds) >= 5 and all(sorted(r) == ["fast", "slow"] for r in rounds)
    # The order rotates, so neither provider always runs first after the other.
    assert {tuple(r) for r in rounds} == {("slow", "fast"), ("fast", "slow")}
    assert timings["slow"].reps == timings["fast"].reps == len(rounds)
    assert timings["slow"].median_ms >= 4.0 > timings["fast"].median_ms


def test_interleaved_case_reports_each_provider():
    def broken(t):
        raise RuntimeError("no kernel here")

    case = _case(lambda t: t + t)
    case.providers["failing"] = broken
    case.interleave = True
    rows = harness.run_case(case, "cpu", {"copy_gbs": 10.0}, quick=True)
    by = {r["provider"]: r for r in rows}
    assert by["eager"]["speedup"] == 1.0 and by["eager"]["reps"] >= 5
    assert by["eager"]["paired_speedup"] == 1.0
    assert by["broken"]["parity_ok"] and by["broken"]["median_ms"] > 0
    assert by["broken"]["paired_speedup"] > 0
    assert "no kernel here" in by["failing"]["error"] and "median_ms" not in by["failing"]


def test_diffusers_summary_is_amdahl_over_the_site_rows():
    from suites import diffusers_unet

    def row(op, case, provider, ms, **extra):
        return {"op": op, "case": case, "provider": provider, "median_ms": ms, **extra}

    fwd, model = "diffusers UNet forward", "tiny"
    rows = [
        row(fwd, model, "original", 100.0, speedup=1.0),
        row(fwd, model, "accelerated", 95.0, speedup=100 / 95, paired_speedup=1.04),
        {"op": fwd, "case": model, "provider": "compile", "skipped": "--no-compile"},
        row("site: GroupNorm", "a", "original", 5.0, model_case=model, calls_per_forward=2),
        row("site: GroupNorm", "a", "accelerated", 4.0, model_case=model, calls_per_forward=2),
    ]
    (line,) = diffusers_unet.summarize(rows)
    assert line.startswith("tiny: the replaced calls take 10.0 ms of the original forward's")
    # 10 of 100 ms: at most 100/90; the site rows predict 100/98; measured 100/95.
    assert "(10.0%)" in line and "at most 1.11x" in line
    assert line.endswith(
        "1.02x from the accelerated site times, 1.05x measured (1.04x paired by round)"
    )
    # No site rows (a --filter run): nothing to say.
    assert diffusers_unet.summarize(rows[:3]) == []


def test_pytest_benchmark_view_of_the_kernels_suite_runs():
    """`pytest benchmarks --benchmark-only` (the run-to-run comparison view) collects
    the suite's cases and checks their parity; here once each, benchmarks disabled."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider",
         "--benchmark-disable"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary


# --- the diffusers suite (benchmarks/suites/diffusers_unet.py) on a tiny SVD UNet ---

TINY_SVD = {  # two levels, one layer per block: 8 ResnetBlock2D + 8 TemporalResnetBlock
    "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    "block_out_channels": (32, 64),
    "addition_time_embed_dim": 4,
    "projection_class_embeddings_input_dim": 12,
    "layers_per_block": 1,
    "cross_attention_dim": 16,
    "num_attention_heads": (2, 4),
}
# Calls per forward of the tiny UNet: two GroupNorm+SiLU per resnet block (16 blocks),
# one entry GroupNorm and one self-attention over frames per temporal transformer (4).
TINY_SVD_CALLS = {"GroupNorm+SiLU": 32, "GroupNorm": 4, "temporal attention": 4}

needs_diffusers = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed"
)


def _tiny_diffusers_suite(monkeypatch, tmp_path, *extra):
    from suites import diffusers_unet

    tiny = diffusers_unet.UNetShape("tiny SVD UNet", TINY_SVD, 2, (3, 8, 8), steps=2)
    monkeypatch.setattr(diffusers_unet, "SHAPES", {"cpu-quick": [tiny]})
    run = _load_run_module()
    monkeypatch.setattr(run.harness, "measure_ceilings", lambda device, quick: {"copy_gbs": 10.0})
    out = tmp_path / "bench.json"
    argv = ["--suite", "diffusers", "--device", "cpu", "--quick", "--out", str(out), *extra]
    return run.main(argv), out


@pytest.mark.slow
@needs_diffusers
def test_diffusers_suite_times_and_checks_every_provider(monkeypatch, tmp_path):
    code, out = _tiny_diffusers_suite(monkeypatch, tmp_path)
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    for op in ("diffusers UNet forward", "diffusers sampling loop"):
        by = {r["provider"]: r for r in rows if r["op"] == op}
        assert list(by) == ["original", "accelerated", "compile", "accelerated+compile"]
        for name in ("original", "accelerated"):
            assert by[name]["median_ms"] > 0 and by[name]["parity_ok"], by[name]
            assert by[name]["speedup"] > 0
        assert "--quick on CPU" in by["compile"]["skipped"]
    assert {r["steps"] for r in rows if r["op"] == "diffusers sampling loop"} == {2}
    (summary,) = json.loads(out.read_text())["summaries"]
    assert summary.startswith("[diffusers] tiny SVD UNet: the replaced calls take")
    # Every replaced call of one forward is a site row, counted once.
    calls: dict[str, int] = {}
    for r in rows:
        if r["op"].startswith("site: ") and r["provider"] == "accelerated":
            assert r["parity_ok"], r
            kind = r["op"].removeprefix("site: ")
            calls[kind] = calls.get(kind, 0) + r["calls_per_forward"]
    assert calls == TINY_SVD_CALLS


@pytest.mark.slow
@needs_diffusers
def test_diffusers_suite_exits_nonzero_when_accelerated_output_is_wrong(
    monkeypatch, tmp_path, capsys
):
    from lddm_fast.integrations.diffusers import modules

    # The accelerated norms' output, whichever path (the op, or on CPU at these small
    # shapes diffusers' formulation) computes it.
    real = modules.FusedGroupNorm.forward
    monkeypatch.setattr(modules.FusedGroupNorm, "forward", lambda *a, **k: real(*a, **k) * 1.01)
    code, _ = _tiny_diffusers_suite(monkeypatch, tmp_path, "--filter", "UNet forward")
    assert code == 1
    assert "PARITY FAILURE: diffusers UNet forward" in capsys.readouterr().err


@needs_diffusers
def test_euler_loop_is_svd_scheduler():
    """The suite's loop steps as diffusers' EulerDiscreteScheduler with SVD's config."""
    from diffusers import EulerDiscreteScheduler

    from suites import diffusers_unet

    class Fake(torch.nn.Module):  # a v-prediction that depends on input and timestep
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

        def forward(self, x, t, emb, ids, return_dict=False):
            return (torch.tanh(x[:, :, :4] * self.w + t + x[:, :, 4:]),)

    gen = torch.Generator().manual_seed(0)
    noise, image = torch.randn(2, 3, 4, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, 4)
    unet = Fake()
    with torch.no_grad():
        ours = diffusers_unet.euler_loop(unet, noise.double(), image.double(), None, None, 5)
        sched = EulerDiscreteScheduler(
            prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002,
            sigma_max=700.0, timestep_type="continuous", timestep_spacing="leading",
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
        )  # fmt: skip
        sched.set_timesteps(5)
        x = noise.double() * sched.init_noise_sigma
        for t in sched.timesteps:
            model_in = torch.cat([sched.scale_model_input(x, t), image.double()], dim=2)
            x = sched.step(unet(model_in, t.double(), None, None)[0], t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_train_suite_times_a_step_per_backend_with_grad_parity(monkeypatch, tmp_path):
    from suites import train

    monkeypatch.setattr(train, "PRESET", "tiny")
    run = _load_run_module()
    monkeypatch.setattr(run.harness, "measure_ceilings", lambda device, quick: {"copy_gbs": 10.0})
    out = tmp_path / "bench.json"
    argv = ["--suite", "train", "--device", "cpu", "--quick", "--no-compile", "--out", str(out)]
    assert run.main(argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["op"] for r in rows} == {"autoencoder training step", "denoiser training step"}
    for op in ("autoencoder training step", "denoiser training step"):
        by = {r["provider"]: r for r in rows if r["op"] == op}
        assert set(by) == {"reference", "default", "compile"}
        assert "disabled" in by["compile"]["skipped"]
        for name in ("reference", "default"):
            assert by[name]["parity_ok"] and by[name]["clips_per_s"] > 0, by[name]
        # The default training backend is one with a backward (cpp on this CPU).
        assert by["default"]["default_backends"]["group_norm"] != "none"


def test_synthesis_suite_times_the_engine_against_the_sampler(monkeypatch, tmp_path):
    run = _load_run_module()
    monkeypatch.setattr(run.harness, "measure_ceilings", lambda device, quick: {"copy_gbs": 10.0})
    out = tmp_path / "bench.json"
    argv = ["--suite", "synthesis", "--device", "cpu", "--quick", "--no-compile"]
    assert run.main([*argv, "--filter", "tiny", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    by = {r["provider"]: r for r in rows if r["op"] == "synthesize"}
    assert set(by) == {"sampler only", "engine"}
    for r in by.values():
        assert r["parity_ok"] and r["median_ms"] > 0 and r["faults_per_call"] >= 0, r
