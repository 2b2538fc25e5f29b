"""Torch datasets and clip transforms: shapes, ranges, sampling, augmentation, workers."""

import numpy as np
import pytest
import torch
from PIL import Image

from lddm_fast.data.datasets import ClipDataset, ImageDataset
from lddm_fast.data.errors import BadInputError
from lddm_fast.data.transforms import ClipTransform, clip_indices, fit
from lddm_fast.data.video_io import write_video


def _video(n, height=40, width=40):
    # Frame k is filled with 5 * k: the sampled frame indices can be read back.
    return np.stack([np.full((height, width), 5 * k, np.uint8) for k in range(n)])


def _dataset_root(tmp_path, n_frames=30):
    write_video(tmp_path / "benign" / "a", _video(n_frames), fps=10)
    write_video(tmp_path / "malignant" / "b.npz", _video(n_frames), fps=10)
    write_video(tmp_path / "malignant" / "short", _video(5), fps=10)
    return tmp_path


def _frame_index(clip):
    # Inverse of _video's fill after the [-1, 1] scaling, read at the centre pixel
    # (crops and padding change the borders).
    return np.rint((clip[0, :, 16, 16].numpy() + 1) * 127.5 / 5).astype(int)


def test_clip_dataset_items(tmp_path):
    dataset = ClipDataset(_dataset_root(tmp_path), frames=5, stride=3, size=32)
    assert len(dataset) == 2  # the 5-frame video is shorter than the span of 13
    assert "short" in dataset.scan.skipped[0].path
    for index, label in ((0, 0), (1, 1)):
        clip, y = dataset[index]
        assert clip.shape == (1, 5, 32, 32) and clip.dtype == torch.float32
        assert clip.min() >= -1 and clip.max() <= 1 and y == label
        np.testing.assert_array_equal(_frame_index(clip), [0, 3, 6, 9, 12])


def test_training_clips_start_anywhere_with_the_stride(tmp_path):
    dataset = ClipDataset(_dataset_root(tmp_path), frames=4, stride=2, size=32, train=True)
    torch.manual_seed(0)
    starts = set()
    for _ in range(30):
        frames = _frame_index(dataset[0][0])
        assert (np.diff(frames) == 2).all()
        starts.add(frames[0])
    assert len(starts) > 5 and max(starts) <= 30 - 7


def test_training_crop_and_flip_are_the_same_for_every_frame():
    ramp = np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1))  # bright to the right
    frames = np.stack([ramp] * 6)
    transform = ClipTransform((32, 32), train=True)
    flipped = 0
    for seed in range(20):
        clip = transform(frames, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(clip[:, :1].expand_as(clip), clip)  # all frames identical
        row = clip[0, 0, 16]
        flipped += bool(row[0] > row[-1])
    assert 3 <= flipped <= 17  # flips happen about half of the time


def test_pad_keeps_the_whole_frame_and_crop_fills_it():
    wide = torch.full((1, 1, 20, 40), 255.0)
    padded = fit(wide, (32, 32), "pad")
    assert padded.shape == (1, 1, 32, 32)
    assert (padded[..., :8, :] == 0).all()
    assert torch.allclose(padded[..., 8:24, :], torch.tensor(255.0))
    assert (padded[..., 24:, :] == 0).all()
    cropped = fit(wide, (32, 32), "crop")
    assert cropped.shape == (1, 1, 32, 32) and (cropped == 255).all()
    clip = ClipTransform((32, 32), mode="pad")(np.full((2, 20, 40), 255, np.uint8))
    assert clip[0, 0, 0, 0] == -1 and clip[0, 0, 16, 16] == 1


def test_clip_indices_refuse_short_videos():
    np.testing.assert_array_equal(clip_indices(10, 4, 3, start=0), [0, 3, 6, 9])
    with pytest.raises(ValueError, match="shorter than a clip's span of 10"):
        clip_indices(9, 4, 3)


def test_image_dataset_items_and_rgb(tmp_path):
    for name in ("benign/x.png", "normal/y.png"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 64, 3), (200, 100, 50), np.uint8)).save(path)
    (tmp_path / "benign" / "x_mask.png").write_bytes(b"ignored")
    dataset = ImageDataset(tmp_path, size=32, channels=3)
    assert len(dataset) == 2
    image, label = dataset[1]
    assert image.shape == (3, 32, 32) and label == 2
    assert image[0, 16, 16] == pytest.approx(200 / 127.5 - 1, abs=1e-3)
    assert image[0, 0, 16] == -1  # padding rows of the 4:3 image
    gray, _ = ImageDataset(tmp_path, size=32)[0]
    assert gray.shape == (1, 32, 32)


def test_images_smaller_than_the_model_size_are_skipped(tmp_path):
    for name, side in (("big.png", 64), ("small.png", 20)):
        Image.fromarray(np.zeros((side, side), np.uint8)).save(tmp_path / name)
    dataset = ImageDataset(tmp_path, size=32)
    assert [r.path.endswith("big.png") for r in dataset.records] == [True]
    assert "too small" in dataset.scan.skipped[0].reason
    assert len(ImageDataset(tmp_path, size=32, min_side=1)) == 2
    with pytest.raises(BadInputError, match="no usable items"):
        ImageDataset(tmp_path, size=128)


def test_dataloader_workers_each_open_their_own_files(tmp_path):
    dataset = ClipDataset(_dataset_root(tmp_path), frames=6, size=32, train=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader) + list(loader)
    assert len(batches) == 2
    for clips, labels in batches:
        assert clips.shape == (2, 1, 6, 32, 32) and labels.tolist() == [0, 1]


def test_an_unreadable_frame_raises_or_is_substituted(tmp_path):
    root = _dataset_root(tmp_path)
    dataset = ClipDataset(root, frames=6, size=32)
    (root / "benign" / "a" / "000001.png").write_bytes(b"broken after the scan")
    with pytest.raises(BadInputError, match="000001.png"):
        dataset[0]
    tolerant = ClipDataset(root, frames=6, size=32, skip_bad=True)
    with pytest.warns(UserWarning, match="skipping unreadable item.*000001.png"):
        clip, label = tolerant[0]
    assert label == 1 and clip.shape == (1, 6, 32, 32)  # the next item instead
