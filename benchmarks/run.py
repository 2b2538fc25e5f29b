"""Performance and parity suites of lddm_fast.

    python benchmarks/run.py --suite kernels --device cpu --quick
    python benchmarks/run.py --suite all --device cuda --dtype bfloat16 --out results.json

Every case times each fast backend against its baselines in the same run (eager
PyTorch, torch.compile of it, SDPA / xformers for attention), reports the median and
p10/p90, achieved GB/s and % of the roofline measured in the same run (copy
bandwidth, matmul throughput), and max-abs / max-rel error against a float64
result. Exit status: 0 when every fast provider passes parity, 1 when one fails,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402
from lddm_fast import envinfo  # noqa: E402
from suites import diffusers_unet, kernels, model, sampler, synthesis, train  # noqa: E402

# suite name -> cases(device, dtype, quick, compile_) -> list[Case]
SUITES = {
    "kernels": kernels.cases,
    "model": model.cases,
    "sampler": sampler.cases,
    "synthesis": synthesis.cases,
    "diffusers": diffusers_unet.cases,
    "train": train.cases,
}
# suite name -> summarize(rows) -> lines derived from several cases of one run
SUMMARIES = {"diffusers": diffusers_unet.summarize}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--suite",
        default="all",
        choices=[*SUITES, "all"],
        help="which suite to run (default: all that exist)",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        choices=["cpu", "cuda"],
        help="device to benchmark on (default: cuda if present)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=list(DTYPES),
        help="input dtype (default: float32 on CPU, bfloat16 on CUDA)",
    )
    p.add_argument("--quick", action="store_true", help="first shape of each table, short timing")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--filter", default="", help="only cases whose op or label contains this text")
    p.add_argument("--out", type=Path, help="also write all results as JSON to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device here", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("bfloat16" if args.device == "cuda" else "float32")]
    env = envinfo.environment()
    gpu = env["gpu"] if isinstance(env["gpu"], str) else env["gpu"][0]["name"]
    print(
        f"lddm_fast {env['lddm_fast']} | torch {env['torch']} | {env['cpu']} x{env['cpu_count']} "
        f"(cpp kernels: {env['cpu_kernels']}) | gpu: {gpu}"
    )
    ceilings = harness.measure_ceilings(args.device, args.quick)
    print("ceilings measured now: " + ", ".join(f"{k} {v:.2f}" for k, v in ceilings.items()))

    suites = SUITES if args.suite == "all" else {args.suite: SUITES[args.suite]}
    rows: list[dict] = []
    for name, make_cases in suites.items():
        for case in make_cases(args.device, dtype, args.quick, not args.no_compile):
            if args.filter and args.filter not in case.op and args.filter not in case.label:
                continue
            print(f"[{name}] {case.op}: {case.label} ...", flush=True)
            case_rows = harness.run_case(case, args.device, ceilings, args.quick)
            rows.extend(case_rows)
            # Each case's rows and the JSON so far as soon as they exist: a run stopped
            # by a time limit (a lent GPU's lease) keeps what it measured.
            print("\n".join(harness.markdown_table(case_rows).splitlines()[2:]), flush=True)
            if args.out:
                _write_json(args, argv, dtype, env, ceilings, rows, [])

    summaries = [
        f"[{name}] {line}" for name in suites if name in SUMMARIES for line in SUMMARIES[name](rows)
    ]
    if args.out:
        _write_json(args, argv, dtype, env, ceilings, rows, summaries)
    failures = [r for r in rows if r.get("parity_ok") is False]
    print()
    print(harness.markdown_table(rows))
    if summaries:
        print("\n" + "\n".join(summaries))
    if failures:
        for r in failures:
            print(
                f"PARITY FAILURE: {r['op']} {r['case']} {r['provider']}: max-rel "
                f"{r['max_rel']:.3e} > {r['parity_tol']:.1e}",
                file=sys.stderr,
            )
        return 1
    return 0


def _write_json(args, argv, dtype, env, ceilings, rows, summaries) -> None:
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(
                    [
                        "python",
                        "benchmarks/run.py",
                        *(argv if argv is not None else sys.argv[1:]),
                    ]
                ),
                "device": args.device,
                "dtype": str(dtype).removeprefix("torch."),
                "environment": env,
                "ceilings": ceilings,
                "results": rows,
                "summaries": summaries,
            },
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
