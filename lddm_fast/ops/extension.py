"""The ``cpp`` and ``cuda`` backends: thin wrappers over the ``torch.ops.lddm`` custom
ops of the compiled extension. Both call the same op names; the dispatcher picks the
CPU or CUDA kernel from the tensors' device."""

from __future__ import annotations

import torch

from lddm_fast import _ext

_CUDA_OPS = ("group_norm", "temporal_attention", "sampler_step")  # the CUDA kernels (csrc/cuda)


def cpp_status() -> str:
    return _ext.EXTENSION_STATUS


def cuda_status() -> str:
    if _ext.EXTENSION is None:
        return _ext.EXTENSION_STATUS
    if not _ext.CUDA_BUILD.startswith("built"):
        return f"CUDA kernels {_ext.CUDA_BUILD}"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    return "ok"


CUDA_MAX_FRAMES, CUDA_MAX_HEAD_DIM = 64, 128
# Opt-in shared memory per block: 227 KB on sm_90, 163 KB on sm_80/87, 99 KB on
# sm_86/89/120; a device whose properties do not say is taken to have the least.
_SMEM_FLOOR = 99 * 1024
_smem_optin: dict[int, int] = {}


def cuda_attention_smem_bytes(frames: int, head_dim: int, *, backward: bool = False) -> int:
    """Shared memory the CUDA attention needs per position: int64 offsets, fp32
    [T, head_dim] blocks and [T, T] blocks, rows and blocks padded to odd lengths (bank
    conflicts). The forward has four offsets (q, k, v, o), three row blocks (q, k, v)
    and the scores; the backward seven offsets, four row blocks (with the output
    gradient), the probabilities and their gradients. Mirrors bytes_per_position in
    csrc/cuda/temporal_attention.cu and temporal_attention_backward.cu, so the
    dispatcher can refuse what the launcher would."""
    rows, scores = (head_dim | 1) * frames | 1, (frames | 1) * frames | 1
    offsets, row_blocks, score_blocks = (7, 4, 2) if backward else (4, 3, 1)
    return 8 * offsets + 4 * (row_blocks * rows + score_blocks * scores)


def device_smem_optin(device: torch.device) -> int:
    """The most shared memory one block of ``device`` may opt in to, in bytes."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _smem_optin:
        props = torch.cuda.get_device_properties(index)
        _smem_optin[index] = int(getattr(props, "shared_memory_per_block_optin", _SMEM_FLOOR))
    return _smem_optin[index]


def cuda_limits(op: str, main: torch.Tensor, params: dict) -> str | None:
    """Why the CUDA kernels cannot take this shape, or None. A call autograd records
    also needs the backward's shared memory (more than the forward's)."""
    if op != "temporal_attention":
        return None
    frames, head_dim = main.shape[2], main.shape[1] // params.get("num_heads", 1)
    if frames > CUDA_MAX_FRAMES:
        return f"T={frames} exceeds its limit of {CUDA_MAX_FRAMES} frames"
    if head_dim > CUDA_MAX_HEAD_DIM:
        return f"head_dim={head_dim} exceeds its limit of {CUDA_MAX_HEAD_DIM}"
    backward = _training(main)
    need = cuda_attention_smem_bytes(frames, head_dim, backward=backward)
    limit = device_smem_optin(main.device)
    if need > limit:
        return (
            f"T={frames} with head_dim={head_dim} needs {need} bytes of shared memory per "
            f"position{' for the backward' if backward else ''}, more than this GPU's {limit}"
        )
    return None


def _training(*tensors) -> bool:
    """Whether autograd records this call: then the op that also returns what its
    backward needs (group statistics, logsumexps) runs instead of the inference one."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def group_norm(
    x, num_groups, weight=None, bias=None, eps=1e-5, *, scale=None, shift=None, activation=None
):
    args = (x, num_groups, weight, bias, float(eps), scale, shift, activation == "silu")
    if _training(x, weight, bias, scale, shift):
        return torch.ops.lddm.group_norm_stats(*args)[0]
    return torch.ops.lddm.group_norm(*args)


def temporal_attention(q, k, v, *, num_heads, scale=None):
    if scale is None:
        scale = (q.shape[1] // num_heads) ** -0.5
    if _training(q, k, v):
        return torch.ops.lddm.temporal_attention_lse(q, k, v, num_heads, float(scale))[0]
    return torch.ops.lddm.temporal_attention(q, k, v, num_heads, float(scale))


def sampler_step(x, eps, a, b, noise=None, c=None):
    return torch.ops.lddm.sampler_step(x, eps, a, b, noise, c)


CPP_OPS = {
    "group_norm": group_norm,
    "temporal_attention": temporal_attention,
    "sampler_step": sampler_step,
}
CUDA_OPS = {name: CPP_OPS[name] for name in _CUDA_OPS}


def vector_cpu_kernels() -> bool:
    """Whether the ops call a vector build of the CPU kernels (AVX2 or AVX-512; see
    ``lddm_fast._C.cpu_isa()``), decided once, at import."""
    if _ext.EXTENSION is None:
        return False
    try:
        return _ext.EXTENSION.cpu_isa() != "default"
    except RuntimeError:  # a bad LDDM_CPU_ISA: the ops will say so when called
        return False


# The ops whose CPU kernels have a backward (autograd kernels in csrc/autograd.cpp), and
# those a default training call takes. The attention backward of the vector builds
# (pixels in the lanes) runs at 2-5x eager autograd; the portable one (one position at
# a time) at 0.7-1.8x, slower than eager at most shapes (benchmarks/RESULTS.md).
CPP_BACKWARD_OPS = ("group_norm", "temporal_attention")
CPP_GRAD_DEFAULT_OPS = (
    ("group_norm", "temporal_attention") if vector_cpu_kernels() else ("group_norm",)
)

# The ops whose CUDA kernels have a backward (csrc/cuda/*_backward.cu), and those a
# default training call takes: none until a GPU run ranks the CUDA backwards against the
# Triton ones (the default training path on a GPU); backend="cuda" takes them.
CUDA_BACKWARD_OPS = ("group_norm", "temporal_attention")
CUDA_GRAD_DEFAULT_OPS: tuple[str, ...] = ()
