"""The static gallery of a synthesis run: its cards, escaping of input names, contact
sheets, and (with headless Chromium installed by `make browser`) the page itself:
cards render, the class and status filters and paging work, a video plays."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from synth_helpers import make_corpus, synth
from synth_standin import StandInSampler

from lddm_fast.cli import main
from lddm_fast.synth.gallery import write_gallery
from lddm_fast.synth.seeds import input_video_seed

HOSTILE = 'benign/<b id="x">bold</b> & "q".png'


@pytest.fixture
def run(tmp_path):
    """A run with finished videos in three classes, an unlabeled one, three bad inputs
    and one non-finite video, written as mp4 + gif."""
    images = make_corpus(
        tmp_path / "images",
        good=("benign/b1.png", "benign/b2.png", "malignant/m1.png", "normal/n1.png", HOSTILE),
    )
    make_corpus(tmp_path / "images", bad=False, good=("extra/x1.png",))
    out = tmp_path / "out"
    nan = input_video_seed(0, "malignant/m1.png", 1)
    argv = ["--videos-per-image", "2", "--format", "mp4,gif"]
    status, _ = synth(images, out, *argv, sampler=StandInSampler(nan_seeds={nan}))
    assert status == 0
    return out


def test_cards_cover_every_video_and_failure(run):
    info = write_gallery(str(run), page_size=4, sheet_rows=3)
    data = (run / "gallery" / "data.js").read_text()
    payload = json.loads(data.removeprefix("window.LDDM_GALLERY = ").rstrip().rstrip(";"))
    cards = payload["cards"]
    statuses = [c["status"] for c in cards]
    assert statuses.count("finished") == info.videos == 6 * 2 - 1
    assert statuses.count("nonfinite") == 1 and statuses.count("failed") == 3
    assert info.failures == 4 and payload["pageSize"] == 4
    failed = {c["input"]: c["reason"] for c in cards if c["status"] == "failed"}
    assert set(failed) == {"malignant/corrupt.png", "normal/empty.png", "benign/small.png"}
    finished = [c for c in cards if c["status"] == "finished"]
    assert all(c["mp4"].endswith(".mp4") and c["gif"].endswith(".gif") for c in finished)
    for card in finished:  # every URL resolves to a file, relative to index.html
        for url in (card["mp4"], card["gif"], card["image"]):
            path = os.path.join(run, *[_unquote(p) for p in url.split("/")])
            assert os.path.isfile(path), url
    assert set(info.contact_sheets) == {"benign", "malignant", "normal", "unlabeled"}
    for rel in info.contact_sheets.values():
        assert (run / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "index.html").is_file() and (run / "gallery" / "gallery.js").is_file()


def test_input_names_are_inert_in_the_page(run):
    write_gallery(str(run))
    data = (run / "gallery" / "data.js").read_text()
    # Inside the script the name is a JSON string, and no "</" can close a script tag.
    assert '<b id="x">' not in data and "</" not in data
    payload = json.loads(data.removeprefix("window.LDDM_GALLERY = ").rstrip().rstrip(";"))
    names = {c["input"] for c in payload["cards"]}
    assert HOSTILE in names  # the name survives, as data
    script = (run / "gallery" / "gallery.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script


def test_gallery_command_and_synthesize_flag(run, tmp_path, capsys):
    assert main(["gallery", str(run), "--page-size", "5"]) == 0
    assert "gallery of 11 videos and 4 failures" in capsys.readouterr().out
    assert main(["gallery", str(tmp_path)]) == 2
    assert "no manifest.jsonl" in capsys.readouterr().err
    images = make_corpus(tmp_path / "more", bad=False, good=("benign/a.png",))
    status, _ = synth(images, tmp_path / "flagged", "--gallery")
    assert status == 0 and (tmp_path / "flagged" / "index.html").is_file()


def _unquote(part):
    from urllib.parse import unquote

    return unquote(part)


BROWSER = next(
    (
        b
        for b in (os.environ.get("LDDM_BROWSER"), "chromium", "chromium-browser")
        if b and shutil.which(b)
    ),
    None,
)


def _dom(browser, page, tmp_path):
    """The DOM of ``page`` after its scripts ran (headless; a fresh profile per call)."""
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--autoplay-policy=no-user-gesture-required",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _body(dom):
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', re.search(r"<body[^>]*>", dom).group(0)))


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium: install it with `make browser`")
def test_the_page_in_headless_chromium(run, tmp_path):
    write_gallery(str(run), page_size=4)
    index = (run / "index.html").as_uri()

    dom = _dom(BROWSER, index, tmp_path)
    body = _body(dom)
    assert (body["page"], body["shown"]) == ("1", "4")
    assert "page 1 of 4 (15 cards)" in dom

    dom = _dom(BROWSER, index + "#class=benign&status=finished&page=1&selftest=1", tmp_path)
    body = _body(dom)
    # benign: b1, b2 and the hostile name, two videos each.
    assert body["shown"] == "4" and body["played"] == "yes"
    assert "page 1 of 2 (6 cards)" in dom
    assert '<b id="x">' not in dom and "&lt;b id=" in dom  # shown as text, not markup
    assert dom.count('data-cls="benign"') == 4 and 'data-cls="malignant"' not in dom

    dom = _dom(BROWSER, index + "#class=all&status=failed&page=1", tmp_path)
    assert _body(dom)["shown"] == "3" and "cannot read image header" in dom
    dom = _dom(BROWSER, index + "#class=all&status=nonfinite&page=1", tmp_path)
    assert _body(dom)["shown"] == "1" and "NaN" in dom
    dom = _dom(BROWSER, index + "#class=all&status=all&page=4", tmp_path)
    assert (_body(dom)["page"], _body(dom)["shown"]) == ("4", "3")

    # What a user sees (docs/gallery.png is made the same way: make gallery-screenshot).
    shot = tmp_path / "gallery.png"
    subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'shot-profile'}",
            "--window-size=1000,700",
            "--virtual-time-budget=3000",
            f"--screenshot={shot}",
            index,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (700, 1000) and pixels.std() > 20  # drawn, not a blank page
