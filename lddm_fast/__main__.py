"""`python -m lddm_fast ...` is the same as the `lddm-fast` command."""

from lddm_fast.cli import main

raise SystemExit(main())
