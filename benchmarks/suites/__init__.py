"""Benchmark suites: each module exposes ``cases(device, dtype, quick) -> list[Case]``."""
