"""Helpers shared by the kernel tests (cpp, cuda and triton backends): the error
measure, the one per-dtype acceptance rule and the input layouts every op is run on."""

import pytest
import torch

from lddm_fast import ops

# The module marks of the cpp backend's tests: skipped (with the reason) where the
# extension is not built, and every kernel output NaN-poisoned before its launch.
CPP_TEST_MARKS = [
    pytest.mark.skipif(
        ops.available_backends()["cpp"] != "ok",
        reason=f"cpp backend unavailable: {ops.available_backends()['cpp']}",
    ),
    pytest.mark.usefixtures("poisoned_outputs"),
]
# The dtypes the cpp kernels take.
CPP_DTYPES = [torch.float32, torch.bfloat16]
# The same for the cuda backend's tests, which also carry the `gpu` mark (.ci/gpu).
CUDA_STATUS = ops.available_backends()["cuda"]
CUDA_TEST_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA_STATUS != "ok", reason=f"cuda backend unavailable: {CUDA_STATUS}"),
    pytest.mark.usefixtures("poisoned_outputs"),
]

FP32_TOL = 1e-5  # max|y - ref| / max|ref|
# One rounding step of the storage dtype, relative: the least a low-precision result
# can be expected to miss by.
LOWP_FLOOR = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-10}


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max|y - ref| / max|ref|; an unwritten (NaN-poisoned) element fails here."""
    assert torch.isfinite(y).all(), "output has NaN/Inf: an element was not written"
    return ((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def check(fast: torch.Tensor, eager: torch.Tensor, ref: torch.Tensor) -> None:
    """float32: within FP32_TOL of the float64 ref; bf16/fp16: no worse than 2x the eager
    reference-backend error in that dtype (FlashAttention's rule), floor LOWP_FLOOR."""
    err = rel(fast, ref)
    if fast.dtype == torch.float32:
        assert err <= FP32_TOL, err
    else:
        bound = max(2 * rel(eager, ref), LOWP_FLOOR[fast.dtype])
        assert err <= bound, (err, bound)


def grads(fn, inputs, grad_out, backend):
    """Gradients of sum(fn(*inputs, backend=backend) * grad_out) w.r.t. inputs (None
    entries skipped)."""
    leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves, backend=backend)
    out.backward(grad_out)
    return [None if t is None else t.grad for t in leaves]


def check_grads(fn, inputs, grad_out, backend):
    """``backend``'s grads against autograd through the float64 reference by
    :func:`check`, the reference backend's grads in the inputs' dtypes being the
    low-precision yardstick; each grad must have its input's shape and dtype."""
    fast = grads(fn, inputs, grad_out, backend)
    eager = grads(fn, inputs, grad_out, "reference")
    ref = grads(fn, [d64(t) for t in inputs], grad_out.double(), "reference")
    for i, (f, e, r) in enumerate(zip(fast, eager, ref, strict=True)):
        if r is None:
            continue
        assert f.shape == r.shape and f.dtype == inputs[i].dtype, i
        check(f, e, r)


def directional_check(fn, ref, inputs, eps=1e-6):
    """<grad, u> from fn's backward (inputs in float32) against the central difference
    of <ref, g> along a random direction u, with ref the same function evaluated in
    float64 by the reference backend (so the difference itself is accurate to ~1e-9):
    the gradient check for backends that take no float64 (no torch.autograd.gradcheck)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, dtype=torch.float64, device=out.device)
    (out.double() * g).sum().backward()
    dirs = [torch.randn_like(t, dtype=torch.float64) for t in inputs]
    analytic = sum((t.grad.double() * u).sum() for t, u in zip(leaves, dirs, strict=True))
    with torch.no_grad():
        plus = ref(*[t.double() + eps * u for t, u in zip(inputs, dirs, strict=True)])
        minus = ref(*[t.double() - eps * u for t, u in zip(inputs, dirs, strict=True)])
    numeric = ((plus - minus) * g).sum() / (2 * eps)
    # float32 kernels: the gradient's rounding is ~1e-6 relative per term.
    assert abs(analytic - numeric) <= 1e-4 * abs(numeric).clamp_min(1.0), (analytic, numeric)


# (shape, groups) of the group_norm gradient tests: C/G = 5, T = 7 | 1-pixel frames,
# G = C | 4-D, G = 1 | C = 12, S = 6.
GN_GRAD_SHAPES = [
    ((2, 40, 7, 5, 5), 8),
    ((2, 24, 7, 1, 1), 24),
    ((3, 6, 9, 9), 1),
    ((1, 12, 2, 1, 3), 3),
]


def group_norm_fn(groups, activation):
    """fn(x, weight, bias, scale, shift, *, backend) for check_grads: ops.group_norm."""

    def fn(x, w, b, scale, shift, *, backend):
        return ops.group_norm(
            x, groups, w, b, scale=scale, shift=shift, activation=activation, backend=backend
        )

    return fn


def check_group_norm_grad_of_x_through_a_view(backend, device):
    """Only x needs grad (the parameter grads are computed and dropped), and x is a
    channel slice of a leaf: autograd routes ``backend``'s dx into the leaf's grad."""
    base = torch.randn(2, 12, 3, 4, 4, device=device).requires_grad_()
    w = torch.randn(8, device=device)
    ops.group_norm(base[:, 4:], 4, w, activation="silu", backend=backend).sum().backward()
    ref = base.detach().double().requires_grad_()
    ops.group_norm(
        ref[:, 4:], 4, w.double(), activation="silu", backend="reference"
    ).sum().backward()
    assert w.grad is None
    assert rel(base.grad, ref.grad) <= FP32_TOL


def check_group_norm_finite_differences(backend, device):
    """directional_check of ``backend``'s group_norm + FiLM scale + spatial shift + SiLU."""
    fn = group_norm_fn(3, "silu")
    shapes = [(2, 12, 3, 2, 3), (12,), (12,), (2, 12), (2, 12, 1, 2, 3)]
    inputs = [torch.randn(s, device=device) for s in shapes]
    inputs[3] *= 0.5
    directional_check(
        lambda *a: fn(*a, backend=backend), lambda *a: fn(*a, backend="reference"), inputs
    )


def check_group_norm_spatial_grads(backend, device, shape, groups, form, fmt, dtype):
    """Spatial (SPADE) scale/shift on ``backend`` (+ SiLU): per-element grads summed over
    their broadcast dims (T for [N, C, 1, H, W]; N, T and H for film_and_broadcast's
    shift); the output gradient contiguous whatever x's layout."""
    x = layout(torch.randn(shape, device=device).to(dtype), fmt)
    scale, shift = spatial_modulation(x, form)
    c = shape[1]
    args = [x, torch.randn(c, device=device), torch.randn(c, device=device), scale, shift]
    gy = torch.randn(shape, device=device).to(dtype)
    check_grads(group_norm_fn(groups, "silu"), args, gy, backend)


def check_group_norm_large_mean_grads(backend, device, fmt, shape=(2, 40, 3, 4, 5), groups=8):
    """x = 1000 + noise on ``backend`` (+ FiLM, SiLU): xhat must come from the group
    statistics without losing the mean's float rounding."""
    n, c = shape[:2]

    def randn(*size):
        return torch.randn(size, device=device)

    x = layout(1000 + randn(*shape), fmt)
    args = [x, randn(c), randn(c), randn(n, c), randn(n, c)]
    check_grads(group_norm_fn(groups, "silu"), args, randn(*shape), backend)


def check_group_norm(x, groups, weight, bias, backend, *, scale=None, shift=None, activation=None):
    """ops.group_norm on ``backend`` against the float64 reference by :func:`check`,
    with the eager reference backend in x's dtype as the low-precision yardstick; the
    output must keep x's dtype, shape and memory format."""
    from lddm_fast import ops
    from lddm_fast.layout import memory_format_of

    kw = dict(scale=scale, shift=shift, activation=activation)
    y = ops.group_norm(x, groups, weight, bias, backend=backend, **kw)
    eager = ops.group_norm(x, groups, weight, bias, backend="reference", **kw)
    kw64 = dict(kw, scale=d64(scale), shift=d64(shift))
    ref = ops.group_norm(x.double(), groups, d64(weight), d64(bias), backend="reference", **kw64)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    assert y.is_contiguous(memory_format=memory_format_of(x))
    check(y, eager, ref)


def misaligned(x: torch.Tensor) -> torch.Tensor:
    """x's values and (dense) strides, with the data one element past a 16-byte boundary,
    so the kernels take their scalar paths."""
    buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    y = buf[1:].as_strided(x.shape, x.stride())
    y.copy_(x)
    assert y.data_ptr() % 16 != 0
    return y


def layout(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """x in memory format ``fmt``: contiguous, channels_last(_3d), strided (neither:
    every other element of the last dim), strided_cl (the same from a channels-last
    tensor: strides in channels-last order but not dense, which the ops treat as
    neither), misaligned or misaligned_cl."""
    cl = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    if fmt == "channels_last":
        return x.contiguous(memory_format=cl)
    if fmt == "strided":
        return torch.cat([x, x], dim=-1)[..., ::2]
    if fmt == "strided_cl":
        return torch.cat([x, x], dim=-1).contiguous(memory_format=cl)[..., ::2]
    if fmt == "misaligned":
        return misaligned(x)
    if fmt == "misaligned_cl":
        return misaligned(x.contiguous(memory_format=cl))
    return x


# Layouts of temporal attention's q, k, v (see attention_qkv).
ATTENTION_FORMATS = [
    "contiguous",
    "qkv_views",
    "qkv_views_cl",
    "frames",
    "frames_cl",
    "transposed_hw",
    "mixed",
    "misaligned",
]


def attention_qkv(B, C, T, hw, fmt, dtype, device="cpu"):
    """Fresh random q, k, v of shape [B, C, T, *hw] in one of ATTENTION_FORMATS:
    contiguous (three tensors, as a diffusers block holds them); qkv_views (channel
    slices of one contiguous [B, 3C, T, H, W] tensor); qkv_views_cl (the same from a
    channels_last_3d one: the model's layout); frames ([B * T, C, H, W] frames seen as
    [B, C, T, H, W]); frames_cl (the same from channels_last frames: 4-D channels-last
    memory); channels_last_3d (three channels-last tensors); transposed_hw (pixels of a column
    adjacent); mixed (three unrelated layouts,
    one with channels 2 apart); misaligned (contiguous, data one element past a 16-byte
    boundary)."""

    def rand(*size):
        return torch.randn(*size, device=device).to(dtype)

    if fmt == "contiguous":
        return [rand(B, C, T, *hw) for _ in range(3)]
    if fmt == "frames":
        return [rand(B, T, C, *hw).transpose(1, 2) for _ in range(3)]
    if fmt == "frames_cl":
        return [
            rand(B * T, C, *hw)
            .contiguous(memory_format=torch.channels_last)
            .view(B, T, C, *hw)
            .transpose(1, 2)
            for _ in range(3)
        ]
    if fmt == "channels_last_3d":
        return [
            rand(B, C, T, *hw).contiguous(memory_format=torch.channels_last_3d) for _ in range(3)
        ]
    if fmt == "transposed_hw":
        return [rand(B, C, T, *hw[::-1]).transpose(3, 4) for _ in range(3)]
    if fmt == "mixed":
        k = rand(B, C, T, *hw).contiguous(memory_format=torch.channels_last_3d)
        v = rand(B, T, *hw, 2 * C).permute(0, 4, 1, 2, 3)[:, ::2]
        return [rand(B, C, T, *hw), k, v]
    if fmt == "misaligned":
        return [misaligned(rand(B, C, T, *hw)) for _ in range(3)]
    qkv = rand(B, 3 * C, T, *hw)
    if fmt == "qkv_views_cl":
        qkv = qkv.contiguous(memory_format=torch.channels_last_3d)
    elif fmt != "qkv_views":
        raise ValueError(fmt)
    return list(qkv.chunk(3, dim=1))


def attention_fn(heads, scale=None):
    """fn(q, k, v, *, backend) for check_grads: ops.temporal_attention."""

    def fn(q, k, v, *, backend):
        return ops.temporal_attention(q, k, v, num_heads=heads, scale=scale, backend=backend)

    return fn


# (T, heads, head_dim, (H, W)) of the GPU backends' attention gradient tests: odd T and
# head_dim 24 | T = 1 | 1-pixel frames, head_dim 8 | T = 17, head_dim 12, C = 36.
ATTN_GRAD_CASES = [
    (7, 2, 24, (3, 5)),
    (1, 1, 16, (2, 2)),
    (16, 4, 8, (1, 1)),
    (17, 3, 12, (2, 3)),
]
ATTN_GRAD_FORMATS = ["contiguous", "qkv_views", "qkv_views_cl", "mixed"]


def check_attention_grads(backend, device, T, heads, d, hw, fmt, dtype):
    """check_grads of ``backend``'s attention for fresh q, k, v in ``fmt`` (see
    attention_qkv) and an output gradient in yet another layout (channels-last)."""
    q, k, v = attention_qkv(2, heads * d, T, hw, fmt, dtype, device)
    go = torch.randn(q.shape, device=device).to(dtype)
    go = go.contiguous(memory_format=torch.channels_last_3d)
    check_grads(attention_fn(heads), [q, k, v], go, backend)


def check_attention_grad_through_one_qkv_leaf(backend, device):
    """The model's case: q, k, v are channel slices of one channels-last qkv tensor that
    needs grad; autograd concatenates ``backend``'s three grads into its grad."""
    qkv = torch.randn(2, 48, 7, 3, 3, device=device)
    leaf = qkv.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    out = ops.temporal_attention(*leaf.chunk(3, dim=1), num_heads=2, backend=backend)
    out.square().sum().backward()
    ref = qkv.double().requires_grad_()
    out = ops.temporal_attention(*ref.chunk(3, dim=1), num_heads=2, backend="reference")
    out.square().sum().backward()
    assert rel(leaf.grad, ref.grad) <= FP32_TOL


def check_logsumexp(lse, q, k, heads, scale):
    """lse [B, heads, T, H, W]: each query's log sum_j exp(scale q.k_j), within 1e-6 of
    float64."""
    B, C, T, H, W = q.shape
    qs, ks = (t.double().reshape(B, heads, C // heads, T, H, W) for t in (q, k))
    logits = torch.einsum("bndiyx,bndjyx->bnijyx", qs, ks) * scale
    assert rel(lse, torch.logsumexp(logits, dim=3)) <= 1e-6


def opcheck_attention(namespace, fmt, device):
    """torch.library.opcheck of a backend's temporal_attention_lse (autograd included)
    and temporal_attention_backward (schema, fake) ops: ``namespace`` is
    torch.ops.lddm or torch.ops.lddm_triton."""
    qkv = attention_qkv(2, 8, 5, (3, 3), fmt, torch.float32, device)
    q, k, v = (t.requires_grad_() for t in qkv)
    torch.library.opcheck(namespace.temporal_attention_lse.default, (q, k, v, 2, 0.25))
    with torch.no_grad():
        _, lse = namespace.temporal_attention_lse(q, k, v, 2, 0.25)
    args = (torch.randn(q.shape, device=device), q.detach(), k.detach(), v.detach(), lse, 2, 0.25)
    torch.library.opcheck(
        namespace.temporal_attention_backward.default,
        args,
        test_utils=("test_schema", "test_faketensor"),
    )


def d64(t):
    return None if t is None else t.double()


# Spatial scale/shift forms of group_norm (SPADE): modulation shapes broadcastable to x.
SPATIAL_FORMS = ["spade", "spade_views", "full_transposed", "film_and_broadcast"]


def spatial_modulation(x: torch.Tensor, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A (scale, shift) pair for x in one of SPATIAL_FORMS, float32 on x's device:
    spade: ``[N, C, 1, H, W]`` (``[N, C, H, W]`` for 4-D x), contiguous; spade_views: the
    same as the two channel halves of one channels-last conv output (the decoder's
    SpadeNorm: non-contiguous views); full_transposed: x's full shape with H and W
    transposed in memory; film_and_broadcast: scale FiLM ``[N, C]``, shift ``[1, C, 1, 1, W]``
    (broadcast over N, T and H)."""
    n, c, *spatial = x.shape
    h, w = spatial[-2:]
    frame = (1, h, w) if x.dim() == 5 else (h, w)

    def rand(*size):
        return torch.randn(size, device=x.device)

    if form == "spade":
        return rand(n, c, *frame) * 0.5, rand(n, c, *frame)
    if form == "spade_views":
        both = rand(n, 2 * c, h, w).contiguous(memory_format=torch.channels_last)
        if x.dim() == 5:
            both = both.unsqueeze(2)
        scale, shift = both.chunk(2, dim=1)
        assert not scale.is_contiguous()
        return scale, shift
    if form == "full_transposed":
        scale, shift = (rand(n, c, *spatial[:-2], w, h).transpose(-1, -2) for _ in range(2))
        assert not scale.is_contiguous() or h == w == 1
        return scale, shift
    if form == "film_and_broadcast":
        return rand(n, c) * 0.5, rand(1, c, *(1,) * (x.dim() - 3), w)
    raise ValueError(form)
