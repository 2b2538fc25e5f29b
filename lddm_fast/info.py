"""Print versions, the GPU (if any), every ops backend with its status, and which
backend each op would use by default on each device and dtype. With --preset, print
a model preset's parameter counts and the FLOPs of one denoiser forward instead."""

from __future__ import annotations

import argparse

HELP = "show versions, GPU and ops backends"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="describe a model preset (tiny, phantom64, busv128): parameters and FLOPs",
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="videos per denoiser forward for --preset FLOPs"
    )


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from lddm_fast import envinfo, ops

    if args.preset is not None:
        from lddm_fast.models import PRESETS
        from lddm_fast.models.summary import describe

        if args.preset not in PRESETS:
            print(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
            return 2
        print(describe(args.preset, args.batch))
        return 0
    env = envinfo.environment()
    backends = ops.available_backends()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    picks = {
        f"{op} {dev} {str(dt).removeprefix('torch.')}": ops.default_choice(op, dev, dt)
        for op in ("group_norm", "temporal_attention", "sampler_step")
        for dev in devices
        for dt in (torch.float32, torch.bfloat16)
    }
    if args.json:
        print(json.dumps({"environment": env, "backends": backends, "defaults": picks}, indent=2))
        return 0
    for key in (
        "lddm_fast",
        "python",
        "torch",
        "torch_cuda",
        "triton",
        "compiler",
        "platform",
        "cpu",
    ):
        print(f"{key:>12}: {env[key]}")
    print(f"{'threads':>12}: {env['torch_threads']} of {env['cpu_count']} CPUs")
    gpus = env["gpu"]
    if isinstance(gpus, str):
        print(f"{'gpu':>12}: {gpus}")
    else:
        for i, g in enumerate(gpus):
            extra = ", ".join(f"{k} {v}" for k, v in g.items() if k != "name" and v is not None)
            print(f"{'gpu ' + str(i):>12}: {g['name']} ({extra})")
    print("\nbackends:")
    for name, status in backends.items():
        print(f"  {name:<10} {status}")
    print("\ndefault backend per op (inference):")
    for key, name in picks.items():
        print(f"  {key:<32} {name}")
    return 0
