"""Backend registry and selection for :mod:`lddm_fast.ops`.

Selection order for one call: the ``backend=`` argument, then :func:`use_backend`,
then the ``LDDM_BACKEND`` environment variable, then the default for the tensors'
device. A backend named by any of the first three must serve the call or raise
:class:`BackendError` saying why; only the default choice may fall back.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

ENV_VAR = "LDDM_BACKEND"


class BackendError(RuntimeError):
    """A backend was asked for by name and cannot run the call."""


@dataclass(frozen=True)
class Backend:
    """One implementation of the ops.

    ops: op name -> implementation. devices: device types it runs on. dtypes: input
    dtypes it accepts. status: ``"ok..."`` or why it is unusable on this machine.
    differentiable: whether autograd flows through it (training needs that): True for
        every op, or the names of the ops that have a backward.
    grad_default: the ops whose backward a default (not forced) call that needs grad
        may take, or None for every op with a backward; set from measurement, so a
        backward that loses to another (the reference's autograd, another backend's)
        or is not measured yet is there when asked for by name but is not the default.
    limits: optional (op, main tensor, params) -> why this shape is out of range or
        None, for kernels with size limits (params holds e.g. num_heads).
    """

    name: str
    ops: dict[str, Callable[..., torch.Tensor]]
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    status: Callable[[], str]
    differentiable: bool | tuple[str, ...] = False
    limits: Callable[[str, torch.Tensor, dict], str | None] | None = None
    grad_default: tuple[str, ...] | None = None

    def has_backward(self, op: str) -> bool:
        if isinstance(self.differentiable, bool):
            return self.differentiable
        return op in self.differentiable

    def refusal(
        self,
        op: str,
        device: str,
        dtype: torch.dtype,
        needs_grad: bool,
        main: torch.Tensor | None = None,
        params: dict | None = None,
        *,
        by_default: bool = False,
    ) -> str | None:
        """Why this backend cannot run ``op`` for these inputs, or None if it can;
        ``by_default``: for a call that did not ask for it by name (see grad_default)."""
        status = self.status()
        if not status.startswith("ok"):
            return status
        if op not in self.ops:
            return f"it has no {op} kernel"
        if device not in self.devices:
            return f"it runs on {'/'.join(self.devices)} tensors, not {device}"
        if dtype not in self.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"it supports {names}, not {str(dtype).removeprefix('torch.')}"
        if needs_grad and not self.has_backward(op):
            return f"it has no backward for {op}; use backend='reference' for training"
        if by_default and needs_grad and self.grad_default is not None:
            if op not in self.grad_default:
                return f"its {op} backward is not a default for training (grad_default)"
        if self.limits is not None and main is not None:
            return self.limits(op, main, params or {})
        return None


_REGISTRY: dict[str, Backend] = {}
# Default preference per device type, fastest first (see benchmarks/RESULTS.md).
_DEFAULT_ORDER: dict[str, list[str]] = {"cpu": [], "cuda": []}
# Per-op exceptions to it, where measurement ranked the backends differently per op.
_OP_ORDER: dict[tuple[str, str], list[str]] = {}
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("lddm_backend", default=None)
# use_backend() blocks open now, in any context. TorchDynamo cannot trace
# ContextVar.get (a graph break at every op call, then the recompile limit), but it
# can read this global and guard on it: while it is 0 no context holds a forced
# backend, so a traced call skips the ContextVar, and the guard recompiles the graph
# (reading the ContextVar, with a graph break) if it is called inside a block.
_open_blocks = 0


# The backends a default call may take, in the default order, by (op, device, dtype,
# needs_grad): what refusal() says without a tensor (status, devices, dtypes, backward)
# does not change while the registry does not, so a call asks only the shape limits.
# select() runs on every op call, where the Python around an op on small tensors costs
# more than the op (benchmarks/RESULTS.md).
_CANDIDATES: dict[tuple[str, str, torch.dtype, bool], tuple[Backend, ...]] = {}


def register(backend: Backend, default_for: dict[str, int] | None = None) -> None:
    """Add a backend; ``default_for`` maps device type -> rank in the default order."""
    _REGISTRY[backend.name] = backend
    for device, rank in (default_for or {}).items():
        order = _DEFAULT_ORDER.setdefault(device, [])
        order.insert(min(rank, len(order)), backend.name)
    _CANDIDATES.clear()


def unregister(name: str) -> None:
    """Remove a backend added by :func:`register` (and its place in every order)."""
    del _REGISTRY[name]
    for order in _DEFAULT_ORDER.values():
        if name in order:
            order.remove(name)
    _CANDIDATES.clear()


def backends() -> dict[str, Backend]:
    return dict(_REGISTRY)


def prefer(device: str, op: str, order: list[str]) -> None:
    """Rank backends for one op on one device type, fastest first; backends not named
    keep their device order after these."""
    _OP_ORDER[(device, op)] = list(order)
    _CANDIDATES.clear()


def _candidates(op: str, device: str, dtype: torch.dtype, needs_grad: bool) -> tuple[Backend, ...]:
    """The backends of the default order that serve these calls but for shape limits."""
    key = (op, device, dtype, needs_grad)
    found = _CANDIDATES.get(key)
    if found is None:
        found = _CANDIDATES[key] = tuple(
            backend
            for name in default_order(device, op)
            if (backend := _REGISTRY[name]).refusal(op, device, dtype, needs_grad, by_default=True)
            is None
        )
    return found


def default_order(device: str, op: str | None = None) -> list[str]:
    """Backend names a default call tries in turn, ``reference`` last."""
    first = _OP_ORDER.get((device, op), []) if op is not None else []
    rest = [name for name in _DEFAULT_ORDER.get(device, []) if name not in first]
    return [name for name in first if name in _REGISTRY] + rest + ["reference"]


def available_backends() -> dict[str, str]:
    """Backend name -> ``"ok"`` (possibly with a note) or why it is unusable here."""
    return {name: b.status() for name, b in _REGISTRY.items()}


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force one backend for every op called inside the block (None: back to default).

    >>> with lddm_fast.ops.use_backend("reference"):
    ...     y = lddm_fast.ops.group_norm(x, 32)

    Under torch.compile, a graph traced outside any block makes its choice while
    tracing and is traced again when called inside one; code traced inside a block has
    a graph break at each op (TorchDynamo cannot read the block's ContextVar). For a
    compiled model, force a backend with ``backend=`` or ``LDDM_BACKEND`` instead.
    """
    global _open_blocks
    if name is not None:
        _lookup(name)
    token = _forced.set(name)
    _open_blocks += 1
    try:
        yield
    finally:
        _open_blocks -= 1
        _forced.reset(token)


def _lookup(name: str) -> Backend:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise BackendError(f"unknown backend {name!r}; known backends: {known}") from None


# CPython's os.environ keeps the variables in a dict of encoded names: looking the name
# up there first spares the common call (LDDM_BACKEND unset) os.environ.get's raised and
# caught KeyErrors, ~3 us of a small op's call (benchmarks/RESULTS.md).
try:
    _ENV_NAMES, _ENV_KEY = os.environ._data, os.environ.encodekey(ENV_VAR)
except AttributeError:  # another os.environ: always ask it
    _ENV_NAMES = _ENV_KEY = None


def _env_backend() -> str:
    """LDDM_BACKEND's value, "" if unset; read at every call, so that setting it while
    running takes effect."""
    if _ENV_NAMES is not None and _ENV_KEY not in _ENV_NAMES:
        return ""
    return os.environ.get(ENV_VAR, "").strip()


def requested_backend() -> tuple[str | None, str]:
    """The backend forced by use_backend() or LDDM_BACKEND, and where it came from."""
    # Eager calls always read the ContextVar: a context copied inside a block (a
    # thread, an asyncio task) may outlive the block and still hold its backend.
    forced = None if torch.compiler.is_compiling() and _open_blocks == 0 else _forced.get()
    if forced is not None:
        return forced, "use_backend()"
    env = _env_backend()
    if env:
        return env, f"{ENV_VAR}={env}"
    return None, "default"


def select(
    op: str, backend: str | None, *tensors: torch.Tensor | None, params: dict | None = None
) -> Callable[..., torch.Tensor]:
    """The implementation of ``op`` to run for these tensors (the first is the main input;
    ``params`` are the op's non-tensor arguments that size limits depend on)."""
    main = tensors[0]
    device, dtype = main.device.type, main.dtype
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    source = "backend= argument"
    if backend is None:
        backend, source = requested_backend()
    if backend is not None:
        chosen = _lookup(backend)
        why = chosen.refusal(op, device, dtype, needs_grad, main, params)
        if why is not None:
            raise BackendError(
                f"backend {backend!r} (from {source}) cannot run lddm_fast.ops.{op} on a "
                f"{device} {str(dtype).removeprefix('torch.')} tensor: {why}"
            )
        return chosen.ops[op]
    for candidate in _candidates(op, device, dtype, needs_grad):
        if candidate.limits is None or candidate.limits(op, main, params or {}) is None:
            return candidate.ops[op]
    raise BackendError(f"no backend can run lddm_fast.ops.{op} on {device} {dtype}")


def default_choice(op: str, device: str, dtype: torch.dtype, needs_grad: bool = False) -> str:
    """Name of the backend a call would get by default: an inference call (for
    `lddm-fast info`), or with ``needs_grad`` a training call."""
    found = _candidates(op, device, dtype, needs_grad)
    return found[0].name if found else "none"
