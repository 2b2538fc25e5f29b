"""The CUDA kernels (csrc/cuda) run on the CPU through the host emulation
(emulated_cuda.py): group_norm and temporal_attention, forward and backward, and
sampler_step, called at their framework-free entry points with the buffers their torch
launchers would pass, against the float64 reference by ``parity.check``.

Every buffer sits in a heap block of exactly its size under the address sanitizer, every
output and workspace starts as NaN, every block's threads are real threads meeting at
real barriers: so an index past a buffer, an element left unwritten, a value read from
shared memory before it is written, a launch shape the hardware refuses or a wrong
workspace size fails here, on a machine without a GPU. Fresh random inputs each run;
odd sizes (C/G = 5, S = 35, 1-pixel frames, T = 7 and 17, head_dim 12 and 24); both
group_norm layouts; FiLM, spatial (SPADE) and no modulation; each storage dtype; rows
and position chunks split across blocks; q/k/v as channel views of one qkv tensor and
as unrelated strided tensors; attention tiles with a partial last one, and a position
that needs opted-in shared memory."""

from __future__ import annotations

import emulated_cuda
import parity
import pytest
import torch
from parity import check

from lddm_fast import ops

pytestmark = pytest.mark.skipif(
    emulated_cuda.unavailable() is not None,
    reason=f"no CUDA emulation here: {emulated_cuda.unavailable()}",
)

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    build = tmp_path_factory.mktemp("emulated_cuda")
    return emulated_cuda.Harness(emulated_cuda.build(build), tmp_path_factory.mktemp("calls"))


# (dtype, layout, (N, C, S, G), modulation, silu). S = 60 with C/G = 5 | 1-pixel frames
# | groups of 32,768 values: four slices a group (kNCS), four position chunks a sample
# (kNSC) | a spatial period of 7 under S = 35.
GN_CASES = [
    (F32, "ncs", (2, 40, 60, 8), "film", True),
    (F32, "nsc", (2, 40, 60, 8), "spatial", True),
    (BF16, "nsc", (2, 40, 60, 8), "film", False),
    (F16, "ncs", (2, 40, 60, 8), "spatial", True),
    (BF16, "ncs", (3, 6, 1, 3), "none", True),
    (F32, "ncs", (1, 4, 8192, 1), "film", True),
    (F16, "nsc", (1, 4, 8192, 2), "film", True),
    (BF16, "nsc", (2, 12, 35, 3), "spatial", False),
]


def case_id(case) -> str:
    dtype, layout, shape, mod, silu = case
    return f"{str(dtype)[6:]}-{layout}-{'x'.join(map(str, shape))}-{mod}-{'silu' if silu else 'id'}"


def spatial_period(S: int) -> int:
    return next(p for p in (20, 7, 1) if S % p == 0)


class GroupNormCase:
    """A case's random inputs, in the launcher's form (x and dy [N, C, S] dense in the
    layout, parameters float32) and in the reference's ([N, C, S, 1], parameters in
    x's dtype, a spatial modulation expanded to x's shape)."""

    def __init__(self, case):
        dtype, self.layout, (N, C, S, G), self.mod, self.silu = case
        self.dtype, self.N, self.C, self.S, self.G = dtype, N, C, S, G

        def rand(*size):
            return torch.randn(size).to(dtype)

        self.x, self.dy = rand(N, C, S, 1), rand(N, C, S, 1)
        self.weight, self.bias = rand(C), rand(C)
        self.scale = self.shift = None
        self.spatial = {}
        if self.mod == "film":
            self.scale, self.shift = rand(N, C) * 0.5, rand(N, C)
        elif self.mod == "spatial":
            P = spatial_period(S)
            one = [torch.randn(N, C, P).to(dtype) for _ in range(2)]
            one[0] *= 0.5
            # The reference's full [N, C, S, 1]; the kernel's one period in its layout.
            self.scale, self.shift = (t.repeat(1, 1, S // P).unsqueeze(-1) for t in one)
            self.spatial = {
                f"spatial_{name}": self.dense(t.float())
                for name, t in zip(("scale", "shift"), one, strict=True)
            }
            self.period = P

    def dense(self, t: torch.Tensor) -> torch.Tensor:
        """[N, C, S(, 1)] -> the layout's dense buffer ([N, S, C] for nsc)."""
        t = t.reshape(t.shape[0], t.shape[1], -1)
        return t.contiguous() if self.layout == "ncs" else t.transpose(1, 2).contiguous()

    def from_dense(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of dense, back to [N, C, S, 1]."""
        t = t if self.layout == "ncs" else t.transpose(1, 2)
        return t.reshape(self.N, self.C, self.S, 1)

    def args(self, op: str) -> dict:
        a = dict(op=op, dtype=str(self.dtype)[6:], layout=self.layout, N=self.N, C=self.C)
        a.update(S=self.S, G=self.G, eps=1e-5, silu=int(self.silu))
        if self.spatial:
            a["period"] = self.period
        return a

    def inputs(self) -> dict:
        film = self.mod == "film"
        return {
            "x": self.dense(self.x),
            "weight": self.weight.float(),
            "bias": self.bias.float(),
            "scale": self.scale.float() if film else None,
            "shift": self.shift.float() if film else None,
            **self.spatial,
        }

    def stats(self) -> torch.Tensor:
        """Each group's float64 mean and 1 / std (eps 1e-5): [N, G, 2], as group_norm
        writes them for the backward."""
        groups = self.x.double().reshape(self.N, self.G, -1)
        rstd = (groups.var(-1, unbiased=False) + 1e-5).rsqrt()
        return torch.stack([groups.mean(-1), rstd], dim=-1)

    def reference_args(self) -> list:
        return [self.x, self.weight, self.bias, self.scale, self.shift]

    def fn(self):
        return parity.group_norm_fn(self.G, "silu" if self.silu else None)


def check_group_norm_forward(harness, case):
    """y and the statistics the backward takes ([N, G, 2]: mean, 1 / std)."""
    c = GroupNormCase(case)
    out = harness(
        {**c.args("group_norm"), "with_y": 1, "with_stats": 1},
        c.inputs(),
        {"y": (c.dtype, c.dense(c.x).shape), "stats": (torch.float64, (c.N, c.G, 2))},
    )
    fn = c.fn()
    eager = fn(*c.reference_args(), backend="reference")
    ref = fn(*[parity.d64(t) for t in c.reference_args()], backend="reference")
    check(c.from_dense(out["y"]), eager, ref)

    stats = c.stats()
    # The mean within 1e-5 of the spread, as the cpp backend's (test_cpp_backward.py).
    spread = (1 / stats[..., 1]).max()
    torch.testing.assert_close(out["stats"][..., 0], stats[..., 0], rtol=0, atol=1e-5 * spread)
    torch.testing.assert_close(out["stats"][..., 1], stats[..., 1], rtol=1e-5, atol=0)


def check_group_norm_backward(harness, case):
    """dx, the weight and bias grads, the per-(n, c) sums a FiLM scale and shift take as
    their grads, and a spatial modulation's per-element grads, from the forward's
    float64 statistics."""
    c = GroupNormCase(case)
    stats = c.stats()
    N, C = c.N, c.C
    outputs = {
        "dx": (c.dtype, c.dense(c.x).shape),
        "grad_weight": (F32, (C,)),
        "grad_bias": (F32, (C,)),
        "grad_scale": (F32, (N, C)),
        "grad_shift": (F32, (N, C)),
    }
    if c.spatial:
        outputs["grad_spatial_scale"] = outputs["grad_spatial_shift"] = (F32, c.dense(c.x).shape)
    inputs = {**c.inputs(), "dy": c.dense(c.dy), "stats": stats}
    out = harness(c.args("group_norm_backward"), inputs, outputs)

    fn, args = c.fn(), c.reference_args()
    eager = parity.grads(fn, args, c.dy, "reference")
    ref = parity.grads(fn, [parity.d64(t) for t in args], c.dy.double(), "reference")
    # The launcher hands the float32 parameter grads back in each parameter's dtype.
    check(c.from_dense(out["dx"]), eager[0], ref[0])
    check(out["grad_weight"].to(c.dtype), eager[1], ref[1])
    check(out["grad_bias"].to(c.dtype), eager[2], ref[2])
    if c.mod == "film":
        check(out["grad_scale"].to(c.dtype), eager[3], ref[3])
        check(out["grad_shift"].to(c.dtype), eager[4], ref[4])
    if c.spatial:
        for name, e, r in (("scale", eager[3], ref[3]), ("shift", eager[4], ref[4])):
            check(c.from_dense(out[f"grad_spatial_{name}"]).to(c.dtype), e, r)
            # The FiLM-form sums over positions, which a FiLM partner of a spatial
            # modulation takes.
            sums = out[f"grad_{name}"].double()
            assert parity.rel(sums, r.sum(dim=(2, 3))) <= 2 * parity.LOWP_FLOOR[BF16]


# (T, heads, head_dim, (H, W), q/k/v format, dtype): 21 positions a forward tile (15 a
# backward one), the last one partial | T = 1 | 1-pixel frames | T = 17, C = 36 | T = 64
# x 128: 115,760 bytes of shared memory a position (165,456 for the backward), above
# the 48 KB a launch gets without opting in.
ATTENTION_CASES = [
    (7, 2, 24, (3, 5), "qkv_views_cl", F32),
    (7, 2, 24, (3, 5), "mixed", BF16),
    (1, 1, 16, (2, 2), "contiguous", F16),
    (16, 4, 8, (1, 1), "qkv_views", F32),
    (17, 3, 12, (2, 3), "transposed_hw", BF16),
    (64, 1, 128, (1, 1), "frames_cl", F32),
]


def strides_arg(t) -> str:
    return ",".join(map(str, t if isinstance(t, tuple) else t.stride()))


def output_strides(t: torch.Tensor) -> tuple:
    """The strides the launchers give an attention output or gradient of t's shape
    (csrc/layout.h: attention_output_format): channels_last_3d when t's channels are
    innermost, else contiguous."""
    cl = t.shape[1] > 1 and t.stride(1) == 1
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    return torch.empty(t.shape, device="meta").contiguous(memory_format=fmt).stride()


def attention_args(op, q, heads, scale) -> dict:
    B, C, T, H, W = q.shape
    args = dict(op=op, dtype=str(q.dtype)[6:], B=B, heads=heads, D=C // heads, T=T, H=H, W=W)
    return {**args, "scale": scale}


def attention_call(harness, q, k, v, heads, scale, env=None):
    """o in the launcher's layout, and the logsumexps [B, heads, T, H, W]."""
    B, C, T, H, W = q.shape
    so = output_strides(q)
    args = attention_args("temporal_attention", q, heads, scale)
    args.update(with_lse=1, sq=strides_arg(q), sk=strides_arg(k), sv=strides_arg(v))
    args["so"] = strides_arg(so)
    outputs = {"o": (q.dtype, (q.numel(),)), "lse": (F32, (B, heads, T, H, W))}
    out = harness(args, {"q": q, "k": k, "v": v}, outputs, env=env)
    return torch.as_strided(out["o"], q.shape, so), out["lse"]


def attention_backward_call(harness, go, q, k, v, lse, heads, scale, env=None):
    """dq, dk, dv, each in the launcher's layout for its input."""
    args = attention_args("temporal_attention_backward", q, heads, scale)
    for name, t in (("go", go), ("q", q), ("k", k), ("v", v)):
        args[f"s{name}"] = strides_arg(t)
    strides = {f"d{name}": output_strides(t) for name, t in (("q", q), ("k", k), ("v", v))}
    args.update({f"s{name}": strides_arg(st) for name, st in strides.items()})
    outputs = {name: (q.dtype, (q.numel(),)) for name in strides}
    out = harness(args, {"go": go, "q": q, "k": k, "v": v, "lse": lse}, outputs, env=env)
    return [torch.as_strided(out[name], q.shape, st) for name, st in strides.items()]


def check_temporal_attention(harness, T, heads, d, hw, fmt, dtype, frame_gain=0.0):
    """The output and logsumexps against float64, then dq, dk, dv from those logsumexps
    against float64 autograd, for an output gradient in yet another layout
    (channels-last). frame_gain: query frame t scaled by 1 + frame_gain * t, so the
    logits' range differs by frame (a row shifted by another row's logsumexp then
    overflows or vanishes)."""
    q, k, v = parity.attention_qkv(2 if T < 64 else 1, heads * d, T, hw, fmt, dtype)
    if frame_gain:
        gain = 1 + frame_gain * torch.arange(T, dtype=torch.float32)
        q = (q.float() * gain.view(1, 1, T, 1, 1)).to(dtype)
    scale = d**-0.5
    o, lse = attention_call(harness, q, k, v, heads, scale)

    fn = parity.attention_fn(heads, scale)
    ref64 = [parity.d64(t) for t in (q, k, v)]
    check(o, fn(q, k, v, backend="reference"), fn(*ref64, backend="reference"))
    parity.check_logsumexp(lse, q, k, heads, scale)

    go = torch.randn(q.shape).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    grads = attention_backward_call(harness, go, q, k, v, lse, heads, scale)
    eager = parity.grads(fn, [q, k, v], go, "reference")
    ref = parity.grads(fn, ref64, go.double(), "reference")
    for got, e, r in zip(grads, eager, ref, strict=True):
        check(got, e, r)


@pytest.mark.parametrize("case", GN_CASES, ids=case_id)
def test_group_norm_forward(harness, case):
    check_group_norm_forward(harness, case)


@pytest.mark.parametrize("case", GN_CASES, ids=case_id)
def test_group_norm_backward(harness, case):
    check_group_norm_backward(harness, case)


@pytest.mark.parametrize("T,heads,d,hw,fmt,dtype", ATTENTION_CASES, ids=str)
def test_temporal_attention(harness, T, heads, d, hw, fmt, dtype):
    check_temporal_attention(harness, T, heads, d, hw, fmt, dtype)


def test_temporal_attention_logits_of_every_range(harness):
    """Logits up to about +-400 in the last frame, +-3 in the first: each row of the
    backward must be shifted by its own logsumexp."""
    check_temporal_attention(harness, 7, 2, 24, (3, 5), "qkv_views", F32, frame_gain=20.0)


@pytest.mark.parametrize(
    "dtype,per_sample,noise",
    [(F32, 4 * 97, True), (BF16, 8 * 33, False), (F16, 7 * 5, True)],
    ids=str,
)
def test_sampler_step(harness, dtype, per_sample, noise):
    """a*x + b*eps (+ c*noise) per sample: 16-byte vectors where per_sample allows them
    (the first two cases), single values otherwise."""
    batch = 3
    x, eps, nz = (torch.randn(batch, per_sample).to(dtype) for _ in range(3))
    a, b, c = (torch.randn(batch) for _ in range(3))
    args = dict(op="sampler_step", dtype=str(dtype)[6:], batch=batch, per_sample=per_sample)
    inputs = {"x": x, "eps": eps, "a": a, "b": b, "noise": nz if noise else None}
    inputs["c"] = c if noise else None
    out = harness(args, inputs, {"out": (dtype, x.shape)})["out"]
    extra = (nz, c) if noise else (None, None)
    eager = ops.sampler_step(x, eps, a, b, *extra, backend="reference")
    ref = ops.sampler_step(
        x.double(), eps.double(), a.double(), b.double(), *map(parity.d64, extra),
        backend="reference",
    )  # fmt: skip
    check(out, eager, ref)


@pytest.fixture(scope="module")
def capped_harness(harness):
    """The harness with at most 3 blocks along x: each kernel's grid-stride loop takes
    several rows, tiles or elements a block (past kMaxGrid on a GPU)."""
    return emulated_cuda.Harness(harness.program, harness.work, env={"LDDM_EMU_GRID_X_CAP": "3"})


@pytest.mark.parametrize("case", [GN_CASES[0], GN_CASES[2], GN_CASES[7]], ids=case_id)
def test_group_norm_capped_grid(capped_harness, case):
    check_group_norm_forward(capped_harness, case)
    check_group_norm_backward(capped_harness, case)


def test_temporal_attention_capped_grid(capped_harness):
    check_temporal_attention(capped_harness, *ATTENTION_CASES[0])


@pytest.fixture(scope="module")
def race_harness(tmp_path_factory):
    """Under the thread sanitizer, grid capped as capped_harness's: a block's second
    item then reuses shared memory its first one read."""
    build = tmp_path_factory.mktemp("emulated_cuda_tsan")
    return emulated_cuda.Harness(
        emulated_cuda.build(build, "thread"),
        tmp_path_factory.mktemp("race_calls"),
        env={"LDDM_EMU_GRID_X_CAP": "3"},
    )


# Under the thread sanitizer (5-20x slower): both layouts' kernels of each op, one
# small case each (kNCS backward: 16 row blocks, not 80), two or more items (rows,
# groups, attention tiles) a block.
RACE_CASES = [
    ("forward", GN_CASES[1]),
    ("forward", (F32, "ncs", (2, 8, 60, 4), "spatial", True)),
    ("backward", GN_CASES[1]),
    ("backward", (BF16, "ncs", (2, 8, 35, 2), "film", True)),
    ("attention", (7, 2, 24, (6, 5), "qkv_views_cl", F32)),
    ("attention", (17, 3, 12, (4, 3), "transposed_hw", BF16)),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind,case", RACE_CASES, ids=str)
def test_no_data_races(race_harness, kind, case):
    """Every read of shared memory (and of a workspace between launches) ordered after
    its write: the thread sanitizer reports a race whatever the timing of this run."""
    if kind == "attention":
        check_temporal_attention(race_harness, *case)
    else:
        {"forward": check_group_norm_forward, "backward": check_group_norm_backward}[kind](
            race_harness, case
        )


def test_attention_refuses_a_position_above_the_shared_memory_limit(harness):
    """T = 64 x 128 on a GPU with 99 KB per block (sm_86/89/120): the entry point
    returns an error instead of launching (the dispatcher's cuda_limits refuses first)."""
    q, k, v = parity.attention_qkv(1, 128, 64, (1, 1), "contiguous", F32)
    with pytest.raises(emulated_cuda.EmulationError, match="invalid argument"):
        attention_call(harness, q, k, v, 1, 0.1, env={"LDDM_EMU_SMEM_OPTIN": str(99 * 1024)})


@pytest.mark.parametrize("backward", [False, True])
def test_smem_bytes_the_dispatcher_assumes(harness, backward):
    """extension.cuda_attention_smem_bytes is the kernels' own per-position size: with
    exactly that much shared memory on the device the call runs, with a byte less the
    entry point refuses it."""
    from lddm_fast.ops.extension import cuda_attention_smem_bytes

    q, k, v = parity.attention_qkv(1, 24, 7, (1, 1), "contiguous", F32)
    lse = torch.zeros(1, 1, 7, 1, 1)
    need = cuda_attention_smem_bytes(7, 24, backward=backward)

    def call(optin):
        env = {"LDDM_EMU_SMEM_OPTIN": str(optin)}
        if backward:
            return attention_backward_call(harness, q, q, k, v, lse, 1, 0.2, env=env)
        return attention_call(harness, q, k, v, 1, 0.2, env=env)

    assert torch.isfinite(call(need)[0]).all()
    with pytest.raises(emulated_cuda.EmulationError, match="invalid argument"):
        call(need - 1)
