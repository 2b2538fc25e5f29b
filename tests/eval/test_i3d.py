"""I3D layer graph with random weights: TF "SAME" padding, shapes, determinism."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lddm_fast.eval.i3d import I3D, MaxPool3dSame, Unit3D, same_padding

# (size, kernel, stride) -> (before, after), worked out by hand from TF's rule
# out = ceil(size / stride), total = max((out - 1) * stride + kernel - size, 0),
# before = total // 2: the odd pixel goes after.
TF_SAME_CASES = [
    ((224, 7, 2), (2, 3)),  # I3D's first conv: out 112, total 5
    ((5, 3, 2), (1, 1)),  # out 3, total 2
    ((4, 3, 2), (0, 1)),  # out 2, total 1
    ((7, 2, 2), (0, 1)),  # out 4, total 1
    ((16, 7, 2), (2, 3)),  # time axis of the first conv
    ((9, 3, 1), (1, 1)),
    ((7, 1, 1), (0, 0)),
    ((5, 7, 3), (2, 3)),  # window wider than the input
    ((13, 5, 4), (2, 2)),  # out 4, total 4
]


@pytest.mark.parametrize("args,expected", TF_SAME_CASES)
def test_same_padding_matches_hand_computed_values(args, expected):
    assert same_padding(*args) == expected


@pytest.mark.parametrize("size,kernel,stride", [(7, 3, 2), (9, 4, 3), (11, 5, 2), (6, 3, 4)])
def test_unit3d_conv_equals_explicit_tf_same_convolution(size, kernel, stride):
    # Explicit TF definition, one output at a time: out[i] = sum_k w[k] * x[i*s + k - before],
    # reading zero outside the input.
    torch.manual_seed(0)
    unit = Unit3D(1, 1, (kernel,) * 3, (stride,) * 3, bn_eps=1e-3, bn_scale=False, head=True)
    x = torch.randn(1, 1, size, size + 2, size + 1, dtype=torch.float64)
    got = unit.double()(x)[0, 0].detach().numpy()
    w, b = unit.conv3d.weight[0, 0].detach().numpy(), float(unit.conv3d.bias.detach()[0])
    xs = x[0, 0].numpy()
    dims = xs.shape
    outs = tuple(math.ceil(n / stride) for n in dims)
    befores = [same_padding(n, kernel, stride)[0] for n in dims]
    assert got.shape == outs
    for idx in itertools.product(*(range(o) for o in outs)):
        acc = b
        for k in itertools.product(range(kernel), repeat=3):
            src = tuple(i * stride + kk - p for i, kk, p in zip(idx, k, befores, strict=True))
            if all(0 <= s < n for s, n in zip(src, dims, strict=True)):
                acc += w[k] * xs[src]
        assert abs(got[idx] - acc) < 1e-12, idx


def test_same_max_pool_never_picks_padding():
    # All-negative input: zero padding would win the max at the borders; TF's SAME
    # max-pool only looks at real cells.
    x = -1.0 - torch.rand(1, 2, 5, 7, 6)
    got = MaxPool3dSame((3, 3, 3), (2, 2, 2))(x)
    assert tuple(got.shape) == (1, 2, 3, 4, 3)
    assert (got < -1.0 + 1e-6).all()
    # The corner output's window: T and H are padded by 1 before (cells 0..1); W = 6
    # needs only one padding cell, after (cells 0..2).
    torch.testing.assert_close(got[0, :, 0, 0, 0], x[0, :, :2, :2, :3].amax(dim=(1, 2, 3)))


@pytest.fixture(scope="module")
def random_i3d():
    torch.manual_seed(0)
    return I3D().eval()


def test_trunk_is_fully_convolutional_on_small_odd_inputs(random_i3d):
    model = random_i3d
    with torch.inference_mode():
        out = model.trunk(torch.rand(2, 3, 16, 64, 64) * 2 - 1)
        odd = model.trunk(torch.rand(1, 3, 9, 65, 50) * 2 - 1)
    assert tuple(out.shape) == (2, 1024, 2, 2, 2)
    # ceil(9 / 8) = 2, ceil(65 / 32) = 3, ceil(50 / 32) = 2
    assert tuple(odd.shape) == (1, 1024, 2, 3, 2)
    assert torch.isfinite(out).all()


def test_head_refuses_inputs_smaller_than_its_pooling_window(random_i3d):
    model = random_i3d
    with pytest.raises(ValueError, match="too small for the I3D head"):
        model(torch.zeros(1, 3, 16, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.zeros(1, 1, 16, 224, 224))


def test_head_averages_logits_over_time_like_the_reference():
    # Replace the trunk's output by a known map and check the head by hand: VALID
    # 2x7x7 average pool, 1x1x1 conv with bias, mean over the remaining time steps.
    torch.manual_seed(0)
    model = I3D(num_classes=5).eval()
    h = torch.randn(1, 1024, 3, 7, 7)
    pooled = F.avg_pool3d(h, (2, 7, 7), stride=1)  # [1, 1024, 2, 1, 1]
    w, b = model.logits.conv3d.weight[:, :, 0, 0, 0], model.logits.conv3d.bias
    per_step = pooled[0, :, :, 0, 0].T @ w.T + b  # [2, 5]
    model.trunk = lambda x: h  # stands in for the convolutions
    out = model(torch.zeros(1, 3, 17, 224, 224))
    torch.testing.assert_close(out.logits[0], per_step.mean(dim=0))
    torch.testing.assert_close(out.features[0], pooled[0, :, :, 0, 0].mean(dim=1))


def test_state_dict_layouts():
    kinetics = I3D(num_classes=400, bn_eps=1e-3, bn_scale=False).state_dict()
    dtfvd = I3D(num_classes=18, bn_eps=1e-5, bn_scale=True).state_dict()
    # 57 conv+BN units x (kernel, bias, mean, var) + logits kernel and bias.
    assert len(kinetics) == 230
    assert len(dtfvd) == 230 + 57  # plus the BatchNorm scales
    assert tuple(kinetics["Conv3d_1a_7x7.conv3d.weight"].shape) == (64, 3, 7, 7, 7)
    assert tuple(kinetics["Mixed_5c.b1b.conv3d.weight"].shape) == (384, 192, 3, 3, 3)
    assert tuple(dtfvd["logits.conv3d.weight"].shape) == (18, 1024, 1, 1, 1)
    assert "Mixed_4b.b3b.bn.weight" in dtfvd and "Mixed_4b.b3b.bn.weight" not in kinetics


def test_same_seed_same_weights_and_repeated_calls_agree(random_i3d):
    torch.manual_seed(0)
    again = I3D().eval()
    for name, value in again.state_dict().items():
        assert torch.equal(random_i3d.state_dict()[name], value), name
    x = torch.rand(1, 3, 9, 40, 40) * 2 - 1
    with torch.inference_mode():
        first, second = random_i3d.trunk(x), random_i3d.trunk(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
