"""The ``sampler`` suite: the whole sampling loop (n denoiser forwards and n fused
updates, from the initial noise to the clean latent) per preset and batch.

Providers, on the same inputs and weights:

- ``eager``: the eager loop with every op on the ``reference`` backend (the baseline
  the speedups are relative to);
- ``compile``: ``torch.compile(mode="reduce-overhead")`` of that reference loop;
- ``default``: the eager loop with the default dispatch (the fastest backends);
- ``graph``: the default dispatch replayed as one CUDA graph per loop (CUDA only).

A row's ``median_ms`` is one whole loop; with the case's ``batch`` and ``steps`` params,
videos/s = ``batch * 1000 / median_ms`` and per-step time = ``median_ms / steps``
(``first_call_s`` holds compilation or warm-up + capture). The x0 encoding before the
loop and the decode after it are not timed. Parity is against the same loop run in
float64 with the reference backend.
"""

from __future__ import annotations

import torch

from harness import Case
from lddm_fast import ops
from lddm_fast.diffusion import LDDMPipeline
from lddm_fast.models.summary import denoiser_flops
from shapes import SAMPLER_LOOPS

# A 2-core CPU runs a phantom64 step in ~70 ms per video; 4 steps keep a quick run
# near a minute. 25 steps is the pipeline default.
STEPS = {"cpu": 4, "cuda": 25}
SAMPLER = "ddim"
LOOP_OPS = ("group_norm", "temporal_attention", "sampler_step")


def _loop(pipe: LDDMPipeline, backend: str | None, cuda_graph: bool, steps: int):
    def run(latents, cond, x0):
        with ops.use_backend(backend):
            return pipe.denoise(latents, cond, steps=steps, sampler=SAMPLER, cuda_graph=cuda_graph)

    return run


def cases(device: str, dtype: torch.dtype, quick: bool, compile_: bool = True) -> list[Case]:
    out = []
    steps = STEPS[device]
    for name, batch in SAMPLER_LOOPS[device][: 1 if quick else None]:
        pipe = LDDMPipeline.from_preset(name, seed=0, device=device, dtype=dtype)
        # Same seed, same weights (drawn in float32, then cast).
        pipe64 = LDDMPipeline.from_preset(name, seed=0, device=device, dtype=torch.float64)
        config = pipe.config

        def make(pipe=pipe, config=config, batch=batch):
            gen = torch.Generator(device=device).manual_seed(0)
            x0 = torch.rand(batch, config.channels, config.size, config.size, generator=gen,
                            device=device) * 2 - 1  # fmt: skip
            latents = torch.randn(batch, *config.latent_shape, generator=gen, device=device)
            latents = latents.contiguous(memory_format=torch.channels_last_3d)
            with torch.no_grad():
                cond = pipe.models.denoiser.encode_condition(x0.to(dtype))
            return latents, cond, x0

        def expected(latents, cond, x0, pipe64=pipe64):
            with torch.no_grad(), ops.use_backend("reference"):
                cond64 = pipe64.models.denoiser.encode_condition(x0.double())
                return pipe64.denoise(
                    latents.double(), cond64, steps=steps, sampler=SAMPLER, cuda_graph=False
                )

        providers = {"eager": _loop(pipe, "reference", False, steps)}
        notes: dict[str, str] = {}
        if compile_:
            providers["compile"] = torch.compile(
                _loop(pipe, "reference", False, steps), mode="reduce-overhead"
            )
        else:
            notes["compile"] = "torch.compile disabled (--no-compile)"
        providers["default"] = _loop(pipe, None, False, steps)
        if device == "cuda":
            providers["graph"] = _loop(pipe, None, True, steps)
        else:
            notes["graph"] = "CUDA graphs need a CUDA device"

        picks = {op: ops.default_choice(op, device, dtype) for op in LOOP_OPS}
        out.append(
            Case(
                suite="sampler",
                op="sampling loop",
                label=f"{name} batch {batch}, {SAMPLER} {steps} steps",
                dtype=dtype,
                params={
                    "preset": name,
                    "batch": batch,
                    "steps": steps,
                    "sampler": SAMPLER,
                    "default_backends": picks,
                },
                make_inputs=make,
                providers=providers,
                expected=expected,
                bytes_moved=0,
                flops=steps * denoiser_flops(name, batch)[0],
                notes=notes,
                items=batch,
            )
        )
    return out
