"""Training and backend parity: gradients reach every parameter under the reference
backend, and every fast backend reproduces the reference outputs."""

from __future__ import annotations

import pytest
import torch

from lddm_fast import ops
from lddm_fast.models import build_models, preset


def _grad_report(model: torch.nn.Module) -> list[str]:
    problems = []
    for name, p in model.named_parameters():
        if p.grad is None:
            problems.append(f"{name}: no grad")
        elif not torch.isfinite(p.grad).all():
            problems.append(f"{name}: non-finite grad")
        elif torch.count_nonzero(p.grad) == 0:
            problems.append(f"{name}: all-zero grad")
    return problems


def test_denoiser_gradients_reach_every_parameter(tiny_models, make_inputs, tiny_config):
    den = tiny_models.denoiser.train()
    x = make_inputs(tiny_config)
    # One dropped and one kept condition, so the null encoding and the x0 encoder
    # both take part.
    drop = torch.tensor([True, False])
    with ops.use_backend("reference"):
        pred = den(x["z"], x["t"], x["x0"], drop_cond=drop).sample
    weights = torch.randn(pred.shape, generator=torch.Generator().manual_seed(5))
    (pred * weights).sum().backward()
    assert _grad_report(den) == []


def test_autoencoder_gradients_reach_every_parameter(tiny_models, make_inputs, tiny_config):
    ae = tiny_models.autoencoder.train()
    x = make_inputs(tiny_config)
    with ops.use_backend("reference"):
        out = ae(x["frames"], x["x0"], generator=torch.Generator().manual_seed(1))
    loss = (out.sample - x["frames"]).abs().mean() + 1e-3 * out.latent_dist.kl().mean()
    loss.backward()
    assert _grad_report(ae) == []


def test_default_backend_trains(tiny_models, make_inputs, tiny_config):
    # Without use_backend the dispatcher must still pick a differentiable backend.
    den = tiny_models.denoiser.train()
    x = make_inputs(tiny_config)
    den(x["z"], x["t"], x["x0"]).sample.square().mean().backward()
    assert den.conv_in.weight.grad is not None


# fp32 bounds the fused kernels' reordering of float sums across the whole network.
_FP32_TOL = {"atol": 2e-4, "rtol": 2e-4}


def _outputs(models, x, device, dtype):
    ae = models.autoencoder.to(device=device, dtype=dtype)
    den = models.denoiser.to(device=device, dtype=dtype)
    x = {
        k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
        for k, v in x.items()
    }
    with torch.no_grad():
        post = ae.encode(x["frames"]).latent_dist
        frames = ae.decode(post.mode(), x["x0"]).sample
        pred = den(
            x["z"], x["t"], x["x0"], drop_cond=torch.tensor([True, False], device=device)
        ).sample
    return {"mean": post.mean.float(), "frames": frames.float(), "pred": pred.float()}


def test_fast_backend_matches_reference_fp32(fast_backend, tiny_models, make_inputs, tiny_config):
    name, device, _ = fast_backend
    x = make_inputs(tiny_config)
    with ops.use_backend("reference"):
        ref = _outputs(tiny_models, x, device, torch.float32)
    with ops.use_backend(name):
        got = _outputs(tiny_models, x, device, torch.float32)
    for key in ref:
        assert ref[key].abs().max() > 1e-3, f"{key} is ~0, the comparison would be vacuous"
        torch.testing.assert_close(got[key], ref[key], **_FP32_TOL, msg=f"{name} {key}")


def test_fast_backend_bf16_error_within_twice_eager(
    fast_backend, tiny_models, make_inputs, tiny_config
):
    # FlashAttention's rule: against an fp32 reference, the fast path may be at most
    # twice as far off as eager PyTorch in the same low precision.
    name, device, backend = fast_backend
    if torch.bfloat16 not in backend.dtypes:
        pytest.skip(f"backend {name!r} does not take bfloat16")
    x = make_inputs(tiny_config)
    with ops.use_backend("reference"):
        ref = _outputs(tiny_models, x, device, torch.float32)
        eager = _outputs(tiny_models, x, device, torch.bfloat16)
    with ops.use_backend(name):
        got = _outputs(tiny_models, x, device, torch.bfloat16)
    for key in ref:
        eager_err = (eager[key] - ref[key]).abs().max().item()
        fast_err = (got[key] - ref[key]).abs().max().item()
        assert fast_err <= 2 * eager_err + 1e-6, f"{name} {key}: {fast_err} vs eager {eager_err}"


def test_reference_backend_outputs_are_nonzero(tiny_models, make_inputs, tiny_config):
    # Guards the parity tests above: with perturbed weights every compared output
    # carries signal (a fresh model's prediction is exactly zero).
    with ops.use_backend("reference"):
        ref = _outputs(tiny_models, make_inputs(tiny_config), torch.device("cpu"), torch.float32)
    assert all(v.abs().max() > 1e-3 for v in ref.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_runs_on_reference(tiny_models, make_inputs, tiny_config, dtype):
    with ops.use_backend("reference"):
        ref = _outputs(tiny_models, make_inputs(tiny_config), torch.device("cpu"), torch.float32)
        low = _outputs(tiny_models, make_inputs(tiny_config), torch.device("cpu"), dtype)
    for key in ref:
        assert low[key].dtype == torch.float32 and torch.isfinite(low[key]).all()
        scale = ref[key].abs().max()
        assert (low[key] - ref[key]).abs().max() <= 0.1 * scale, key


@pytest.mark.gpu
def test_fast_backend_matches_reference_phantom64_on_gpu(fast_backend, perturb, make_inputs):
    name, device, _ = fast_backend
    if device.type != "cuda":
        pytest.skip("full-size parity runs on a CUDA device; CPU backends are covered on tiny")
    config = preset("phantom64")
    torch.manual_seed(0)
    models = build_models(config)
    perturb(models.autoencoder, 1)
    perturb(models.denoiser, 2)
    x = make_inputs(config)
    # cuDNN's default TF32 convolutions round each conv input to 10 mantissa bits, so a
    # 1e-7 difference from a fused op can flip a rounding and grow to 1e-3 through the
    # network: the comparison is of the ops, in true fp32.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        with ops.use_backend("reference"):
            ref = _outputs(models, x, device, torch.float32)
        with ops.use_backend(name):
            got = _outputs(models, x, device, torch.float32)
    for key in ref:
        torch.testing.assert_close(
            got[key], ref[key], **_FP32_TOL, msg=lambda m, key=key: f"{name} {key}: {m}"
        )
