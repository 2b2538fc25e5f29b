"""The ``lddm-fast`` command (also ``python -m lddm_fast``).

Each subcommand lives in its own module, which defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up.
Modules are imported when the parser is built, so they keep heavy imports inside
``run``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "info": "lddm_fast.info",
    "phantom": "lddm_fast.data.cli",
    "eval": "lddm_fast.eval.cli",
    "synthesize": "lddm_fast.synth.cli",
    "gallery": "lddm_fast.synth.gallery_command",
    "train-ae": "lddm_fast.train.ae_command",
    "train-diffusion": "lddm_fast.train.diffusion_command",
    "study": "lddm_fast.eval.study.command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lddm-fast",
        description="Fast ultrasound image-to-video synthesis with latent dynamic diffusion.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """:func:`build_parser`, once per process. Building every subcommand's options
    takes ~3 ms of CPU, which each in-process call of :func:`main` (benchmark suites,
    scripts) paid again; parsing keeps no state in the parser (no mutable defaults)."""
    return build_parser()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # What was typed, for the records that name the command (a trainer's meta.json).
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
