"""The ``diffusers`` suite: ``lddm_fast.accelerate`` on a diffusers video UNet with
random weights, at real shapes.

Models (``UNetSpatioTemporalConditionModel``, the UNet of Stable Video Diffusion):

- CUDA: SVD's own config (the class defaults, 1.5 B parameters) at the latent of a
  576x1024 video, ``[B, 14, 8, 72, 128]`` (SVD's 4 noise channels + 4 image-latent
  channels), batch 2 as SVD's pipeline runs it with classifier-free guidance;
- CPU: the same architecture at reduced widths on a smaller latent, for a 2-core
  machine; ``--quick`` smaller still.

Cases: one denoiser forward, and the sampling loop of SVD's default scheduler
(``EulerDiscreteScheduler``, v-prediction, Karras sigmas, EDM preconditioning)
written out as plain tensor code over the UNet, with fixed conditioning (image
latents, image embedding, added time ids) and no guidance.

Site cases (op ``site: ...``): every distinct call of a replaced module in one forward
(the GroupNorm(+SiLU) at each input shape and layout, the temporal self-attention at
each ``[N, T, C]``), the diffusers computation against the fused one on random inputs
of that shape and layout, with the number of such calls per forward; each side called
as the model calls it (diffusers' GroupNorm and SiLU modules against the one fused
module, each attention processor on the Attention module). They are the
data a per-shape fallback rule ("keep the original module where the kernel loses")
needs: where ``accelerated`` is slower than ``original`` at a site, that site costs
the model ``calls x (difference)`` per forward.

Model providers, on the same weights and inputs: ``original`` (diffusers' default
``AttnProcessor2_0``, SDPA; the baseline the speedups are relative to), ``compile``
(``torch.compile`` of it), ``accelerated`` (``lddm_fast.accelerate`` of a copy) and
``accelerated+compile``. Parity: against the original model run in float64 on CPU,
and in float32 on CUDA (a float64 SVD forward at 72x128 would materialise ~95 GB of
attention scores in the first level's spatial attention: SDPA has no fused float64
kernel); every provider must be within max(floor, 2x the original's error).
"""

from __future__ import annotations

import copy
import importlib.util
import math
from dataclasses import dataclass

import torch

from harness import Case

STEPS = 25
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 700.0, 7.0  # SVD's scheduler config (Karras sigmas)


@dataclass(frozen=True)
class UNetShape:
    """One model + latent configuration.

    config: keyword arguments of ``UNetSpatioTemporalConditionModel`` over its defaults.
    latent: ``(frames, height, width)`` of the noise latent.
    """

    label: str
    config: dict
    batch: int
    latent: tuple[int, int, int]
    steps: int = STEPS


# Reduced widths keep SVD's structure: four levels, 2 layers per block, head_dim 64
# (SVD's at every level), 32 groups per GroupNorm; 14 frames of a 128x128 video.
_CPU_CONFIG = {
    "block_out_channels": (64, 128, 256, 256),
    "num_attention_heads": (1, 2, 4, 4),
    "cross_attention_dim": 128,
    "addition_time_embed_dim": 32,
    "projection_class_embeddings_input_dim": 96,
}
# --quick: one layer per block, head_dim 32, 8 frames of 16x16, a 4-step loop (each
# loop provider runs at least 7 times, plus the reference), so the run takes minutes,
# not tens of minutes, on 2 cores.
_CPU_QUICK_CONFIG = {
    **_CPU_CONFIG,
    "block_out_channels": (32, 64, 64, 64),
    "num_attention_heads": (1, 2, 2, 2),
    "cross_attention_dim": 64,
    "layers_per_block": 1,
}

SHAPES: dict[str, list[UNetShape]] = {
    "cuda": [
        UNetShape("SVD UNet, 576x1024 video (72x128 latent), 14 frames", {}, 2, (14, 72, 128))
    ],
    "cpu": [UNetShape("reduced SVD UNet, 16x16 latent, 14 frames", _CPU_CONFIG, 1, (14, 16, 16))],
    "cpu-quick": [
        UNetShape(
            "reduced SVD UNet (1 layer/block), 16x16 latent, 8 frames",
            _CPU_QUICK_CONFIG,
            1,
            (8, 16, 16),
            steps=4,
        ),
    ],
}


def karras_sigmas(steps: int) -> torch.Tensor:
    """``[steps + 1]`` float64 noise levels from SIGMA_MAX down to SIGMA_MIN, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    sigmas = (hi + ramp * (lo - hi)) ** RHO
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def euler_loop(unet, noise, image_latents, image_embeds, time_ids, steps: int) -> torch.Tensor:
    """SVD's Euler sampling loop over ``unet`` (v-prediction, EDM preconditioning).

    noise, image_latents: ``[B, T, 4, h, w]``; image_embeds: ``[B, 1, D]``;
    time_ids: ``[B, 3]``. The latent is kept in float32 between steps (float64 for a
    float64 reference), as diffusers' scheduler does; the UNet runs in its own dtype.
    Returns the clean latent ``[B, T, 4, h, w]`` in that state dtype.
    """
    dtype = next(unet.parameters()).dtype
    state = torch.promote_types(noise.dtype, torch.float32)
    sigmas = karras_sigmas(steps).tolist()
    x = noise.to(state) * (sigmas[0] ** 2 + 1) ** 0.5  # the scheduler's init_noise_sigma
    for sigma, sigma_next in zip(sigmas, sigmas[1:], strict=False):
        c_in, c_skip = (sigma**2 + 1) ** -0.5, 1 / (sigma**2 + 1)
        c_out = -sigma * (sigma**2 + 1) ** -0.5
        model_in = torch.cat([x * c_in, image_latents.to(state)], dim=2).to(dtype)
        # The timestep in float32 or wider, as SVD's pipeline passes the scheduler's.
        c_noise = torch.tensor(0.25 * math.log(sigma), device=x.device, dtype=state)
        v = unet(model_in, c_noise, image_embeds, time_ids, return_dict=False)[0]
        denoised = v.to(state) * c_out + x * c_skip
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


def _forward(unet):
    def run(noise, image_latents, image_embeds, time_ids):
        with torch.no_grad():
            model_in = torch.cat([noise, image_latents], dim=2)
            state = torch.promote_types(noise.dtype, torch.float32)
            c_noise = torch.tensor(0.25 * math.log(SIGMA_MAX), device=noise.device, dtype=state)
            return unet(model_in, c_noise, image_embeds, time_ids, return_dict=False)[0]

    return run


def _loop(unet, steps: int):
    def run(noise, image_latents, image_embeds, time_ids):
        with torch.no_grad():
            return euler_loop(unet, noise, image_latents, image_embeds, time_ids, steps)

    return run


def _flops(unet, inputs) -> int:
    """Floating-point operations of one forward, counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _forward(unet)(*inputs)
    return counter.get_total_flops()


def _original_modules(norm, dtype: torch.dtype | None = None):
    """What diffusers computes where a FusedGroupNorm now runs, module by module as its
    model calls it (each call's Python overhead included, as the accelerated provider's
    module call includes its own): an ``nn.GroupNorm`` with the fused one's weights (in
    ``dtype`` if given), the scale-shift time embedding (ResnetBlock2D), an ``nn.SiLU``
    where one followed the norm. Returns a callable ``(x, scale, shift) -> y``; x:
    ``[N, C, *spatial]``, scale and shift ``[N, C]`` or None."""
    from lddm_fast.integrations.diffusers.modules import unfuse_group_norm

    plain = copy.deepcopy(norm).to(dtype=dtype)
    unfuse_group_norm(plain)
    silu = torch.nn.SiLU() if norm.lddm_activation == "silu" else None

    def run(x, scale, shift):
        y = plain(x)
        if scale is not None:
            view = (*scale.shape, *[1] * (x.dim() - 2))
            y = y * (1 + scale.view(view)) + shift.view(view)
        return y if silu is None else silu(y)

    return run


def _capture_sites(accelerated, run_forward) -> dict[tuple, dict]:
    """Run one forward of the accelerated model and record each distinct call of a
    replaced module: key (kind, size, stride, FiLM) -> {"module", "names", "calls"}."""
    from diffusers.models.attention_processor import Attention

    from lddm_fast.integrations.diffusers import TemporalAttnProcessor
    from lddm_fast.integrations.diffusers.modules import FusedGroupNorm

    sites: dict[tuple, dict] = {}

    def hook(name):
        def record(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if isinstance(module, FusedGroupNorm):
                kind = "GroupNorm+SiLU" if module.lddm_activation == "silu" else "GroupNorm"
                film = kwargs.get("scale") is not None
            elif kwargs.get("encoder_hidden_states") is None and x.dim() == 3:
                kind, film = "temporal attention", False
            else:  # a call the processor hands to its fallback: nothing replaced
                return
            site = sites.setdefault(
                (kind, tuple(x.shape), x.stride(), film), {"module": module, "names": []}
            )
            site["names"].append(name)

        return record

    handles = [
        m.register_forward_pre_hook(hook(name), with_kwargs=True)
        for name, m in accelerated.named_modules()
        if isinstance(m, FusedGroupNorm)
        or (isinstance(m, Attention) and isinstance(m.processor, TemporalAttnProcessor))
    ]
    try:
        run_forward()
    finally:
        for h in handles:
            h.remove()
    return sites


def _site_cases(sites: dict[tuple, dict], device: str, dtype: torch.dtype, params: dict):
    """One Case per captured site: ``original`` (diffusers' modules) vs ``accelerated``."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    out = []
    for (kind, size, stride, film), site in sites.items():
        module, names = site["module"], site["names"]
        dense = torch.empty_strided(size, stride, device="meta")
        layout = "" if dense.is_contiguous() else ", strided view"

        def make(size=size, stride=stride, film=film):
            gen = torch.Generator(device="cpu").manual_seed(0)
            x = torch.empty_strided(size, stride, dtype=dtype, device=device)
            x.copy_(torch.randn(size, generator=gen))
            if not film:
                return (x, None, None)
            scale, shift = 0.1 * torch.randn(2, *size[:2], generator=gen)
            return (x, scale.to(device, dtype), shift.to(device, dtype))

        if kind == "temporal attention":
            attn64 = copy.deepcopy(module).to(torch.float64)
            providers = {
                "original": lambda x, *_, m=module: m.processor.fallback(m, x),
                "accelerated": lambda x, *_, m=module: m.processor(m, x),
            }

            def expected(x, *_, attn64=attn64):
                return AttnProcessor2_0()(attn64, x.double())

            bytes_moved = 0
            label = f"{kind} [N, T, C] = {list(size)}, {module.heads} heads"
        else:
            reference = _original_modules(module, torch.float64)
            providers = {
                "original": _original_modules(module),
                # As the blocks call it: keyword arguments only with a scale-shift.
                "accelerated": lambda x, sc, sh, m=module: (
                    m(x) if sc is None else m(x, scale=sc, shift=sh)
                ),
            }

            def expected(x, sc, sh, reference=reference):
                sc, sh = (None, None) if sc is None else (sc.double(), sh.double())
                return reference(x.double(), sc, sh)

            bytes_moved = 2 * dense.numel() * torch.empty((), dtype=dtype).element_size()
            film_label = " + scale-shift" if film else ""
            label = f"{kind}{film_label} {list(size)}{layout}"
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
        out.append(
            Case(
                suite="diffusers",
                op=f"site: {kind}",
                label=f"{label}, x{len(names)} per forward",
                dtype=dtype,
                params={**params, "calls_per_forward": len(names), "modules": names[0] + more},
                make_inputs=make,
                providers={k: _no_grad(fn) for k, fn in providers.items()},
                expected=_no_grad(expected),
                bytes_moved=bytes_moved,
                # Calls of 0.02-0.2 ms whose difference is often 1%: a slow spell of the
                # machine during one provider's block would decide the row.
                interleave=True,
            )
        )
    return out


def _no_grad(fn):
    def run(*args):
        with torch.no_grad():
            return fn(*args)

    return run


def _runner(unet, steps: int | None):
    """The forward (steps None) or the sampling loop over ``unet``."""
    return _forward(unet) if steps is None else _loop(unet, steps)


def _random_unet(config: dict):
    """SVD's UNet with ``config`` over its defaults, seeded, every weight random."""
    from diffusers import UNetSpatioTemporalConditionModel

    from lddm_fast.models.layers import draw_zero_parameters

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(**config).eval()
    # diffusers zero-initialises some output projections, which would hide their
    # branches from the parity check.
    return draw_zero_parameters(unet)


def _shape_cases(shape: UNetShape, device, dtype, quick, compile_) -> list[Case]:
    import lddm_fast

    ref_dtype = torch.float64 if device == "cpu" else torch.float32
    base = _random_unet(shape.config)
    original = copy.deepcopy(base).to(device=device, dtype=dtype)
    accelerated = lddm_fast.accelerate(copy.deepcopy(base).to(device=device, dtype=dtype))
    reference = base.to(device=device, dtype=ref_dtype)
    report = accelerated.lddm_fast_acceleration
    cfg, (frames, h, w) = base.config, shape.latent

    def make():
        gen = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(shape.batch, frames, 4, h, w, generator=gen)
        image_latents = torch.randn(shape.batch, frames, cfg.in_channels - 4, h, w, generator=gen)
        image_embeds = torch.randn(shape.batch, 1, cfg.cross_attention_dim, generator=gen)
        # fps - 1, motion bucket id, noise augmentation strength: SVD's defaults.
        time_ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(shape.batch, 1)
        inputs = (noise, image_latents, image_embeds, time_ids)
        return tuple(t.to(device=device, dtype=dtype) for t in inputs)

    notes: dict[str, str] = {}
    models = {"original": original}
    if not compile_:
        notes["compile"] = notes["accelerated+compile"] = "torch.compile disabled (--no-compile)"
    elif quick and device == "cpu":
        why = "--quick on CPU: Inductor takes minutes to compile the UNet on a 2-core machine"
        notes["compile"] = notes["accelerated+compile"] = why
    else:
        models["compile"] = torch.compile(original)
    models["accelerated"] = accelerated
    if "compile" in models:
        models["accelerated+compile"] = torch.compile(accelerated)

    params = {
        "model": "UNetSpatioTemporalConditionModel",
        "config": shape.config or "SVD defaults",
        "batch": shape.batch,
        "latent": [shape.batch, frames, cfg.in_channels, h, w],
        "modules_replaced": len(report.replaced),
        "modules_left": len(report.skipped),
        "reference_dtype": str(ref_dtype).removeprefix("torch."),
    }
    flops = _flops(original, make())
    out = []
    for steps in (None, shape.steps):
        run_reference = _runner(reference, steps)

        def expected(*inputs, run_reference=run_reference):
            return run_reference(*(t.to(ref_dtype) for t in inputs))

        loop = {"steps": steps, "sampler": "euler"} if steps else {}
        out.append(
            Case(
                suite="diffusers",
                op="diffusers sampling loop" if steps else "diffusers UNet forward",
                label=f"{shape.label}, Euler {steps} steps" if steps else shape.label,
                dtype=dtype,
                params={**params, **loop},
                make_inputs=make,
                providers={name: _runner(m, steps) for name, m in models.items()},
                expected=expected,
                bytes_moved=0,
                flops=flops * (steps or 1),
                notes=dict(notes),
                items=shape.batch if steps else 0,
                interleave=True,  # a forward of 0.1-0.3 s, a loop of seconds
            )
        )
    sites = _capture_sites(accelerated, lambda: _forward(accelerated)(*make()))
    return out + _site_cases(sites, device, dtype, {"model_case": shape.label})


def summarize(rows: list[dict]) -> list[str]:
    """What the site rows say about the model rows, per model case (Amdahl): the time the
    replaced calls take in the original forward (sum of calls x the site's original
    median), the speedup the forward could reach if they cost nothing, the one the
    accelerated site times predict, and the one measured (and its per-round median
    where the providers were timed in rounds). Nothing for a case whose forward or site
    rows were not run (``--filter``)."""

    def find(case, provider):
        keys = ("diffusers UNet forward", case, provider)
        match = (r for r in rows if (r["op"], r["case"], r["provider"]) == keys)
        return next((r for r in match if "median_ms" in r), None)

    lines = []
    for case in dict.fromkeys(r["case"] for r in rows if r["op"] == "diffusers UNet forward"):
        original, accelerated = find(case, "original"), find(case, "accelerated")
        sites = [r for r in rows if r.get("model_case") == case and "median_ms" in r]
        if original is None or not sites:
            continue
        total = original["median_ms"]
        spent = {
            provider: sum(
                r["calls_per_forward"] * r["median_ms"] for r in sites if r["provider"] == provider
            )
            for provider in ("original", "accelerated")
        }
        rest = total - spent["original"]
        measured = "accelerated forward not run"
        if accelerated:
            measured = f"{accelerated['speedup']:.2f}x measured"
            if "paired_speedup" in accelerated:
                measured += f" ({accelerated['paired_speedup']:.2f}x paired by round)"
        lines.append(
            f"{case}: the replaced calls take {spent['original']:.1f} ms of the original "
            f"forward's {total:.1f} ms ({spent['original'] / total:.1%}); at most "
            f"{total / rest:.2f}x if they cost nothing, "
            f"{total / (rest + spent['accelerated']):.2f}x from the accelerated site times, "
            f"{measured}"
        )
    return lines


def cases(device: str, dtype: torch.dtype, quick: bool, compile_: bool = True) -> list[Case]:
    if importlib.util.find_spec("diffusers") is None:
        print("[diffusers] skipped: diffusers is not installed (pip install lddm_fast[diffusers])")
        return []
    shapes = SHAPES["cpu-quick" if quick and device == "cpu" else device]
    return [
        case
        for shape in shapes[: 1 if quick else None]
        for case in _shape_cases(shape, device, dtype, quick, compile_)
    ]
