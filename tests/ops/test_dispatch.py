"""Backend selection: explicit choices serve or raise naming the backend and the
reason, never fall back silently; the default choice falls back; arguments are
validated with errors naming them."""

import os
import subprocess
import sys

import pytest
import torch

from lddm_fast import ops
from lddm_fast.ops import BackendError, dispatch

CPP_OK = ops.available_backends()["cpp"] == "ok"
needs_cpp = pytest.mark.skipif(not CPP_OK, reason=f"cpp backend: {ops.available_backends()['cpp']}")


def test_available_backends_lists_each_with_status():
    status = ops.available_backends()
    assert status["reference"] == "ok"
    assert {"reference", "cpp", "cuda"} <= set(status)
    for name, text in status.items():
        assert isinstance(text, str) and text, name
    if not torch.cuda.is_available():
        assert not status["cuda"].startswith("ok")


def _which(op="group_norm", x=None, **kw):
    """Name of the backend select() returns for x."""
    x = torch.randn(2, 8, 3, 4, 4) if x is None else x
    impl = dispatch.select(op, kw.get("backend"), x)
    return next(n for n, b in dispatch.backends().items() if b.ops.get(op) is impl)


@needs_cpp
def test_default_on_cpu_is_cpp_for_inference_and_training():
    # cpp has a backward for group_norm and temporal_attention; training takes the
    # group_norm one by default, and the attention one where the CPU kernels are a
    # vector build (the portable one measured slower than the reference's autograd).
    from lddm_fast import _C

    vector = _C.cpu_isa() != "default"
    assert _which() == "cpp"
    x = torch.randn(2, 8, 3, 4, 4, requires_grad=True)
    assert _which(x=x) == "cpp"
    assert _which("temporal_attention", x=x) == ("cpp" if vector else "reference")
    assert _which("temporal_attention", x=x, backend="cpp") == "cpp"
    with torch.no_grad():
        assert _which("temporal_attention", x=x) == "cpp"
    assert dispatch.default_choice("group_norm", "cpu", torch.float32, needs_grad=True) == "cpp"
    assert dispatch.default_choice("temporal_attention", "cpu", torch.bfloat16, True) == (
        "cpp" if vector else "reference"
    )


@needs_cpp
@pytest.mark.parametrize("isa", ["default", "widest"])
def test_attention_training_default_follows_the_cpu_kernel_build(isa):
    # Decided at import from the build the ops call: a fresh process per setting.
    env = {k: v for k, v in os.environ.items() if k != "LDDM_CPU_ISA"}
    if isa == "default":
        env["LDDM_CPU_ISA"] = "default"
    code = (
        "import torch; from lddm_fast import _C; from lddm_fast.ops import dispatch; "
        "print(_C.cpu_isa(), dispatch.default_choice('temporal_attention', 'cpu', "
        "torch.float32, True))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1] == ("reference" if out[0] == "default" else "cpp"), out
    if isa == "default":
        assert out == ["default", "reference"]


@needs_cpp
def test_grad_falls_back_to_reference_for_an_op_without_backward():
    # sampler_step has no backward on cpp: a call that needs grad takes the reference.
    x = torch.randn(2, 3, requires_grad=True)
    assert _which("sampler_step", x=x) == "reference"
    with torch.no_grad():
        assert _which("sampler_step", x=x) == "cpp"


def test_explicit_argument_wins(monkeypatch):
    monkeypatch.setenv("LDDM_BACKEND", "cpp")
    assert _which(backend="reference") == "reference"


def test_use_backend_context_and_env(monkeypatch):
    monkeypatch.delenv("LDDM_BACKEND", raising=False)
    with ops.use_backend("reference"):
        assert _which() == "reference"
    monkeypatch.setenv("LDDM_BACKEND", "reference")
    assert _which() == "reference"


@needs_cpp
@pytest.mark.parametrize("lookup", ["os.environ's dict of names", "os.environ.get only"])
def test_env_backend_is_read_at_every_call(monkeypatch, lookup):
    # Set, changed or unset while running, LDDM_BACKEND takes effect at the next call,
    # with the look-up in os.environ's dict (CPython) and without it.
    if lookup == "os.environ.get only":
        monkeypatch.setattr(dispatch, "_ENV_NAMES", None)
    monkeypatch.delenv("LDDM_BACKEND", raising=False)
    assert _which() == "cpp"
    monkeypatch.setenv("LDDM_BACKEND", " reference ")
    assert _which() == "reference"
    assert dispatch.requested_backend() == ("reference", "LDDM_BACKEND=reference")
    monkeypatch.delenv("LDDM_BACKEND")
    assert _which() == "cpp"
    assert dispatch.requested_backend() == (None, "default")


def test_unknown_backend_is_an_error(monkeypatch):
    with pytest.raises(BackendError, match="unknown backend 'nope'.*known backends"):
        ops.group_norm(torch.randn(2, 4, 3, 3), 2, backend="nope")
    with pytest.raises(BackendError, match="unknown backend"):
        with ops.use_backend("nope"):
            pass
    monkeypatch.setenv("LDDM_BACKEND", "nope")
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        ops.group_norm(torch.randn(2, 4, 3, 3), 2)


def test_unavailable_backend_names_backend_and_reason():
    if torch.cuda.is_available():
        pytest.skip("this check needs a machine where the cuda backend is unavailable")
    with pytest.raises(
        BackendError, match=r"backend 'cuda' \(from backend= argument\) cannot run .*cpu"
    ):
        ops.sampler_step(
            torch.randn(2, 3), torch.randn(2, 3), torch.ones(2), torch.ones(2), backend="cuda"
        )


@needs_cpp
def test_backend_refuses_wrong_device_dtype_and_grad():
    with pytest.raises(BackendError, match="'cpp'.*runs on cpu tensors, not meta"):
        ops.group_norm(torch.randn(2, 4, 3, 3, device="meta"), 2, backend="cpp")
    with pytest.raises(BackendError, match="'cpp'.*supports float32, bfloat16, not float16"):
        ops.group_norm(torch.randn(2, 4, 3, 3).half(), 2, backend="cpp")
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(BackendError, match="'cpp'.*no backward for sampler_step"):
        ops.sampler_step(x, x, torch.ones(2), torch.ones(2), backend="cpp")


@needs_cpp
def test_env_forced_backend_that_cannot_serve_raises(monkeypatch):
    monkeypatch.setenv("LDDM_BACKEND", "cpp")
    with pytest.raises(BackendError, match="LDDM_BACKEND=cpp"):
        ops.group_norm(torch.randn(2, 4, 3, 3).half(), 2)


def test_default_falls_back_to_reference_for_float16():
    y = ops.group_norm(torch.randn(2, 4, 3, 3).half(), 2)
    assert y.dtype == torch.float16


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: ops.group_norm(torch.randn(2, 6, 3, 3), 4),
            "num_groups=4 must be a positive divisor of C=6",
        ),
        (lambda: ops.group_norm(torch.randn(2, 6, 3), 3), "x must be 4-D"),
        (
            lambda: ops.group_norm(torch.randn(2, 6, 3, 3), 3, torch.ones(5)),
            r"weight must have shape \(6,\)",
        ),
        (
            lambda: ops.group_norm(torch.randn(2, 6, 3, 3), 3, scale=torch.ones(6)),
            r"scale must have shape \(2, 6\)",
        ),
        (
            lambda: ops.group_norm(torch.randn(2, 6, 3, 4, 5), 3, shift=torch.ones(2, 6, 1, 5, 4)),
            r"shift must have shape \(2, 6\) = \[N, C\] \(FiLM\) or x's 5 dims",
        ),
        (
            lambda: ops.group_norm(torch.randn(2, 6, 3, 3), 3, activation="relu"),
            "activation must be None or 'silu'",
        ),
        (
            lambda: ops.group_norm(torch.ones(2, 6, 3, 3, dtype=torch.int64), 3),
            "x must be a floating-point",
        ),
        (
            lambda: ops.group_norm(torch.randn(2, 6, 3, 3), 3, torch.ones(6, device="meta")),
            "weight is on meta",
        ),
        (
            lambda: ops.temporal_attention(*(torch.randn(1, 8, 3, 2, 2),) * 3, num_heads=3),
            "num_heads=3",
        ),
        (
            lambda: ops.temporal_attention(
                torch.randn(1, 8, 3, 2, 2),
                torch.randn(1, 8, 4, 2, 2),
                torch.randn(1, 8, 3, 2, 2),
                num_heads=2,
            ),
            "k has shape",
        ),
        (
            lambda: ops.temporal_attention(*(torch.randn(1, 8, 3, 2),) * 3, num_heads=2),
            "q must be 5-D",
        ),
        (
            lambda: ops.sampler_step(
                torch.randn(2, 3), torch.randn(2, 3), torch.ones(3), torch.ones(2)
            ),
            r"a must have shape \(2,\)",
        ),
        (
            lambda: ops.sampler_step(
                torch.randn(2, 3),
                torch.randn(2, 3),
                torch.ones(2),
                torch.ones(2),
                torch.randn(2, 3),
            ),
            "noise and c must be given together",
        ),
        (
            lambda: ops.sampler_step(
                torch.randn(2, 3), torch.randn(2, 3), torch.ones(2, device="meta"), torch.ones(2)
            ),
            "a is on meta",
        ),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_shape_limits_refuse_explicitly_and_fall_back_by_default():
    limited = dispatch.Backend(
        name="limited",
        ops={"temporal_attention": lambda q, k, v, **kw: q},
        devices=("cpu",),
        dtypes=(torch.float32,),
        status=lambda: "ok",
        limits=lambda op, main, params: "T too long" if main.shape[2] > 4 else None,
    )
    dispatch.register(limited, default_for={"cpu": 0})
    try:
        q = torch.randn(1, 4, 6, 1, 1)
        with pytest.raises(BackendError, match="'limited'.*T too long"):
            ops.temporal_attention(q, q, q, num_heads=2, backend="limited")
        y = ops.temporal_attention(q, q, q, num_heads=2)  # falls back past 'limited'
        torch.testing.assert_close(
            y, ops.temporal_attention(q, q, q, num_heads=2, backend="reference")
        )
        short = torch.randn(1, 4, 3, 1, 1)
        assert ops.temporal_attention(short, short, short, num_heads=2) is short
    finally:
        dispatch.unregister("limited")
    assert "limited" not in dispatch.default_order("cpu", "temporal_attention")


@pytest.mark.parametrize(
    ("optin", "frames", "head_dim", "refused"),
    [
        (99 * 1024, 64, 128, True),  # sm_86/89/120: 115,760 bytes do not fit
        (99 * 1024, 57, 128, False),
        (99 * 1024, 64, 109, False),
        (227 * 1024, 64, 128, False),  # sm_90
    ],
)
def test_cuda_attention_limit_follows_the_devices_shared_memory(
    monkeypatch, optin, frames, head_dim, refused
):
    """The CUDA attention's per-position shared memory is compared with the device's
    opt-in limit (stubbed here), not a fixed range that only some GPUs can hold."""
    from lddm_fast.ops import extension

    monkeypatch.setattr(extension, "device_smem_optin", lambda device: optin)
    q = torch.empty(1, 2 * head_dim, frames, 1, 1, device="meta")
    why = extension.cuda_limits("temporal_attention", q, {"num_heads": 2})
    if refused:
        need = extension.cuda_attention_smem_bytes(frames, head_dim)
        assert why == (
            f"T={frames} with head_dim={head_dim} needs {need} bytes of shared memory per "
            f"position, more than this GPU's {optin}"
        )
    else:
        assert why is None


def test_cuda_default_order_is_per_op_as_measured():
    """The H200 ranking in benchmarks/RESULTS.md: the CUDA group_norm, the Triton
    attention; each op still falls back to the other backend, then the reference."""
    assert dispatch.default_order("cuda", "group_norm") == ["cuda", "triton", "reference"]
    assert dispatch.default_order("cuda", "temporal_attention") == ["triton", "cuda", "reference"]
    assert dispatch.default_order("cuda", "sampler_step")[-1] == "reference"
    assert set(dispatch.default_order("cuda")) == {"cuda", "triton", "reference"}


def test_cuda_attention_limit_of_a_training_call_is_the_backwards(monkeypatch):
    """A call autograd records needs the backward's shared memory too: T = 48 x 128
    fits 99 KB for the forward (83,760 bytes) but not for the backward (117,968)."""
    from lddm_fast.ops import extension

    monkeypatch.setattr(extension, "device_smem_optin", lambda device: 99 * 1024)
    q = torch.empty(1, 256, 48, 1, 1, device="meta")
    assert extension.cuda_limits("temporal_attention", q, {"num_heads": 2}) is None
    why = extension.cuda_limits("temporal_attention", q.requires_grad_(), {"num_heads": 2})
    need = extension.cuda_attention_smem_bytes(48, 128, backward=True)
    assert why == (
        f"T=48 with head_dim=128 needs {need} bytes of shared memory per position for the "
        f"backward, more than this GPU's {99 * 1024}"
    )
    with torch.no_grad():
        assert extension.cuda_limits("temporal_attention", q, {"num_heads": 2}) is None


def test_group_norm_has_no_cuda_size_limit():
    """The CUDA group_norm takes every form of scale/shift (FiLM and spatial), so its
    limits never send a group_norm elsewhere."""
    from lddm_fast.ops import extension

    assert extension.cuda_limits("group_norm", torch.randn(2, 8, 3, 4, 4), {}) is None
