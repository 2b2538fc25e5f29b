"""Training and backend parity: gradients reach every parameter under the reference
backend, and every fast backend reproduces the reference outputs."""

from __future__ import annotations

import contextlib

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


def _one_training_step(objective: torch.nn.Module, args: tuple, backend: str | None):
    """The loss and every parameter grad of one training forward + backward, with the
    fused ops on ``backend`` (None: the default choice for tensors that need grad)."""
    objective.train().zero_grad(set_to_none=True)
    ctx = ops.use_backend(backend) if backend is not None else contextlib.nullcontext()
    with ctx:
        loss, _ = objective(*args)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in objective.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _training_objectives(models, x, config):
    from lddm_fast.train.autoencoder import AutoencoderObjective
    from lddm_fast.train.diffusion import DiffusionObjective

    gen = torch.Generator().manual_seed(3)
    clip = torch.cat([x["x0"].unsqueeze(2), x["frames"]], dim=2)
    eps = torch.randn(x["z"].shape, generator=gen)
    ae = AutoencoderObjective(models.autoencoder, kl_weight=1e-3, ssim_weight=0.1)
    den = DiffusionObjective(models.denoiser, config)
    noise = torch.randn(x["z"].shape, generator=gen)
    drop = torch.tensor([True, False])
    return {
        "autoencoder": (ae, (clip, eps)),
        "denoiser": (den, (x["z"], x["x0"], x["t"], noise, drop)),
    }


@pytest.mark.parametrize("stage", ["autoencoder", "denoiser"])
def test_training_step_on_fast_backend_matches_reference(
    fast_backend, stage, tiny_models, make_inputs, tiny_config
):
    """One tiny-preset training step (the trainers' objectives) gives the same loss and
    parameter gradients with the fused backward kernels as with the reference backend."""
    name, device, backend = fast_backend
    if device.type != "cpu" or not backend.has_backward("group_norm"):
        pytest.skip(f"backend {name!r} has no backward on this device")
    objective, args = _training_objectives(tiny_models, make_inputs(tiny_config), tiny_config)[
        stage
    ]
    ref_loss, ref_grads = _one_training_step(objective, args, "reference")
    loss, grads = _one_training_step(objective, args, name)
    assert ref_grads.keys() == grads.keys() and len(grads) > 0
    torch.testing.assert_close(loss, ref_loss, **_FP32_TOL)
    for key, ref in ref_grads.items():
        assert ref.abs().max() > 0, f"{key}: zero grad, the comparison would be vacuous"
        # Per tensor: the error relative to that grad's largest entry.
        err = (grads[key] - ref).abs().max() / ref.abs().max()
        assert err <= _FP32_TOL["rtol"], f"{name} {stage} {key}: {err:.2e}"


def test_default_training_step_runs_on_cpp(tiny_models, make_inputs, tiny_config, monkeypatch):
    """Without use_backend, tensors that need grad take cpp's group_norm backward, and
    its attention backward where the CPU kernels are a vector build (the portable one
    is slower than the reference's autograd); the trainers report what they train on."""
    if ops.available_backends()["cpp"] != "ok":
        pytest.skip("cpp backend unavailable")
    from lddm_fast import _C
    from lddm_fast.train.loop import training_backends

    monkeypatch.delenv("LDDM_BACKEND", raising=False)
    assert training_backends(torch.device("cpu"), torch.float32) == {
        "group_norm": "cpp",
        "temporal_attention": "reference" if _C.cpu_isa() == "default" else "cpp",
    }
    objective, args = _training_objectives(tiny_models, make_inputs(tiny_config), tiny_config)[
        "denoiser"
    ]
    loss, grads = _one_training_step(objective, args, None)
    ref_loss, _ = _one_training_step(objective, args, "reference")
    torch.testing.assert_close(loss, ref_loss, **_FP32_TOL)
