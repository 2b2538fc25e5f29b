"""Where a denoiser's samples leave the latents' distribution, by noise level.

    python scripts/x0_estimates.py --data data/phantom64 --checkpoint runs/ldm/checkpoint

On the posterior means z0 of every (256 / n)-th clip of the held-out set B
(``lddm_fast.eval.heldout``), scaled as the denoiser sees them:

- per timestep t, the error of the denoiser's estimate of z0 from z_t = alpha_t z0 +
  sigma_t eps: one DDIM step from t to the clean end;
- DDIM (eta 0, the pipeline's trailing steps over timesteps 0..t) started from z_t at
  t = 999, 600, 400, 200: the spread of the result, its roughness (std of the spatial
  high-pass z - 3x3 mean, and of the frame-to-frame difference) next to z0's, and its
  distance to z0.

Both run the library's own sampler and prediction adapter (eps or v, as the config
says). A run started at t = 999 is a sample from (almost) pure noise; if it is rougher
or more spread than z0 while the runs started lower are not, the error comes from the
highest noise levels. One fixed noise draw (seed 0); 32 clips take about a minute on a
CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from heldout_probe import probe_inputs, probe_parser

from lddm_fast.diffusion.denoisers import prediction_adapter
from lddm_fast.diffusion.samplers import sample_ddim
from lddm_fast.diffusion.schedules import sampling_schedule


def roughness(z: torch.Tensor) -> str:
    """z ``[B, c, T, h, w]`` -> its std, spatial high-pass std and frame-difference std."""
    b, c, t, h, w = z.shape
    frames = z.transpose(1, 2).reshape(b * t, c, h, w)
    high = frames - F.avg_pool2d(frames, 3, 1, 1, count_include_pad=False)
    step = z[:, :, 1:] - z[:, :, :-1]
    return f"std {z.std():.3f}  high-pass {high.std():.3f}  frame diff {step.std():.3f}"


def main() -> None:
    parser = probe_parser(__doc__, 32)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps from t = 999")
    args = parser.parse_args()
    set_b, pipe = probe_inputs(args)
    config, abar = pipe.config, pipe.alphas_cumprod
    ae, denoiser = pipe.models.autoencoder, pipe.models.denoiser
    last = config.num_train_timesteps - 1
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        video = torch.stack([it["video"].float() for it in set_b]) / 127.5 - 1.0
        z0 = ae.encode(video[:, :, 1:]).latent_dist.mode() * config.latent_scale
        cond = denoiser.encode_condition(video[:, :, 0])

        def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return denoiser(x, t, cond=cond).sample

        model = prediction_adapter(config.prediction_type, net, abar)

        def ddim_from(t: int, steps: int) -> torch.Tensor:
            """z0 noised to timestep t (a fresh draw), then DDIM to the clean end."""
            noise = torch.randn(z0.shape, generator=generator)
            z_t = (abar[t].sqrt() * z0 + (1 - abar[t]).sqrt() * noise).float()
            return sample_ddim(model, z_t, sampling_schedule(abar[: t + 1], steps), disable=True)

        print(f"set B, {len(set_b)} clips, {args.checkpoint or 'bundled'}: ", end="")
        print(f"{config.prediction_type}-prediction, {config.beta_schedule} schedule")
        print(f"posterior z0:      {roughness(z0)}")
        for t in (20, 100, 200, 400, 600, 800, last):
            z0_hat = ddim_from(t, 1)
            print(
                f"t {t:4d} (sigma/alpha {float((1 / abar[t] - 1).sqrt()):7.2f}): "
                f"z0 estimate error {(z0_hat - z0).std():.3f}, estimate std {z0_hat.std():.3f}"
            )
        for start in (last, 600, 400, 200):
            steps = max(2, round(args.steps * start / last))
            z = ddim_from(start, steps)
            print(
                f"DDIM from t {start:4d} ({steps:2d} steps): {roughness(z)}  "
                f"distance to z0 {(z - z0).std():.3f}"
            )


if __name__ == "__main__":
    main()
