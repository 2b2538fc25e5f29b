"""The ``kernels`` suite: group_norm (+FiLM+SiLU) and temporal_attention per backend,
against the eager PyTorch formulation users write, its torch.compile, and (for
attention) scaled_dot_product_attention with the permutes it needs."""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F

from harness import Case
from lddm_fast import ops
from lddm_fast.layout import attention_output_format
from lddm_fast.ops import dispatch
from shapes import GROUP_NORM, TEMPORAL_ATTENTION


def _eager_group_norm(x, w, b, scale, shift, groups):
    """What a diffusers-style block does today: three kernels and two temporaries."""
    y = F.group_norm(x, groups, w, b)
    y = y * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
    return F.silu(y)


def _to_sequences(t, heads):
    # [B, C, T, H, W] -> [B * heads * H * W, T, d], a full copy as diffusers does
    b, c, T, h, w = t.shape
    return (
        t.reshape(b, heads, c // heads, T, h, w)
        .permute(0, 1, 4, 5, 3, 2)
        .reshape(-1, T, c // heads)
    )


def _from_sequences(o, shape, heads):
    b, c, T, h, w = shape
    return o.reshape(b, heads, h, w, T, c // heads).permute(0, 1, 5, 4, 2, 3).reshape(shape)


def _eager_attention(q, k, v, heads):
    qs, ks, vs = (_to_sequences(t, heads) for t in (q, k, v))
    weights = torch.softmax(qs @ ks.transpose(1, 2) * qs.shape[-1] ** -0.5, dim=-1)
    return _from_sequences(weights @ vs, q.shape, heads)


def _sdpa_attention(q, k, v, heads):
    qs, ks, vs = (_to_sequences(t, heads) for t in (q, k, v))
    return _from_sequences(F.scaled_dot_product_attention(qs, ks, vs), q.shape, heads)


def _backend_providers(
    op: str, device: str, dtype: torch.dtype, fn_for, needs_grad: bool = False
) -> tuple[dict, dict]:
    """A provider per registered backend that can run ``op`` here (interpreted Triton
    is for tests, not timing; with ``needs_grad`` only backends with its backward);
    notes say why the others are absent."""
    providers, notes = {}, {}
    for name, backend in dispatch.backends().items():
        if name == "reference":
            continue
        why = backend.refusal(op, device, dtype, needs_grad=needs_grad)
        if why is None and "interpreter" in backend.status():
            why = "Triton interpreter: correctness only, not timed"
        if why is None:
            providers[name] = fn_for(name)
        else:
            notes[name] = why
    return providers, notes


def _compiled(fn, name: str, notes: dict, enabled: bool):
    if not enabled:
        notes[name] = "torch.compile disabled (--no-compile)"
        return None
    return torch.compile(fn, dynamic=False)


# Layouts timed for every shape: the model's (first, so a run stopped by a time limit
# keeps those rows) and the contiguous one most callers hold (a plain torch.randn, a
# diffusers video UNet), where a kernel can be several times slower. Attention takes q,
# k, v as channel slices of one qkv tensor or as three tensors, in either layout.
GN_LAYOUTS = {"channels_last_3d": torch.channels_last_3d, "contiguous": torch.contiguous_format}
ATTENTION_LAYOUTS = (
    "qkv views, channels_last_3d",
    "qkv views, contiguous",
    "channels_last_3d",
    "contiguous",
)


def _attention_inputs(
    s, layout: str, device: str, dtype: torch.dtype, requires_grad: bool = False
) -> tuple:
    """q, k, v of shape s in `layout` (one of ATTENTION_LAYOUTS); with requires_grad the
    leaves are the tensors the caller would hold (the qkv tensor for views)."""
    fmt = torch.channels_last_3d if layout.endswith("channels_last_3d") else torch.contiguous_format
    if layout.startswith("qkv views"):  # from a 1x1x1 conv: the model's layout
        qkv = torch.randn(s.b, 3 * s.c, s.t, s.h, s.w, device=device).to(dtype)
        return qkv.contiguous(memory_format=fmt).requires_grad_(requires_grad).chunk(3, dim=1)
    # three separate tensors, as a diffusers block has them
    return tuple(
        torch.randn(s.shape, device=device)
        .to(dtype)
        .contiguous(memory_format=fmt)
        .requires_grad_(requires_grad)
        for _ in range(3)
    )


def group_norm_cases(device: str, dtype: torch.dtype, quick: bool, compile_: bool) -> list[Case]:
    cases = []
    shapes = GROUP_NORM[device][: 1 if quick else None]
    for (layout, fmt), s in itertools.product(GN_LAYOUTS.items(), shapes):

        def make(s=s, fmt=fmt):
            x = torch.randn(s.shape, device=device).to(dtype).contiguous(memory_format=fmt)
            w = torch.randn(s.c, device=device).to(dtype)
            b = torch.randn(s.c, device=device).to(dtype)
            scale = (0.1 * torch.randn(s.n, s.c, device=device)).to(dtype)
            shift = (0.1 * torch.randn(s.n, s.c, device=device)).to(dtype)
            return x, w, b, scale, shift

        g = s.groups
        eager = functools.partial(_eager_group_norm, groups=g)
        providers = {"eager": eager}
        notes: dict[str, str] = {}
        compiled = _compiled(
            functools.partial(_eager_group_norm, groups=g), "compile", notes, compile_
        )
        if compiled is not None:
            providers["compile"] = compiled
        fast, fast_notes = _backend_providers(
            "group_norm",
            device,
            dtype,
            lambda name, g=g: (
                lambda x, w, b, sc, sh: ops.group_norm(
                    x, g, w, b, scale=sc, shift=sh, activation="silu", backend=name
                )
            ),
        )
        providers.update(fast)
        notes.update(fast_notes)

        def expected(x, w, b, sc, sh, g=g):
            return ops.group_norm(
                x.double(),
                g,
                w.double(),
                b.double(),
                scale=sc.double(),
                shift=sh.double(),
                activation="silu",
                backend="reference",
            )

        numel = s.n * s.c * s.t * s.h * s.w
        cases.append(
            Case(
                suite="kernels",
                op="group_norm",
                label=f"{s.label} {list(s.shape)} G={g} {layout}",
                dtype=dtype,
                params={"shape": list(s.shape), "groups": g, "layout": layout},
                make_inputs=make,
                providers=providers,
                expected=expected,
                bytes_moved=2 * numel * torch.finfo(dtype).bits // 8,
                notes=notes,
            )
        )
    return cases


def attention_cases(device: str, dtype: torch.dtype, quick: bool, compile_: bool) -> list[Case]:
    cases = []
    shapes = TEMPORAL_ATTENTION[device][: 1 if quick else None]
    for layout, s in itertools.product(ATTENTION_LAYOUTS, shapes):

        def make(s=s, layout=layout):
            return _attention_inputs(s, layout, device, dtype)

        heads = s.heads
        providers = {"eager": functools.partial(_eager_attention, heads=heads)}
        notes: dict[str, str] = {}
        compiled = _compiled(
            functools.partial(_eager_attention, heads=heads), "compile", notes, compile_
        )
        if compiled is not None:
            providers["compile"] = compiled
        providers["sdpa"] = functools.partial(_sdpa_attention, heads=heads)
        try:
            import xformers.ops as xops

            def _xformers(q, k, v, heads=heads):
                qs, ks, vs = (_to_sequences(t, heads).unsqueeze(2) for t in (q, k, v))
                o = xops.memory_efficient_attention(qs, ks, vs).squeeze(2)
                return _from_sequences(o, q.shape, heads)

            if device == "cuda":
                providers["xformers"] = _xformers
        except ImportError:
            notes["xformers"] = "xformers not installed"
        fast, fast_notes = _backend_providers(
            "temporal_attention",
            device,
            dtype,
            lambda name, h=heads: (
                lambda q, k, v: ops.temporal_attention(q, k, v, num_heads=h, backend=name)
            ),
        )
        providers.update(fast)
        notes.update(fast_notes)

        def expected(q, k, v, h=heads):
            return ops.temporal_attention(
                q.double(), k.double(), v.double(), num_heads=h, backend="reference"
            )

        numel = s.b * s.c * s.t * s.h * s.w
        d = s.c // heads
        cases.append(
            Case(
                suite="kernels",
                op="temporal_attention",
                label=f"{s.label} {list(s.shape)} heads={heads} {layout}",
                dtype=dtype,
                params={
                    "shape": list(s.shape),
                    "heads": heads,
                    "head_dim": d,
                    "layout": layout,
                },
                make_inputs=make,
                providers=providers,
                expected=expected,
                bytes_moved=4 * numel * torch.finfo(dtype).bits // 8,
                flops=4 * s.b * heads * s.h * s.w * s.t * s.t * d,
                notes=notes,
            )
        )
    return cases


def _forward_backward(fn):
    """A training call: fn(*inputs[:-1]) then the grads of every input for the output
    gradient inputs[-1], each in the layout autograd gives it (harness.parity compares
    them all)."""

    def run(*inputs):
        *args, grad_out = inputs
        return torch.autograd.grad(fn(*args), args, grad_out)

    return run


def _expected_grads(fn, inputs):
    """The float64 reference of _forward_backward(fn)."""
    leaves = [t.detach().double().requires_grad_() for t in inputs[:-1]]
    return _forward_backward(fn)(*leaves, inputs[-1].double())


def group_norm_training_cases(
    device: str, dtype: torch.dtype, quick: bool, compile_: bool
) -> list[Case]:
    """Forward + backward of GroupNorm+FiLM+SiLU (grads of x, weight, bias, scale and
    shift): eager autograd, its torch.compile, and each backend with a backward."""
    cases = []
    shapes = GROUP_NORM[device][: 1 if quick else None]
    for (layout, fmt), s in itertools.product(GN_LAYOUTS.items(), shapes):

        def make(s=s, fmt=fmt):
            x = torch.randn(s.shape, device=device).to(dtype).contiguous(memory_format=fmt)
            params = [torch.randn(s.c, device=device).to(dtype) for _ in range(2)]
            params += [(0.1 * torch.randn(s.n, s.c, device=device)).to(dtype) for _ in range(2)]
            dy = torch.randn(s.shape, device=device).to(dtype).contiguous(memory_format=fmt)
            return (*(t.requires_grad_() for t in (x, *params)), dy)

        g = s.groups
        eager = functools.partial(_eager_group_norm, groups=g)
        providers = {"eager": _forward_backward(eager)}
        notes: dict[str, str] = {}
        compiled = _compiled(
            functools.partial(_eager_group_norm, groups=g), "compile", notes, compile_
        )
        if compiled is not None:
            providers["compile"] = _forward_backward(compiled)

        def fused(name, g=g):
            return _forward_backward(
                lambda x, w, b, sc, sh: ops.group_norm(
                    x, g, w, b, scale=sc, shift=sh, activation="silu", backend=name
                )
            )

        fast, fast_notes = _backend_providers("group_norm", device, dtype, fused, needs_grad=True)
        providers.update(fast)
        notes.update(fast_notes)

        def expected(*inputs, g=g):
            return _expected_grads(
                lambda x, w, b, sc, sh: ops.group_norm(
                    x, g, w, b, scale=sc, shift=sh, activation="silu", backend="reference"
                ),
                inputs,
            )

        numel = s.n * s.c * s.t * s.h * s.w
        cases.append(
            Case(
                suite="kernels",
                op="group_norm fwd+bwd",
                label=f"{s.label} {list(s.shape)} G={g} {layout}",
                dtype=dtype,
                params={"shape": list(s.shape), "groups": g, "layout": layout},
                make_inputs=make,
                providers=providers,
                expected=expected,
                # forward: x read, y written; backward: x and dy read, dx written
                bytes_moved=5 * numel * torch.finfo(dtype).bits // 8,
                notes=notes,
            )
        )
    return cases


def attention_training_cases(
    device: str, dtype: torch.dtype, quick: bool, compile_: bool
) -> list[Case]:
    """Forward + backward of temporal attention (grads of q, k, v): eager autograd,
    its torch.compile, permutes + SDPA autograd, and each backend with a backward."""
    cases = []
    shapes = TEMPORAL_ATTENTION[device][: 1 if quick else None]
    for layout, s in itertools.product(ATTENTION_LAYOUTS, shapes):

        def make(s=s, layout=layout):
            q, k, v = _attention_inputs(s, layout, device, dtype, requires_grad=True)
            dy = torch.randn(s.shape, device=device).to(dtype)
            return q, k, v, dy.contiguous(memory_format=attention_output_format(q))

        heads = s.heads
        providers = {"eager": _forward_backward(functools.partial(_eager_attention, heads=heads))}
        notes: dict[str, str] = {}
        compiled = _compiled(
            functools.partial(_eager_attention, heads=heads), "compile", notes, compile_
        )
        if compiled is not None:
            providers["compile"] = _forward_backward(compiled)
        providers["sdpa"] = _forward_backward(functools.partial(_sdpa_attention, heads=heads))

        def fused(name, h=heads):
            return _forward_backward(
                lambda q, k, v: ops.temporal_attention(q, k, v, num_heads=h, backend=name)
            )

        fast, fast_notes = _backend_providers(
            "temporal_attention", device, dtype, fused, needs_grad=True
        )
        providers.update(fast)
        notes.update(fast_notes)

        def expected(*inputs, h=heads):
            return _expected_grads(
                lambda q, k, v: ops.temporal_attention(q, k, v, num_heads=h, backend="reference"),
                inputs,
            )

        numel = s.b * s.c * s.t * s.h * s.w
        d = s.c // heads
        cases.append(
            Case(
                suite="kernels",
                op="temporal_attention fwd+bwd",
                label=f"{s.label} {list(s.shape)} heads={heads} {layout}",
                dtype=dtype,
                params={"shape": list(s.shape), "heads": heads, "head_dim": d, "layout": layout},
                make_inputs=make,
                providers=providers,
                expected=expected,
                # forward: q, k, v read, o written; backward: q, k, v, do read, 3 grads written
                bytes_moved=11 * numel * torch.finfo(dtype).bits // 8,
                # forward 2 matmuls, backward 5 (recomputed logits, dP, dV, dQ, dK)
                flops=14 * s.b * heads * s.h * s.w * s.t * s.t * d,
                notes=notes,
            )
        )
    return cases


def cases(device: str, dtype: torch.dtype, quick: bool, compile_: bool = True) -> list[Case]:
    return (
        group_norm_cases(device, dtype, quick, compile_)
        + attention_cases(device, dtype, quick, compile_)
        + group_norm_training_cases(device, dtype, quick, compile_)
        + attention_training_cases(device, dtype, quick, compile_)
    )
