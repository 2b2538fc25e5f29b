"""FVD between phantom sets against N: independent sets, time-shuffled and frozen
controls (the second table of docs/RESULTS.md).

Embeds N phantom clips per set with the Kinetics-400 I3D (set A: seeds 1000+i, set B:
seeds 5000+i, benign/malignant alternating), A shuffled in time and A frozen (first
frame repeated), then prints FVD for N = 8, 16, ... up to the given N.

    python docs/scripts/fvd_vs_n.py 64
"""

import sys

import torch

from lddm_fast.data.phantom import PhantomConfig, simulate_clip
from lddm_fast.eval.fvd import RESIZE_TF_LEGACY, extract_features, frechet_from_features
from lddm_fast.eval.i3d_weights import I3DEmbedding, load_kinetics_i3d


def main(n: int) -> None:
    torch.set_num_threads(1)
    cfg = PhantomConfig(size=64, frames=16)
    labels = ("benign", "malignant")

    def clips(first_seed: int) -> list[torch.Tensor]:
        return [
            torch.from_numpy(simulate_clip(labels[i % 2], first_seed + i, cfg).frames)[None]
            for i in range(n)
        ]

    a, b = clips(1000), clips(5000)
    g = torch.Generator().manual_seed(0)
    shuffled = [c[:, torch.randperm(16, generator=g)] for c in a]
    frozen = [c[:, :1].expand(-1, 16, -1, -1).contiguous() for c in a]
    model, _ = load_kinetics_i3d()
    embed = I3DEmbedding(model, "logits")
    feats = {
        name: extract_features(embed, sets, convention=RESIZE_TF_LEGACY, batch_size=8)
        for name, sets in (("A", a), ("B", b), ("shuffled", shuffled), ("frozen", frozen))
    }
    print("| N | FVD(A, B) | FVD(A, A shuffled) | FVD(A, A frozen) |")
    print("|---|---|---|---|")
    k = 8
    while k <= n:
        row = [
            frechet_from_features(feats["A"][:k], feats[o][:k]).value
            for o in ("B", "shuffled", "frozen")
        ]
        print(f"| {k} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
        k *= 2


if __name__ == "__main__":
    main(int(sys.argv[1]))
