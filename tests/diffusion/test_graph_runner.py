"""CUDAGraphRunner: eager on CPU; on a GPU, graph replay against the eager loop
(<= 1e-6 relative in fp32), per-key caching and the fallback on a failed capture."""

from __future__ import annotations

import warnings

import pytest
import torch

from lddm_fast.diffusion import CUDAGraphRunner, LDDMPipeline, video_generators


def test_cpu_runs_eagerly_without_capture():
    runner = CUDAGraphRunner()
    calls = []

    def fn(x, y):
        calls.append(1)
        return x * 2 + y

    x, y = torch.ones(3), torch.arange(3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "capture failed" warning on CPU
        for _ in range(2):
            torch.testing.assert_close(runner("k", fn, {"x": x, "y": y}), x * 2 + y)
    assert len(calls) == 2 and len(runner) == 0 and runner.failures == {}


def test_runner_argument_errors():
    with pytest.raises(ValueError, match="warmup_iters must be >= 1"):
        CUDAGraphRunner(warmup_iters=0)
    if torch.cuda.is_available():
        runner = CUDAGraphRunner()
        mixed = {"x": torch.ones(2), "y": torch.ones(2, device="cuda")}
        with pytest.raises(ValueError, match="all inputs must be on one device"):
            runner("k", lambda x, y: x, mixed)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def cuda_pipe():
    return LDDMPipeline.from_preset("tiny", device="cuda", dtype=torch.float32)


def _denoise_inputs(pipe: LDDMPipeline, batch: int, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x0 = torch.rand(batch, 1, 32, 32, device="cuda", generator=gen) * 2 - 1
    latents = torch.randn(batch, *pipe.config.latent_shape, device="cuda", generator=gen)
    latents = latents.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        cond = pipe.models.denoiser.encode_condition(x0)
        drop = torch.ones(batch, dtype=torch.bool, device="cuda")
        uncond = pipe.models.denoiser.encode_condition(x0, drop)
    return latents, cond, uncond


@pytest.mark.gpu
@pytest.mark.parametrize(
    "sampler,guidance,eta",
    [("ddim", 1.0, 0.0), ("dpmpp_2m", 1.0, 0.0), ("ddpm", 1.0, 0.0), ("ddim", 2.5, 0.7)],
)
def test_graph_replay_matches_eager_fp32(cuda_pipe, sampler, guidance, eta):
    pipe = cuda_pipe
    pipe.graph_runner.clear()
    for call, seed in enumerate((0, 1)):  # capture + replay, then a replay on new inputs
        latents, cond, uncond = _denoise_inputs(pipe, 3, seed)
        results = {}
        for graph in (True, False):
            gens = video_generators([10 + seed, 20 + seed, 30 + seed], "cuda")
            results[graph] = pipe.denoise(
                latents, cond, uncond, steps=8, sampler=sampler, guidance=guidance, eta=eta,
                generators=gens, cuda_graph=graph,
            )  # fmt: skip
        assert torch.isfinite(results[False]).all()
        assert _rel(results[True], results[False]) <= 1e-6, (call, sampler)
    assert len(pipe.graph_runner) == 1 and pipe.graph_runner.failures == {}


@pytest.mark.gpu
def test_one_graph_per_key(cuda_pipe):
    pipe = cuda_pipe
    pipe.graph_runner.clear()
    latents, cond, _ = _denoise_inputs(pipe, 2, 0)
    pipe.denoise(latents, cond, steps=4)
    pipe.denoise(latents, cond, steps=4, timestep_spacing="leading")  # same graph, new inputs
    assert len(pipe.graph_runner) == 1
    pipe.denoise(latents, cond, steps=5)  # step count is part of the key
    pipe.denoise(latents, cond, steps=4, sampler="dpmpp_2m")
    latents3, cond3, _ = _denoise_inputs(pipe, 3, 0)
    pipe.denoise(latents3, cond3, steps=4)  # batch size is part of the key
    assert len(pipe.graph_runner) == 4


@pytest.mark.gpu
def test_pipeline_call_graph_matches_eager(cuda_pipe):
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    graph = cuda_pipe(images, steps=6, sampler="dpmpp_2m", output="float").videos
    eager = cuda_pipe(images, steps=6, sampler="dpmpp_2m", output="float", cuda_graph=False)
    assert _rel(graph, eager.videos) <= 1e-5  # through the decoder too


@pytest.mark.gpu
def test_failed_capture_falls_back_with_one_warning():
    runner = CUDAGraphRunner()

    def syncs(x):
        # .item() reads the device from the host: not allowed while capturing.
        return x * (x.sum().item() > 0)

    x = torch.ones(4, device="cuda")
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed, running the eager loop"):
        torch.testing.assert_close(runner("sync", syncs, {"x": x}), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per key
        torch.testing.assert_close(runner("sync", syncs, {"x": -x}), -x * 0)
    assert len(runner) == 0 and len(runner.failures) == 1
    # The process is left as it was: the current stream, CUDA random draws (the
    # generator's capture state) and other captures (the pool's recording) all work.
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert torch.randn(3, device="cuda").isfinite().all()
    torch.testing.assert_close(runner("ok", lambda x: x * 3, {"x": x}), x * 3)
    assert len(runner) == 1
    noisy = runner("rng", lambda x: x + torch.randn_like(x), {"x": x})
    assert noisy.isfinite().all() and not torch.equal(noisy, x)
    assert len(runner) == 2
