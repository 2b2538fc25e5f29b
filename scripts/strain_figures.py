"""Where a stiff lesion's strain gets lost: the lesion strain ratio of set B's clips,
and of x0 moved by displacement fields, true and decoded.

    python scripts/strain_figures.py --data data/phantom64 --checkpoint runs/ldm_speckle

For the clips of the held-out set B (``lddm_fast.eval.heldout``), the median lesion
strain ratio per class (block matching, as bar 2 measures it) of:

- ``real``: the clips themselves;
- ``true``: x0 warped by the phantom's true motion (``lddm_fast.data.phantom.true_flow``);
- ``true_32``, ``true_16``: the same motion average-pooled to 32 x 32 or 16 x 16 and
  upsampled as the decoder's displacement head is (what a head at that level can draw);
- ``decoded``: x0 warped by the checkpoint's displacement field (z from the posterior
  mean), and ``rebuilt``: its rebuilt frames (the decoder's mean);

and, straight from the fields (axial derivative of the axial displacement, no block
matching), the ratio of the true and the decoded motion, with the decoded field's mean
error inside the lesion (pixels).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lddm_fast.data.phantom import PhantomConfig, true_flow
from lddm_fast.eval.heldout import CLASS_NAMES, heldout_sets
from lddm_fast.eval.motion import strain_ratio
from lddm_fast.models.autoencoder import warp_image
from lddm_fast.models.checkpoint import from_pretrained


def field_ratio(flow: np.ndarray, lesion: np.ndarray, ring: int = 6) -> float:
    """Lesion-to-ring ratio of the axial strain of ``flow [T, 2, H, W]`` (least squares
    over frames, as :func:`lddm_fast.eval.motion.strain_ratio`)."""
    strain = np.gradient(flow[:, 1], axis=1)
    around = ndimage.binary_dilation(lesion, iterations=ring) & ~lesion
    inside, outside = strain[:, lesion].mean(1), strain[:, around].mean(1)
    energy = float((outside * outside).sum())
    return float((inside * outside).sum()) / energy if energy > 1e-12 else math.nan


def with_x0(x0: torch.Tensor, frames: torch.Tensor, lesion: torch.Tensor) -> float:
    """Block-matching strain ratio of x0 ``[1, C, H, W]`` followed by ``frames [C, T, H, W]``."""
    return strain_ratio(torch.cat([x0[0][:, None], frames], dim=1), lesion)


def moved(x0: torch.Tensor, flow: torch.Tensor, lesion: torch.Tensor) -> float:
    """The same for x0 warped by ``flow [1, 2, T, H, W]``."""
    return with_x0(x0, warp_image(x0, flow)[0], lesion)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the phantom dataset root")
    parser.add_argument("--checkpoint", default=None, help="checkpoint dir (default: bundled)")
    parser.add_argument("--n", type=int, default=256, help="clips in set B (default 256)")
    args = parser.parse_args()
    meta = json.loads(open(f"{args.data}/dataset.json").read())
    config = PhantomConfig(**meta["config"])
    scenes = {it["path"]: (it["class"], it["seed"]) for it in meta["busv"]["items"]}
    _, set_b = heldout_sets(args.data, args.n)
    if args.checkpoint is None:
        from lddm_fast.models.bundled import bundled_checkpoint

        args.checkpoint = bundled_checkpoint()
    ae = from_pretrained(args.checkpoint).autoencoder.eval()
    names = ("real", "true", "true_32", "true_16", "decoded", "rebuilt")
    rows = {k: {c: [] for c in CLASS_NAMES} for k in (*names, "field_true", "field_decoded")}
    error = {c: [] for c in CLASS_NAMES}
    for item in set_b:
        video, lesion, label = item["video"].float(), item["mask"], item["label"]
        flow = torch.from_numpy(true_flow(*scenes[item["path"]], config))[1:]
        flow = flow.transpose(0, 1)[None]  # [1, 2, T, H, W]
        x0 = video[:, 0][None] / 127.5 - 1.0
        out = ae.decode(ae.encode((video[:, 1:] / 127.5 - 1.0)[None]).latent_dist.mode(), x0)
        values = {"real": strain_ratio(video, lesion), "true": moved(x0, flow, lesion)}
        for name, factor in (("true_32", 2), ("true_16", 4)):
            coarse = F.avg_pool3d(flow, (1, factor, factor))
            upsampled = F.interpolate(coarse, size=flow.shape[2:], mode="trilinear")
            values[name] = moved(x0, upsampled, lesion)
        values["decoded"] = moved(x0, out.flow, lesion)
        values["rebuilt"] = with_x0(x0, out.sample.float().clamp(-1, 1)[0], lesion)
        true_np, decoded_np = flow[0].transpose(0, 1).numpy(), out.flow[0].transpose(0, 1).numpy()
        values["field_true"] = field_ratio(true_np, lesion.numpy())
        values["field_decoded"] = field_ratio(decoded_np, lesion.numpy())
        for name, value in values.items():
            rows[name][label].append(value)
        error[label].append(float(np.abs(decoded_np - true_np)[:, :, lesion.numpy()].mean()))
    print(f"median lesion strain ratio, set B ({args.n} clips), {args.checkpoint}")
    for name, by_class in rows.items():
        cells = "  ".join(f"{CLASS_NAMES[c]} {np.nanmedian(v):.3f}" for c, v in by_class.items())
        print(f"{name:14s} {cells}")
    cells = "  ".join(f"{CLASS_NAMES[c]} {np.mean(v):.3f}" for c, v in error.items())
    print(f"{'field error px':14s} {cells}  (decoded vs true, inside the lesion)")


if __name__ == "__main__":
    main()
