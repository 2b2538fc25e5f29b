"""Loads the compiled extension ``lddm_fast._C`` at import and remembers why it failed.

Importing ``_C`` registers the ``torch.ops.lddm.*`` custom ops (static
``TORCH_LIBRARY`` initialisers in csrc/bindings.cpp). The package works without it:
only the ``cpp`` and ``cuda`` backends need it. Status is computed once, here, so the
dispatcher reads plain module globals (cheap, and traceable by torch.compile).
"""

from __future__ import annotations

from types import ModuleType

import torch  # noqa: F401  (libtorch must be loaded before the extension)


def _load() -> tuple[ModuleType | None, str]:
    try:
        from lddm_fast import _C
    except ImportError as exc:
        return None, f"extension not built: {exc}"
    # The fake (meta) implementations live in Python; register them with the ops.
    from lddm_fast.ops import _fake  # noqa: F401

    return _C, "ok"


EXTENSION, EXTENSION_STATUS = _load()
# How CMake built the CUDA part: "built for sm_80 sm_90a ..." or "not built: <why>".
CUDA_BUILD = EXTENSION.cuda_status if EXTENSION is not None else EXTENSION_STATUS
