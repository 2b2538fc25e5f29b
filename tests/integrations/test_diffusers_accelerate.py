"""lddm_fast.accelerate on tiny random diffusers video UNets (built here, no downloads).

Parity rule (STYLE.md, FlashAttention's): run the original model in float64 as the
reference; the accelerated model in dtype d must be within twice the error of the
original model in dtype d (plus a float32 ulp of the output scale for the cases where
the eager error is itself ~0).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None,
    reason="diffusers is not installed (optional dependency: pip install lddm_fast[diffusers])",
)

FRAMES = 3


def _svd():
    from diffusers import UNetSpatioTemporalConditionModel

    model = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12,
        layers_per_block=1,
        cross_attention_dim=16,
        num_attention_heads=(2, 4),
        num_frames=FRAMES,
    )

    def inputs(gen):  # sample [B, T, C, H, W]
        return {
            "sample": torch.randn(2, FRAMES, 8, 8, 8, generator=gen),
            "timestep": torch.tensor(10.0),
            "encoder_hidden_states": torch.randn(2, 1, 16, generator=gen),
            "added_time_ids": torch.randn(2, 3, generator=gen),
        }

    return model, inputs


def _unet3d():
    from diffusers import UNet3DConditionModel

    model = UNet3DConditionModel(
        sample_size=8,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=8,
    )

    def inputs(gen):  # sample [B, C, T, H, W]
        return {
            "sample": torch.randn(2, 4, FRAMES, 8, 8, generator=gen),
            "timestep": torch.tensor(10),
            "encoder_hidden_states": torch.randn(2, 5, 16, generator=gen),
        }

    return model, inputs


def _i2vgen_xl():
    from diffusers import I2VGenXLUNet

    model = I2VGenXLUNet(
        sample_size=8,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,  # I2VGenXL reads it as the number of heads
    )

    def inputs(gen):  # sample and image_latents [B, C, T, H, W]
        return {
            "sample": torch.randn(2, 4, FRAMES, 8, 8, generator=gen),
            "timestep": torch.tensor(10),
            "fps": torch.tensor([8, 8]),
            "image_latents": torch.randn(2, 4, FRAMES, 8, 8, generator=gen),
            "image_embeddings": torch.randn(2, 16, generator=gen),
            "encoder_hidden_states": torch.randn(2, 5, 16, generator=gen),
        }

    return model, inputs


def _motion():
    from diffusers import UNetMotionModel

    model = UNetMotionModel(
        sample_size=8,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=16,
        num_attention_heads=2,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )

    def inputs(gen):  # sample [B, C, T, H, W]; text states per frame, as AnimateDiff's pipeline
        return {
            "sample": torch.randn(2, 4, FRAMES, 8, 8, generator=gen),
            "timestep": torch.tensor(10),
            "encoder_hidden_states": torch.randn(2 * FRAMES, 5, 16, generator=gen),
        }

    return model, inputs


MODELS = {"svd": _svd, "unet3d": _unet3d, "i2vgen_xl": _i2vgen_xl, "motion": _motion}
# Replacements by kind, read off each tiny config (2 levels, 1 layer per block: 8
# ResnetBlock2D; SVD pairs each with a TemporalResnetBlock; UNet3D and I2VGenXL have 8
# TemporalConvLayers of 4 GroupNorm+SiLU each; one temporal transformer per attention
# level and mid block, I2VGenXL adds its image-latent temporal encoder).
EXPECTED = {
    "svd": {"ResnetBlock2D": 8, "TemporalResnetBlock": 8, "entry": 4, "attention": 4},
    "unet3d": {"ResnetBlock2D": 8, "GroupNorm+SiLU": 32, "entry": 5, "attention": 10},
    "i2vgen_xl": {"ResnetBlock2D": 8, "GroupNorm+SiLU": 32, "entry": 5, "attention": 11},
    "motion": {"ResnetBlock2D": 8, "entry": 7, "attention": 14},
}
KINDS = {
    "ResnetBlock2D": "ResnetBlock2D:",
    "TemporalResnetBlock": "TemporalResnetBlock:",
    "GroupNorm+SiLU": "GroupNorm+SiLU ->",
    "entry": "temporal transformer entry GroupNorm",
    "attention": "self-attention over frames",
}


def _build(name: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    # Random weights: diffusers zero-inits some output convs (TemporalConvLayer.conv4,
    # proj_out), which would hide their branches from the comparison.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model = model.eval().to(dtype)
    batch = {
        k: v.to(dtype) if v.is_floating_point() and v.dim() > 0 else v
        for k, v in inputs(torch.Generator().manual_seed(2)).items()
    }
    return model, batch


def _run(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, return_dict=False)[0]


@pytest.fixture(autouse=True)
def _threads():
    # Small tensors on a shared 2-core machine: one thread avoids hand-off costs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _kinds(report) -> dict[str, int]:
    counts = {
        kind: sum(what.startswith(prefix) for what in report.replaced.values())
        for kind, prefix in KINDS.items()
    }
    return {kind: n for kind, n in counts.items() if n}


def _max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.double() - ref).abs().max().item()


# backend=None: the default, which on CPU keeps diffusers' formulation for the small
# norms of these tiny models (FusedGroupNorm); "cpp" runs every replaced site fused.
@pytest.mark.parametrize("backend", [None, "cpp"])
@pytest.mark.parametrize("name", list(MODELS))
def test_accelerated_matches_original_fp32_and_undo_is_exact(name, backend):
    import lddm_fast

    model, batch = _build(name)
    ref = _run(
        _build(name, torch.float64)[0],
        {k: v.double() if v.is_floating_point() else v for k, v in batch.items()},
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager = _run(model, batch)

    assert lddm_fast.accelerate(model, backend=backend) is model
    report = model.lddm_fast_acceleration
    assert _kinds(report) == EXPECTED[name]
    # Everything not replaced is accounted for, with a reason: conv_norm_out (its SiLU is
    # in the UNet's forward), spatial transformers' norms, spatial and text attention.
    assert report.skipped and all(report.skipped.values())
    assert any(module.startswith("conv_norm_out") for module in report.skipped)
    fast = _run(model, batch)
    ulp = torch.finfo(torch.float32).eps * ref.abs().max().item()
    assert _max_err(fast, ref) <= 2 * _max_err(eager, ref) + ulp, (
        _max_err(fast, ref),
        _max_err(eager, ref),
    )

    # Idempotent: a second call replaces nothing new and changes no output bit.
    lddm_fast.accelerate(model, backend=backend)
    assert model.lddm_fast_acceleration == report
    assert torch.equal(_run(model, batch), fast)

    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], state[k]) for k in state)

    lddm_fast.accelerate.undo(model)
    assert not hasattr(model, "lddm_fast_acceleration")
    assert torch.equal(_run(model, batch), eager)


@pytest.mark.parametrize("backend", [None, "cpp"])
@pytest.mark.parametrize("name", list(MODELS))
def test_accelerated_bf16_within_twice_eager_bf16_error(name, backend):
    import lddm_fast

    model64, batch64 = _build(name, torch.float64)
    ref = _run(model64, batch64)
    model, batch = _build(name, torch.bfloat16)
    eager = _run(model, batch)
    with lddm_fast.accelerate.accelerated(model, backend=backend) as report:
        assert report.replaced
        fast = _run(model, batch)
    assert _max_err(fast, ref) <= 2 * _max_err(eager, ref), (
        _max_err(fast, ref),
        _max_err(eager, ref),
    )
    assert torch.equal(_run(model, batch), eager)  # the context manager undid it


@pytest.mark.parametrize("film", [False, True])
def test_default_cpu_group_norm_keeps_diffusers_math_where_the_op_loses(film, monkeypatch):
    from lddm_fast.integrations.diffusers import modules

    norm = torch.nn.GroupNorm(4, 8)
    modules.fuse_group_norm(norm, "silu", None)
    calls = []
    real = modules.ops.group_norm
    monkeypatch.setattr(
        modules.ops, "group_norm", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k)
    )
    scale, shift = (torch.randn(2, 8), torch.randn(2, 8)) if film else (None, None)
    for positions, fused in [
        (modules.CPU_MIN_POSITIONS - 1, False),
        (modules.CPU_MIN_POSITIONS, True),
    ]:
        calls.clear()
        x = torch.randn(2, 8, positions, 1)
        want = torch.nn.functional.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
        if film:
            want = want * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        out = norm(x, scale, shift)
        torch.testing.assert_close(out, torch.nn.functional.silu(want))
        assert bool(calls) == fused
    # Without an activation the op loses at every size measured; a named backend is
    # always used.
    norm.lddm_activation = None
    calls.clear()
    norm(torch.randn(2, 8, 64, 64))
    assert not calls
    norm.lddm_backend = "cpp"
    norm(torch.randn(2, 8, 2, 2))
    assert calls


def test_pipeline_and_compiled_wrappers_reach_the_unet():
    import lddm_fast

    model, _ = _build("unet3d")

    class Pipe:  # what accelerate reads of a diffusers pipeline
        unet = model

    pipe = Pipe()
    assert lddm_fast.accelerate(pipe) is pipe
    assert model.lddm_fast_acceleration.replaced
    lddm_fast.accelerate.undo(pipe)
    with pytest.raises(TypeError, match="takes a diffusers model"):
        lddm_fast.accelerate(object())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_accelerated_model_is_one_graph(name):
    """torch.compile(fullgraph=True) traces the accelerated model whole: the default
    backend choice, the fused modules on 4-D and 5-D inputs and the attention processor
    add no graph break. aot_eager runs the traced graph (our fake kernels included)
    without Inductor's code generation, which takes minutes on a 2-core CPU."""
    import lddm_fast

    torch._dynamo.reset()
    model, batch = _build(name)
    lddm_fast.accelerate(model)
    eager = _run(model, batch)
    compiled = _run(torch.compile(model, fullgraph=True, backend="aot_eager"), batch)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_hooked_modules_are_skipped_not_bypassed():
    """A hook that wrapped a block's forward (CPU offload) calls the forward it saw, so
    swapping the block's class would silently not run; accelerate must skip it."""
    from diffusers.hooks import HookRegistry, ModelHook

    import lddm_fast

    model, batch = _build("motion")
    block = model.down_blocks[0].resnets[0]
    HookRegistry.check_if_exists_or_initialize(block).register_hook(ModelHook(), "probe")
    eager = _run(model, batch)
    lddm_fast.accelerate(model)
    report = model.lddm_fast_acceleration
    assert "offload" in report.skipped["down_blocks.0.resnets.0"]
    assert "down_blocks.0.resnets.0" not in report.replaced
    assert type(block.norm1) is torch.nn.GroupNorm
    fast = _run(model, batch)
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)
    lddm_fast.accelerate.undo(model)
    assert torch.equal(_run(model, batch), eager)


def test_processor_set_by_hand_falls_back_off_its_path():
    """``set_attn_processor`` puts the processor on every attention module: cross-attention
    calls go to the SDPA fallback, self-attention over any sequence through the op."""
    from lddm_fast.integrations.diffusers import TemporalAttnProcessor

    model, batch = _build("unet3d")
    eager = _run(model, batch)
    model.set_attn_processor(TemporalAttnProcessor())
    torch.testing.assert_close(_run(model, batch), eager, rtol=1e-4, atol=1e-4)


def test_core_import_does_not_import_diffusers():
    code = "import sys, lddm_fast, lddm_fast.ops; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(MODELS))
def test_accelerated_matches_original_on_gpu(name, dtype):
    import lddm_fast

    model64, batch64 = _build(name, torch.float64)
    ref = _run(model64.cuda(), {k: v.cuda() for k, v in batch64.items()})
    model, batch = _build(name, dtype)
    model, batch = model.cuda(), {k: v.cuda() for k, v in batch.items()}
    eager = _run(model, batch)
    with lddm_fast.accelerate.accelerated(model):
        fast = _run(model, batch)
    assert _max_err(fast, ref) <= 2 * _max_err(eager, ref), (
        _max_err(fast, ref),
        _max_err(eager, ref),
    )
    assert torch.equal(_run(model, batch), eager)
