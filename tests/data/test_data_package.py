"""The package's lazy exports, and that building the CLI parser stays cheap."""

import subprocess
import sys

import lddm_fast.data


def test_every_exported_name_resolves():
    for name in lddm_fast.data.__all__:
        assert getattr(lddm_fast.data, name) is not None, name


def test_cli_module_imports_no_heavy_dependencies():
    code = (
        "import sys, lddm_fast.data.cli as c; "
        "print(sorted(m for m in ('scipy', 'av', 'PIL', 'pydicom') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
