"""Unit checks of the trainer pieces: schedule, batch order and sharding, state files."""

import math

import pytest
import torch

from lddm_fast.train.data import StepBatches, open_splits
from lddm_fast.train.loop import TrainSettings, learning_rate
from lddm_fast.train.state import (
    latest_state,
    load_state,
    optimizer_from_flat,
    optimizer_to_flat,
    save_state,
)


def test_learning_rate_warms_up_then_follows_the_cosine_to_its_floor():
    s = TrainSettings(steps=110, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [learning_rate(k, s) for k in range(110)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    mid = 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 50 / 100))
    assert lrs[60] == pytest.approx(mid)
    assert learning_rate(110, s) == pytest.approx(1e-4)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="stop_at"):
        TrainSettings(steps=10, stop_at=11)
    with pytest.raises(ValueError, match="batch_size"):
        TrainSettings(batch_size=0)


def test_rank_shares_concatenate_to_the_global_batch_and_epochs_cover_every_item():
    one = StepBatches(7, 4, seed=3, start_step=0, stop_step=7)
    ranks = [
        StepBatches(7, 4, seed=3, start_step=0, stop_step=7, rank=r, world_size=2) for r in range(2)
    ]
    for step in range(7):
        assert ranks[0].batch(step) + ranks[1].batch(step) == one.batch(step)
    stream = [i for step in range(7) for i, _ in one.batch(step)]  # 28 = 4 epochs of 7
    for epoch in range(4):
        assert sorted(stream[7 * epoch : 7 * epoch + 7]) == list(range(7))
    seeds = [s for step in range(7) for _, s in one.batch(step)]
    assert len(set(seeds)) == len(seeds)
    resumed = StepBatches(7, 4, seed=3, start_step=5, stop_step=7)
    assert list(resumed) == [one.batch(5), one.batch(6)]
    with pytest.raises(ValueError, match="divisible"):
        StepBatches(7, 3, seed=0, start_step=0, stop_step=1, world_size=2)


def test_optimizer_state_round_trips_through_tensors_and_json():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(3, 2)
    opt.step()
    tensors, info = optimizer_to_flat(opt.state_dict())
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    fresh.load_state_dict(optimizer_from_flat(tensors, info))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(a["state"][0][key], b["state"][0][key])


def test_saves_are_atomic_folders_and_only_the_newest_are_kept(tmp_path):
    (tmp_path / "state" / ".step-00000009.abc.tmp").mkdir(parents=True)  # a killed save
    for step in (1, 2, 3):
        save_state(tmp_path, step, {"w": torch.full((2,), float(step))}, {"x": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert names == ["step-00000002", "step-00000003"]
    tensors, info = load_state(latest_state(tmp_path))
    assert info == {"x": 3, "step": 3} and tensors["w"].tolist() == [3.0, 3.0]


def test_open_splits_reads_the_phantom_lists_and_splits_a_plain_folder(phantom_root, tmp_path):
    splits = open_splits(phantom_root, frames=5, size=32, channels=1)
    assert splits.layout == "phantom"
    assert (len(splits.train), len(splits.val)) == (6, 2)
    assert splits.train.train and not splits.val.train
    clip, label = splits.val[0]
    assert clip.shape == (1, 5, 32, 32) and label in (0, 1)
    plain = open_splits(
        phantom_root / "busv" / "rawframes" / "benign", frames=5, size=32, channels=1
    )
    assert plain.layout == "folder"
    assert len(plain.train) + len(plain.val) == 4 and len(plain.val) >= 1
    with pytest.raises(ValueError, match="not found"):
        open_splits(tmp_path / "missing", frames=5, size=32, channels=1)


def test_latent_cache_is_the_same_whatever_the_loader_workers(phantom_root, tmp_path, monkeypatch):
    from lddm_fast.models.autoencoder import VideoAutoencoder
    from lddm_fast.models.config import preset
    from lddm_fast.train.diffusion import LatentCache

    config = preset("tiny")
    splits = open_splits(phantom_root, frames=config.num_frames + 1, size=config.size, channels=1)
    torch.manual_seed(0)
    autoencoder = VideoAutoencoder(config.autoencoder).eval()

    def build(folder, workers=0):
        return LatentCache.build(
            tmp_path / folder,
            {"test": 1},
            autoencoder,
            splits.train,
            variants=2,
            seed=3,
            device=torch.device("cpu"),
            batch_size=3,
            workers=workers,
            progress=False,
        )

    caches = [build(f"w{workers}", workers) for workers in (0, 2)]
    assert len(caches[0]) == 2 * len(splits.train)
    for name, tensor in caches[0].tensors.items():
        assert torch.equal(tensor, caches[1].tensors[name]), name
    # Two variants of one video are different augmentations, not copies.
    n = len(splits.train)
    assert not torch.equal(caches[0].tensors["x0"][0], caches[0].tensors["x0"][n])
    monkeypatch.setattr(LatentCache, "SHARD", 4)
    small = build("sharded")
    assert len(list((tmp_path / "sharded").glob("shard-*.safetensors"))) > 1
    assert torch.equal(small.tensors["mean"], caches[0].tensors["mean"])
