"""``pytest benchmarks``: the harness, shape table and suites import as top-level
modules here, as ``benchmarks/run.py`` has them."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
