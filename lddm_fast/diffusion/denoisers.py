"""Adapters that turn a network into the sampler's ``model(x, t, **kw) -> eps``.

- :class:`EpsPrediction` / :class:`VPrediction`: a network predicting eps or v.
- :class:`ClassifierFreeGuidance`: ``eps_u + w (eps_c - eps_u)`` for a network
  conditioned through a ``cond=`` keyword, from one doubled batch; ``w = 1`` is one
  plain conditional call at the original batch size.

Every adapter uses device ops only (no host sync), so it can sit inside a captured
CUDA graph; a tensor guidance scale is read on the device at each call, so a replay
picks up a new scale copied into the same buffer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lddm_fast import ops

__all__ = ["ClassifierFreeGuidance", "EpsPrediction", "VPrediction", "prediction_adapter"]

Network = Callable[..., torch.Tensor]


def _coef_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class EpsPrediction:
    """A network that predicts eps already is a sampler model: ``net(x, t, **kw)``."""

    def __init__(self, net: Network) -> None:
        self.net = net

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """x: ``[B, ...]``; t: ``[B]`` int64 -> eps ``[B, ...]``."""
        return self.net(x, t, **kwargs)


class VPrediction:
    """A network predicting ``v = alpha_t eps - sigma_t x0``, returning
    ``eps = sigma_t x + alpha_t v`` through the fused :func:`lddm_fast.ops.sampler_step`.

    Args:
        net: ``net(x, t, **kw) -> v`` with v in x's shape and dtype.
        alphas_cumprod: ``[N]`` abar of the training timesteps, on the sampling device
            (gathered at t on the device, no host sync).
    """

    def __init__(self, net: Network, alphas_cumprod: torch.Tensor) -> None:
        self.net = net
        self.alpha = alphas_cumprod.double().sqrt()
        self.sigma = (1 - alphas_cumprod.double()).sqrt()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """x: ``[B, ...]``; t: ``[B]`` int64 -> eps ``[B, ...]``."""
        v = self.net(x, t, **kwargs)
        dtype = _coef_dtype(x)
        return ops.sampler_step(x, v, self.sigma[t].to(dtype), self.alpha[t].to(dtype))


def prediction_adapter(prediction_type: str, net: Network, alphas_cumprod: torch.Tensor):
    """:class:`EpsPrediction` for ``"eps"``, :class:`VPrediction` for ``"v"``."""
    if prediction_type == "eps":
        return EpsPrediction(net)
    if prediction_type == "v":
        return VPrediction(net, alphas_cumprod)
    raise ValueError(f"prediction_type must be 'eps' or 'v', got {prediction_type!r}")


class ClassifierFreeGuidance:
    """Classifier-free guidance over a network conditioned by ``cond=``.

    Args:
        net: ``net(x, t, cond=...) -> prediction`` (eps or v: guidance is linear, so
            it commutes with the v -> eps conversion).
        cond: ``[B, ...]`` the condition of each sample.
        uncond: ``[B, ...]`` the dropped ("null") condition; needed when guided.
        scale: w. A float 1.0 (or None) means no guidance: one call of ``net`` per step
            at batch B. Any other float, or a ``[B]`` float tensor on the device (a
            CUDA graph's static buffer), gives ``w eps_c + (1 - w) eps_u`` from one call
            at batch 2B.
    """

    def __init__(
        self,
        net: Network,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        scale: float | torch.Tensor | None = 1.0,
    ) -> None:
        self.net = net
        self.cond = cond
        self.guided = isinstance(scale, torch.Tensor) or (scale is not None and scale != 1.0)
        if not self.guided:
            return
        if uncond is None:
            raise ValueError("guidance needs the unconditional (dropped) condition uncond")
        if uncond.shape != cond.shape:
            raise ValueError(
                f"uncond has shape {tuple(uncond.shape)}, cond {tuple(cond.shape)}; they must match"
            )
        batch = cond.shape[0]
        if isinstance(scale, torch.Tensor):
            if scale.shape != (batch,):
                raise ValueError(f"scale must be a float or [B] = ({batch},), got {scale.shape}")
            self.scale = scale
        else:
            self.scale = torch.full((batch,), float(scale), device=cond.device)
        # Both halves in one forward: the batch-2B network call costs far less than
        # two batch-B calls at the small batches sampling runs at.
        self.both = torch.cat([cond, uncond])

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: ``[B, ...]``; t: ``[B]`` -> guided prediction ``[B, ...]``."""
        if not self.guided:
            return self.net(x, t, cond=self.cond)
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), cond=self.both)
        cond_out, uncond_out = out.chunk(2)
        dtype = _coef_dtype(cond_out)
        w = self.scale.to(dtype)
        return ops.sampler_step(cond_out, uncond_out, w, 1 - w)
