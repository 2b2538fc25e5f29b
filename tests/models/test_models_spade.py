"""The decoder's SPADE norm as one fused ops.group_norm call (spatial scale/shift + SiLU)
against its unfused formulation (GroupNorm op, then eager modulation and SiLU)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lddm_fast import ops
from lddm_fast.models.autoencoder import SpadeNorm

_SILU = {torch.ops.aten.silu.default, torch.ops.aten.silu_.default}


def _decode(models, x, *, unfused: bool, monkeypatch, dtype=torch.float32) -> torch.Tensor:
    ae = models.autoencoder.to(dtype=dtype)
    with monkeypatch.context() as m:
        if unfused:
            m.setattr(SpadeNorm, "forward", SpadeNorm.forward_unfused)
        with torch.no_grad():
            z = ae.encode(x["frames"].to(dtype)).latent_dist.mode()
            return ae.decode(z, x["x0"].to(dtype)).sample.float()


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_fused_spade_decode_matches_unfused(
    backend, tiny_models, make_inputs, tiny_config, monkeypatch
):
    status = ops.available_backends()[backend]
    if not status.startswith("ok"):
        pytest.skip(f"backend {backend!r} unavailable: {status}")
    if backend == "triton" and status == "ok":
        pytest.skip("the GPU run of the model parity tests covers triton on CUDA")
    x = make_inputs(tiny_config)
    with ops.use_backend("reference"):
        unfused = _decode(tiny_models, x, unfused=True, monkeypatch=monkeypatch)
    with ops.use_backend(backend):
        fused = _decode(tiny_models, x, unfused=False, monkeypatch=monkeypatch)
    assert unfused.abs().max() > 1e-3, "decoded frames are ~0: the comparison would be vacuous"
    torch.testing.assert_close(fused, unfused, atol=2e-4, rtol=2e-4)


def test_fused_spade_decode_bf16_error_within_twice_unfused(
    tiny_models, make_inputs, tiny_config, monkeypatch
):
    # FlashAttention's rule against the fp32 unfused decode: the fused bf16 decode is at
    # most twice as far off as the unfused one in bf16.
    x = make_inputs(tiny_config)
    with ops.use_backend("reference"):
        ref = _decode(tiny_models, x, unfused=True, monkeypatch=monkeypatch)
        eager = _decode(tiny_models, x, unfused=True, monkeypatch=monkeypatch, dtype=torch.bfloat16)
    fused = _decode(tiny_models, x, unfused=False, monkeypatch=monkeypatch, dtype=torch.bfloat16)
    eager_err = (eager - ref).abs().max().item()
    fused_err = (fused - ref).abs().max().item()
    assert fused_err <= 2 * eager_err + 1e-6, (fused_err, eager_err)


class _SiluCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SILU:
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(ops.available_backends()["cpp"] != "ok", reason="needs the cpp backend")
def test_autoencoder_runs_no_silu_outside_ops(tiny_models, make_inputs, tiny_config):
    """With the fused cpp kernels every SiLU of the autoencoder (encoder, SPADE decoder)
    happens inside lddm::group_norm, so no aten silu runs at all."""
    x = make_inputs(tiny_config)
    detector = _SiluCalls()
    with torch.no_grad(), ops.use_backend("cpp"), detector:
        torch.nn.functional.silu(torch.randn(3))  # the detector works
        assert detector.calls == ["aten.silu.default"]
        detector.calls.clear()
        tiny_models.autoencoder(x["frames"], x["x0"])
    assert detector.calls == []
