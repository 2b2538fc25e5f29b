"""The conv wrappers: channels-last output always, and oneDNN for float32 CPU inference
where ATen's heuristic would pick its slower native kernel (batch 1, small N*C*D*H)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lddm_fast.models.layers import Conv2d, Conv3d

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN (mkldnn)"
)


def _kernels(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (lambda: Conv3d(16, 12, 3, padding=1), (1, 16, 7, 12, 10)),
        (lambda: Conv3d(8, 8, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (1, 8, 5, 9, 9)),
        (lambda: Conv2d(6, 10, 3, padding=1), (1, 6, 11, 13)),
    ],
)
def test_inference_takes_onednn_and_matches_aten(conv, shape):
    torch.manual_seed(0)
    conv = conv()
    fmt = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    x = torch.randn(shape).contiguous(memory_format=fmt)
    ref = (F.conv3d if len(shape) == 5 else F.conv2d)(
        x.double(),
        conv.weight.double(),
        conv.bias.double(),
        conv.stride,
        conv.padding,
        conv.dilation,
    )
    with torch.no_grad():
        kernels = _kernels(lambda: conv(x))
        y = conv(x)
    assert "aten::mkldnn_convolution" in kernels
    assert not any("slow_conv" in k for k in kernels), kernels
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_training_and_other_dtypes_keep_atens_path():
    torch.manual_seed(1)
    conv = Conv3d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 3, 5, 5, requires_grad=True)
    kernels = _kernels(lambda: conv(x).sum().backward())
    assert "aten::mkldnn_convolution" not in kernels
    assert x.grad is not None and conv.weight.grad is not None
    with torch.no_grad():
        kernels = _kernels(lambda: conv.double()(x.detach().double()))
    assert "aten::mkldnn_convolution" not in kernels
