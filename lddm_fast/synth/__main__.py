"""``python -m lddm_fast.synth``: ``lddm-fast synthesize`` for torchrun, e.g.
``torchrun --nproc-per-node 8 -m lddm_fast.synth --input DIR --out DIR``."""

import sys

from lddm_fast.synth.cli import main

if __name__ == "__main__":
    sys.exit(main())
