"""Runs in other processes: SIGKILL in the middle and rerun; shards merged like one run;
the real pipeline (``--preset tiny --steps 2``), alone and under 2-rank torchrun."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from synth_helpers import all_verify, failed, leftovers, make_corpus, manifest, summary, synth
from synth_standin import StandInSampler

from lddm_fast.synth import cli
from lddm_fast.synth.engine import SynthEngine, load_image
from lddm_fast.synth.inputs import InputSet
from lddm_fast.synth.manifest import merge_logs

HERE = os.path.dirname(os.path.abspath(__file__))
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
MANY = tuple(f"{c}/{c[0]}{i}.png" for c in ("benign", "malignant") for i in range(6))


def _env(**extra):
    # One OpenMP thread per process: this shared box has 2 cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _books(out):
    """What must match between runs: every video's outputs, and the failed inputs."""
    videos = {(r["input"], r["k"]): r["outputs"] for r in manifest(out)}
    return videos, sorted((f["input"], f["k"]) for f in failed(out))


def test_sigkill_mid_run_then_rerun_makes_every_video_once(tmp_path):
    images = make_corpus(tmp_path / "in", good=MANY)
    out = tmp_path / "out"
    args = ["--input", str(images), "--out", str(out), "--format", "npz,png"]
    args += ["--videos-per-image", "2", "--batch-size", "2", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "synth_standin.py"), *args],
        env=_env(STANDIN_DELAY_S="0.25"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "manifest.jsonl").exists() and len(manifest(out)) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = manifest(out)
    assert 4 <= len(killed) < 24 and all_verify(out, killed, formats=("npz", "png"))

    status, sampler = synth(images, out, *args[4:], "--format", "npz,png")
    assert status == 0
    records = manifest(out)
    keys = [(r["input"], r["k"]) for r in records]
    assert len(keys) == len(set(keys)) == 24
    assert all_verify(out, records, formats=("npz", "png")) and not leftovers(out)
    assert summary(out)["skipped"] >= len(killed)
    assert sum(sampler.batches) == 24 - summary(out)["skipped"]


def test_shards_merged_equal_one_process(tmp_path):
    corpus = make_corpus(tmp_path / "in", good=MANY)
    whole = tmp_path / "whole"
    assert synth(corpus, whole, "--videos-per-image", "2", "--quiet")[0] == 0
    sharded = tmp_path / "sharded"
    settings = manifest(whole)[0]["settings"]
    common = dict(settings={k: v for k, v in settings.items() if k not in ("seed", "fps")})
    done = []
    for rank in (0, 1):  # what two torchrun ranks do, one after the other
        engine = SynthEngine(
            StandInSampler(),
            sharded,
            **common,
            formats=["npz"],
            videos_per_image=2,
            rank=rank,
            world_size=2,
            progress=False,
        )
        done.append(engine.run(InputSet(corpus)).done)
    assert all(done) and sum(done) == 24  # both ranks had work, disjoint
    assert {"manifest.rank0.jsonl", "manifest.rank1.jsonl"} <= set(os.listdir(sharded))
    merge_logs(str(sharded), 2)
    assert _books(sharded) == _books(whole)
    assert not any(".rank" in name for name in os.listdir(sharded))


def test_tiny_preset_end_to_end(tmp_path):
    # The tiny model is 32 px: the bad corpus's 8 px image is still too small.
    images = make_corpus(
        tmp_path / "in", good=("benign/b1.png", "normal/n1.png"), height=40, width=48
    )
    out = tmp_path / "out"
    argv = ["--input", str(images), "--out", str(out), "--preset", "tiny", "--steps", "2"]
    argv += ["--format", "mp4,npz", "--videos-per-image", "2", "--batch-size", "3", "--quiet"]
    assert cli.main(argv) == 0
    records = manifest(out)
    assert [(r["input"], r["k"]) for r in records] == [
        ("benign/b1.png", 0),
        ("benign/b1.png", 1),
        ("normal/n1.png", 0),
        ("normal/n1.png", 1),
    ]
    assert all_verify(out, records, formats=("mp4", "npz"))
    assert records[0]["settings"]["model"] == "preset:tiny"
    for r in records:
        frames = np.load(out / r["outputs"][1]["path"])["frames"]
        assert frames.shape == (5, 32, 32)  # x0 + the tiny preset's 4 frames
        image = load_image(str(images / r["input"]), 32, 1)[0].numpy()
        assert np.array_equal(frames[0], image)  # frame 0 is the input
    k0, k1 = (np.load(out / r["outputs"][1]["path"])["frames"] for r in records[:2])
    assert not np.array_equal(k0[1:], k1[1:])  # each k has its own seed
    assert len(failed(out)) == 3
    assert cli.main(argv) == 0 and summary(out)["skipped"] == 4


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")
def test_two_rank_torchrun_equals_one_process(tmp_path):
    images = make_corpus(tmp_path / "in", good=MANY[:6], height=36, width=40)
    args = ["--input", str(images), "--preset", "tiny", "--steps", "2", "--format", "npz"]
    # Batch size 1 on both sides: on CPU the network's float rounding depends on the
    # batch it runs in, so only equal batches give bit-equal videos.
    args += ["--videos-per-image", "2", "--batch-size", "1", "--quiet"]
    two = tmp_path / "two"
    proc = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "lddm_fast.synth"]
        + [*args, "--out", str(two)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 done, 0 skipped, 6 failed (3 bad inputs)" in proc.stdout
    one = tmp_path / "one"
    assert cli.main([*args, "--out", str(one)]) == 0
    assert _books(two) == _books(one)
    ranks = summary(two)["ranks"]
    assert len(ranks) == 2 and all(r["inputs"] > 0 for r in ranks)
    assert not any(".rank" in name for name in os.listdir(two))
