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


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Files written through atomic_file (videos, manifests, reports) get the mode any
    new file of the user gets (0666 less the umask), not the temporary's 0600."""
    import os

    from lddm_fast.data.atomic import atomic_file

    umask = os.umask(0)
    os.umask(umask)
    with atomic_file(tmp_path / "out.txt") as tmp:
        with open(tmp, "w") as f:
            f.write("x")
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~umask
