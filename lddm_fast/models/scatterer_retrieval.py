"""x0's own scatterers, retrieved from its envelope (``speckle_model = "retrieved"``).

Why: measured on the phantom's held-out clips (docs/TRAINING.md, "What bounds bar 1"),
frames made of x0's own scatterers moved in plane are what both the video FVD and the
lesion strain (which tracks every frame against x0) accept; speckle drawn afresh
fails the strain, and speckle added in the log domain over a mean cannot get the FVD
below twice the real-vs-real floor even over the exact anatomy. x0 shows only its
scatterers' echo envelope, so they are retrieved as a posterior sample:

* prior: a complex Gaussian amplitude per lattice scatterer, variance x0's intensity
  blurred ``PRIOR_BLUR`` pixels where the scatterer sits, scaled to x0's mean intensity;
* Matheron's rule: with ``y`` the echo that has x0's envelope and the phases of the
  current amplitudes' echo, the amplitudes become ``prior + D A^H v``, where ``D`` is the
  prior's variance and ``(A D A^H + lambda) v = y - A prior`` is solved by conjugate
  gradients with a Jacobi preconditioner; pixels clipped to black or white constrain
  nothing. ``lambda`` falls from 0.3 to ``FLOOR`` (in units of the normal operator's
  mean response to a flat image) by 0.8 a round, over ``ROUNDS`` rounds; below that
  the solver stops converging on the PSF's weak lateral frequencies and the fit gets
  worse, not better.

Imaging here is at baseband (:class:`~lddm_fast.models.lattice_imaging.LatticeImager`
with ``baseband=True``): a fitted, coherent field keeps its power wherever the field
moves it.
"""

from __future__ import annotations

import torch

from lddm_fast.models.lattice_imaging import LatticeImager

__all__ = ["retrieve_amplitudes", "ROUNDS", "FLOOR", "CG_ITERATIONS"]

PRIOR_BLUR = 2.0
ROUNDS = 25
FLOOR = 0.002
CG_ITERATIONS = 60


def _conjugate_gradients(apply, rhs, precondition, iterations: int) -> torch.Tensor:
    """Preconditioned conjugate gradients for a Hermitian positive ``apply``, one system
    per image of ``rhs [B, H, W]``."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precondition * r
    p = z.clone()
    rz = (r.conj() * z).real.sum((-1, -2), keepdim=True)
    for _ in range(iterations):
        ap = apply(p)
        alpha = rz / (p.conj() * ap).real.sum((-1, -2), keepdim=True).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition * r
        rz_next = (r.conj() * z).real.sum((-1, -2), keepdim=True)
        p = z + (rz_next / rz.clamp_min(1e-30)) * p
        rz = rz_next
    return x


@torch.no_grad()
def retrieve_amplitudes(
    imager: LatticeImager,
    intensity: torch.Tensor,
    free: torch.Tensor,
    prior: torch.Tensor,
    variance: torch.Tensor,
    *,
    rounds: int = ROUNDS,
    floor: float = FLOOR,
    cg_iterations: int = CG_ITERATIONS,
) -> torch.Tensor:
    """Amplitudes ``[B, n]`` whose echo has the envelope ``sqrt(intensity)``.

    Args:
        imager: the scatterers' positions and the PSF.
        intensity: x0's echo intensity ``[B, H, W]`` (exp of its display level).
        free: bool ``[B, H, W]``, pixels that constrain nothing (clipped in x0).
        prior: the prior draw ``[B, n]`` complex; variance: its variance ``[B, n]``.
    """
    envelope = intensity.sqrt()
    mask = (~free).to(torch.complex64)
    var = variance.to(torch.complex64)

    def normal(v: torch.Tensor) -> torch.Tensor:
        return mask * imager.A(var * imager.AH(mask * v))

    # Per image, so a video depends on its own x0 and noise only, not on its batch.
    unit = normal(torch.ones_like(mask)).real.mean((-1, -2), keepdim=True)
    diagonal = imager.power(variance)
    diagonal = torch.where(free, diagonal.mean((-1, -2), keepdim=True), diagonal)
    prior_echo = imager.A(prior)
    amplitude = prior
    for i in range(rounds):
        lam = unit * max(0.3 * 0.8**i, floor)
        echo = imager.A(amplitude)
        target = envelope * echo / echo.abs().clamp_min(1e-12)
        v = _conjugate_gradients(
            lambda u, lam=lam: normal(u) + lam * u,
            mask * (target - prior_echo),
            1.0 / (diagonal + lam),
            cg_iterations,
        )
        amplitude = prior + var * imager.AH(mask * v)
    return amplitude
