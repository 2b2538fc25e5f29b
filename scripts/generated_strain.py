"""A quick screen of bar 2's strain: generated against posterior motion, without imaging.

    python scripts/generated_strain.py --data data/phantom64 --checkpoint runs/ldm/checkpoint

For every (256 / n)-th clip of the held-out set B (``lddm_fast.eval.heldout``), z is
drawn by the checkpoint's denoiser from the clip's x0 (DDIM, 25 steps; video i's seed is
``video_seed(0, i)``, as ``pipe(images, seed=0)`` draws it) and taken from the posterior
mean of the clip itself; the median lesion strain ratio per class of x0 moved by the
decoded displacement field (block matching, as bar 2 measures it) and of the field
itself (``scripts/strain_figures.py``), and the spread of z per channel (in the
autoencoder's units). It skips the speckle model's imaging (about a second per clip on
a CPU for ``retrieved``), so 64 clips take about 3 minutes; its medians over 32 clips a
class are noisier than the report's 4 x 128, and read best next to another checkpoint's.
"""

from __future__ import annotations

import numpy as np
import torch
from heldout_probe import probe_inputs, probe_parser
from strain_figures import field_ratio, moved

from lddm_fast.diffusion.pipeline import PerSampleNoise, video_generators, video_seed
from lddm_fast.eval.heldout import CLASS_NAMES


def main() -> None:
    args = probe_parser(__doc__, 64).parse_args()
    set_b, pipe = probe_inputs(args)
    config = pipe.config
    ae, denoiser = pipe.models.autoencoder, pipe.models.denoiser
    rows = {k: {c: [] for c in CLASS_NAMES} for k in ("posterior", "generated")}
    fields = {k: {c: [] for c in CLASS_NAMES} for k in rows}
    z_all = {k: [] for k in rows}
    with torch.no_grad():
        for start in range(0, len(set_b), 16):
            items = set_b[start : start + 16]
            video = torch.stack([it["video"].float() for it in items]) / 127.5 - 1.0
            x0 = video[:, :, 0]  # [B, C, H, W]
            seeds = [video_seed(0, start + i) for i in range(len(items))]
            generators = video_generators(seeds, "cpu")
            c_z, _, h, w = config.latent_shape
            like = torch.empty((len(items), c_z, video.shape[2] - 1, h, w))
            like = like.contiguous(memory_format=torch.channels_last_3d)
            noise = PerSampleNoise(generators, like)
            z = pipe.denoise(
                noise.draw(),
                denoiser.encode_condition(x0),
                None,
                steps=25,
                sampler="ddim",
                guidance=1.0,
                eta=0.0,
                timestep_spacing="trailing",
                generators=generators,
                cuda_graph=False,
                progress=False,
            )
            latents = {
                "posterior": ae.encode(video[:, :, 1:]).latent_dist.mode(),
                "generated": z / config.latent_scale,
            }
            for name, latent in latents.items():
                z_all[name].append(latent.transpose(0, 1).flatten(1))
                flow = ae.decode(latent, x0).flow  # [B, 2, T, H, W]
                for i, it in enumerate(items):
                    label, lesion = it["label"], it["mask"]
                    rows[name][label].append(moved(x0[i : i + 1], flow[i : i + 1], lesion))
                    field = flow[i].transpose(0, 1).numpy()
                    fields[name][label].append(field_ratio(field, lesion.numpy()))
    print(f"set B, {len(set_b)} clips, {args.checkpoint or 'bundled'}")
    for name in rows:
        spread = torch.cat(z_all[name], dim=1).std(dim=1)
        cells = "  ".join(f"{CLASS_NAMES[c]} {np.nanmedian(v):.3f}" for c, v in rows[name].items())
        on_field = "  ".join(
            f"{CLASS_NAMES[c]} {np.nanmedian(v):.3f}" for c, v in fields[name].items()
        )
        print(f"{name:9s} x0 moved: {cells} | field: {on_field}")
        print(f"{'':9s} z std per channel: {[round(v, 3) for v in spread.tolist()]}")


if __name__ == "__main__":
    main()
