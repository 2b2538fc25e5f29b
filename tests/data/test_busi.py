"""Image dataset scans: BUSI layout, masks, plain folders, bad files."""

import os

import numpy as np
import pytest
from PIL import Image

from lddm_fast.data.busi import scan_images
from lddm_fast.data.errors import BadInputError


def _save(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _gray(height=40, width=50, value=100):
    return np.full((height, width), value, np.uint8)


def test_busi_layout_with_masks(tmp_path):
    _save(tmp_path / "benign" / "benign (1).png", _gray())
    _save(tmp_path / "benign" / "benign (1)_mask.png", _gray(value=255))
    _save(tmp_path / "benign" / "benign (1)_mask_1.png", _gray(value=255))
    _save(tmp_path / "benign" / "benign (10).png", _gray())
    _save(tmp_path / "benign" / "benign (2).png", _gray())
    _save(tmp_path / "malignant" / "malignant (1).png", np.dstack([_gray()] * 3))
    _save(tmp_path / "normal" / "normal (1).png", (_gray().astype(np.uint16) * 300))
    scan = scan_images(tmp_path)
    assert not scan.skipped
    names = [os.path.relpath(r.path, tmp_path) for r in scan.records]
    assert names == [
        "benign/benign (1).png",
        "benign/benign (2).png",
        "benign/benign (10).png",
        "malignant/malignant (1).png",
        "normal/normal (1).png",
    ]
    assert [r.label for r in scan.records] == [0, 0, 0, 1, 2]
    first = scan.records[0]
    assert [os.path.basename(m) for m in first.masks] == [
        "benign (1)_mask.png",
        "benign (1)_mask_1.png",
    ]
    assert (first.width, first.height) == (50, 40) and scan.records[1].masks == ()


def test_plain_folder_is_unlabeled_and_recursive(tmp_path):
    _save(tmp_path / "a.png", _gray())
    _save(tmp_path / "sub" / "b.jpg", _gray())
    (tmp_path / "notes.txt").write_text("not an image, not reported")
    scan = scan_images(tmp_path)
    assert sorted(os.path.relpath(r.path, tmp_path) for r in scan.records) == ["a.png", "sub/b.jpg"]
    assert {r.label for r in scan.records} == {-1} and not scan.skipped


def test_bad_images_are_skipped_with_reasons(tmp_path):
    _save(tmp_path / "benign" / "ok.png", _gray())
    _save(tmp_path / "benign" / "tiny.png", _gray(8, 50))
    (tmp_path / "benign" / "zero.png").write_bytes(b"")
    (tmp_path / "benign" / "junk.png").write_bytes(b"GIF89a" + bytes(40))
    (tmp_path / "benign" / "scan.docx").write_bytes(b"PK")
    noise = np.random.default_rng(0).integers(0, 256, (50, 80), dtype=np.uint8)
    cut = _save(tmp_path / "malignant" / "cut.png", noise)  # incompressible: 4 kB
    cut.write_bytes(cut.read_bytes()[:2000])
    (tmp_path / "normal").mkdir()
    _save(tmp_path / "cysts" / "c.png", _gray())
    scan = scan_images(tmp_path, min_side=16, verify=True)
    assert [os.path.basename(r.path) for r in scan.records] == ["ok.png"]
    reasons = {os.path.relpath(s.path, tmp_path): s.reason for s in scan.skipped}
    assert "too small: 50x8" in reasons["benign/tiny.png"]
    assert "empty file" in reasons["benign/zero.png"]
    assert "not a recognised image" in reasons["benign/junk.png"]
    assert "not an image file" in reasons["benign/scan.docx"]
    assert "cannot decode" in reasons["malignant/cut.png"]
    assert "empty folder" in reasons["normal"]
    assert "unknown label 'cysts'" in reasons["cysts"]
    assert len(reasons) == 7


def test_missing_and_empty_roots_raise(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        scan_images(tmp_path / "absent")
    with pytest.raises(BadInputError, match="no images found"):
        scan_images(tmp_path)
    (tmp_path / "benign").mkdir()
    (tmp_path / "benign" / "benign (1)_mask.png").write_bytes(b"masks alone are no images")
    with pytest.raises(BadInputError, match="no images found(.|\n)*empty folder"):
        scan_images(tmp_path)
