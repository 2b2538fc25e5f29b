"""The lddm:: custom ops as torch sees them: schemas and fake implementations pass
torch.library.opcheck, and torch.compile(fullgraph=True) traces a module using them."""

import pytest
import torch

from lddm_fast import ops

pytestmark = pytest.mark.skipif(
    ops.available_backends()["cpp"] != "ok",
    reason=f"cpp backend unavailable: {ops.available_backends()['cpp']}",
)

# Inference ops (and the backward ops themselves): opcheck's autograd checks do not apply.
OPCHECK_TESTS = ("test_schema", "test_faketensor")


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
def test_group_norm_opcheck(fmt):
    x = torch.randn(2, 8, 3, 4, 4).contiguous(memory_format=fmt)
    args = (x, 4, torch.randn(8), torch.randn(8), 1e-5, torch.randn(2, 8), torch.randn(2, 8), True)
    torch.library.opcheck(torch.ops.lddm.group_norm.default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
def test_group_norm_spatial_opcheck(fmt):
    x = torch.randn(2, 8, 3, 4, 4).contiguous(memory_format=fmt)
    scale, shift = torch.randn(2, 16, 1, 4, 4).chunk(2, dim=1)  # SPADE: views of one conv
    args = (x, 4, torch.randn(8), None, 1e-5, scale, shift, True)
    torch.library.opcheck(torch.ops.lddm.group_norm.default, args, test_utils=OPCHECK_TESTS)


def test_temporal_attention_opcheck():
    qkv = torch.randn(2, 24, 5, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    q, k, v = qkv.chunk(3, dim=1)
    torch.library.opcheck(
        torch.ops.lddm.temporal_attention.default, (q, k, v, 2, 0.25), test_utils=OPCHECK_TESTS
    )


def _needs_grad(*ts):
    return tuple(t.detach().clone().requires_grad_() for t in ts)


# Ops with a backward: every opcheck test, the autograd ones included
# (test_autograd_registration, test_aot_dispatch_dynamic), on inputs that need grad.
@pytest.mark.parametrize("op", ["group_norm", "group_norm_stats"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("form", ["film", "spatial", "x_only"])
def test_group_norm_autograd_opcheck(op, fmt, form):
    x = torch.randn(2, 8, 3, 4, 4).contiguous(memory_format=fmt)
    w, b = torch.randn(8), torch.randn(8)
    if form == "x_only":
        (x,) = _needs_grad(x)
        args = (x, 4, w, None, 1e-5, None, None, False)
    else:
        mod = (2, 8) if form == "film" else (2, 8, 1, 4, 4)
        x, w, b, scale, shift = _needs_grad(x, w, b, torch.randn(mod), torch.randn(mod))
        args = (x, 4, w, b, 1e-5, scale, shift, True)
    torch.library.opcheck(getattr(torch.ops.lddm, op).default, args)


@pytest.mark.parametrize("saved", [False, True])
def test_group_norm_backward_opcheck(saved):
    x = torch.randn(2, 8, 3, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    scale = torch.randn(2, 8, 1, 4, 4)
    args = (x, 4, torch.randn(8), None, 1e-5, scale, None, True)
    stats = torch.ops.lddm.group_norm_stats(*args)[1] if saved else None
    torch.library.opcheck(
        torch.ops.lddm.group_norm_backward.default,
        (torch.randn_like(x), *args, stats),
        test_utils=OPCHECK_TESTS,
    )


@pytest.mark.parametrize("layout", ["qkv_views_cl", "contiguous"])
def test_temporal_attention_lse_autograd_opcheck(layout):
    if layout == "contiguous":
        q, k, v = _needs_grad(*(torch.randn(2, 8, 5, 3, 3) for _ in range(3)))
    else:
        qkv = torch.randn(2, 24, 5, 3, 3).contiguous(memory_format=torch.channels_last_3d)
        q, k, v = _needs_grad(qkv)[0].chunk(3, dim=1)
    torch.library.opcheck(torch.ops.lddm.temporal_attention_lse.default, (q, k, v, 2, 0.25))


def test_temporal_attention_backward_opcheck():
    qkv = torch.randn(2, 24, 5, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    q, k, v = qkv.chunk(3, dim=1)
    _, lse = torch.ops.lddm.temporal_attention_lse(q, k, v, 2, 0.25)
    args = (torch.randn(2, 8, 5, 3, 3), q, k, v, lse, 2, 0.25)
    torch.library.opcheck(
        torch.ops.lddm.temporal_attention_backward.default, args, test_utils=OPCHECK_TESTS
    )


def test_sampler_step_opcheck():
    x = torch.randn(3, 4, 5)
    args = (
        x,
        torch.randn_like(x),
        torch.rand(3),
        torch.rand(3),
        torch.randn_like(x),
        torch.rand(3),
    )
    torch.library.opcheck(torch.ops.lddm.sampler_step.default, args, test_utils=OPCHECK_TESTS)


def _attention_inputs():
    qkv = torch.randn(2, 24, 5, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    return _needs_grad(qkv)[0].chunk(3, dim=1)


def test_training_calls_record_cpp_backward_nodes():
    # The backward formulas are C++ (csrc/autograd.cpp): a training call runs no Python
    # autograd wrapper, which cost a third of a small GroupNorm's forward + backward.
    (x,) = _needs_grad(torch.randn(2, 8, 3, 4, 4))
    y = ops.group_norm(x, 4, activation="silu", backend="cpp")
    assert "CppNode<lddm::" in y.grad_fn.name() and "GroupNormFunction" in y.grad_fn.name()
    q, k, v = _attention_inputs()
    out = ops.temporal_attention(q, k, v, num_heads=2, backend="cpp")
    assert "TemporalAttentionFunction" in out.grad_fn.name()


def test_backward_through_an_op_without_derivative_raises():
    # Double backward, and backward through an inference-only op: an error that names the
    # op, not autograd's default (a warning and a silently missing gradient).
    (x,) = _needs_grad(torch.randn(2, 8, 3, 4, 4))
    y = ops.group_norm(x, 4, activation="silu", backend="cpp")
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="lddm::group_norm_backward"):
        gx.sum().backward()
    q, k, v = _attention_inputs()
    out = torch.ops.lddm.temporal_attention(q, k, v, 2, 0.25)
    with pytest.raises(RuntimeError, match="lddm::temporal_attention"):
        out.sum().backward()


class Block(torch.nn.Module):
    """GroupNorm+FiLM+SiLU -> qkv -> temporal attention -> residual, as in the denoiser."""

    def __init__(self, backend, c=16, heads=2):
        super().__init__()
        self.backend, self.heads = backend, heads
        self.qkv = torch.nn.Conv3d(c, 3 * c, 1)
        self.proj = torch.nn.Conv3d(c, c, 1)

    def forward(self, x, scale, shift):
        h = ops.group_norm(x, 4, scale=scale, shift=shift, activation="silu", backend=self.backend)
        q, k, v = self.qkv(h).chunk(3, dim=1)
        attn = ops.temporal_attention(q, k, v, num_heads=self.heads, backend=self.backend)
        return x + self.proj(attn)


CUDA_STATUS = ops.available_backends()["cuda"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "device,backend",
    [
        ("cpu", "cpp"),
        ("cpu", None),  # the default choice, made while tracing
        # The dispatch (argument checks, the CUDA size limits) is traced too.
        pytest.param(
            "cuda",
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(CUDA_STATUS != "ok", reason=f"cuda backend: {CUDA_STATUS}"),
            ],
        ),
    ],
)
def test_compile_fullgraph_matches_eager(device, backend):
    torch._dynamo.reset()
    block = Block(backend).eval().to(device)
    x = torch.randn(2, 16, 5, 4, 4, device=device).contiguous(memory_format=torch.channels_last_3d)
    scale, shift = torch.randn(2, 16, device=device), torch.randn(2, 16, device=device)
    with torch.no_grad():
        eager = block(x, scale, shift)
        compiled = torch.compile(block, fullgraph=True)(x, scale, shift)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_default_dispatch_follows_use_backend():
    """A graph traced with the default choice is guarded on use_backend(): called inside
    a block it is traced again (there, with a graph break at the ContextVar read)."""
    import torch._dynamo.testing

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    block = Block(None).eval()
    x = torch.randn(2, 16, 5, 4, 4)
    scale, shift = torch.randn(2, 16), torch.randn(2, 16)
    compiled = torch.compile(block, backend=counter)
    with torch.no_grad():
        compiled(x, scale, shift)
        assert counter.frame_count == 1
        with ops.use_backend("reference"):
            inside = compiled(x, scale, shift)
            expected = block(x, scale, shift)
        assert counter.frame_count > 1
    torch.testing.assert_close(inside, expected, rtol=1e-5, atol=1e-5)


TRITON_STATUS = ops.available_backends()["triton"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        "cpp",
        # lddm_triton:: custom ops, on CPU through the interpreter (TRITON_INTERPRET=1).
        pytest.param(
            "triton",
            marks=pytest.mark.skipif(
                TRITON_STATUS != "ok (interpreter)", reason=f"triton on CPU: {TRITON_STATUS}"
            ),
        ),
    ],
)
def test_compile_fullgraph_backward_matches_eager(backend):
    """A training step through torch.compile(fullgraph=True): the backend's forward and
    backward ops are traced (fake kernels, registered autograd) and give eager's
    gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = Block(backend).train()
    x = torch.randn(2, 16, 5, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    scale, shift = torch.randn(2, 16), torch.randn(2, 16)

    def step(fn):
        block.zero_grad(set_to_none=True)
        inputs = _needs_grad(x, scale, shift)
        fn(*inputs).square().mean().backward()
        return [t.grad for t in inputs] + [p.grad.clone() for p in block.parameters()]

    eager = step(block)
    compiled = step(torch.compile(block, fullgraph=True))
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
