"""The trainers as processes: SIGKILL at random moments then resume, a bad clip in the
data, and two torchrun processes (gloo) against one process with the same global batch."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from lddm_fast.cli import main
from lddm_fast.models.checkpoint import from_pretrained
from lddm_fast.train.state import STATE_DIR, latest_state, load_state

TINY = ["--preset", "tiny", "--workers", "0", "--quiet", "--warmup", "2", "--eval-clips", "2"]


def command(data, out, *extra):
    return [
        sys.executable,
        "-m",
        "lddm_fast",
        "train-ae",
        "--data",
        str(data),
        "--out",
        str(out),
        *TINY,
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_leaves_no_corrupt_file(phantom_root, tmp_path):
    run = tmp_path / "run"
    argv = command(
        phantom_root,
        run,
        "--steps",
        "25",
        "--checkpoint-every",
        "1",
        "--batch-size",
        "2",
        "--resume",
    )
    rng = random.Random()
    kills = 0
    for _ in range(3):
        before = latest_state(run)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while latest_state(run) == before and proc.poll() is None:
            assert time.monotonic() < deadline, "no save appeared"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        # Every save that exists under its real name is complete and readable.
        for save in (run / STATE_DIR).glob("step-*"):
            load_state(save)
    assert kills >= 1
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    tensors, info = load_state(latest_state(run))
    assert info["step"] == 25
    models = from_pretrained(run / "checkpoint")  # checks every sha256
    assert models.meta["steps"] == 25 and models.meta["finished"]
    leftovers = [p.name for p in (run / STATE_DIR).iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_sigterm_to_the_whole_process_group_saves_then_stops(phantom_root, tmp_path):
    """As Ctrl-C, `timeout` or a scheduler do: the signal reaches the loader workers
    too, and the run still finishes its step, saves and exits cleanly."""
    import signal

    run = tmp_path / "run"
    argv = command(phantom_root, run, "--steps", "400", "--checkpoint-every", "400")
    argv[argv.index("--workers") + 1] = "2"
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    log = run / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count('"loss"') >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    tensors, info = load_state(latest_state(run))
    assert 3 <= info["step"] < 400
    assert from_pretrained(run / "checkpoint").meta["steps"] == info["step"]


def test_a_bad_clip_is_named_in_the_log_and_training_goes_on(phantom_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    listed = (data / "busv" / "train_list.txt").read_text().split("\n")
    first, second = listed[0].split()[0], listed[1].split()[0]
    frame = data / "busv" / "rawframes" / first / "000002.png"
    frame.write_bytes(frame.read_bytes()[:60])  # header intact, pixel data cut off
    for name in ("000003.png", "000004.png", "000005.png"):  # 3 frames: too short a clip
        (data / "busv" / "rawframes" / second / name).unlink()
    run = tmp_path / "run"
    assert (
        main(
            [
                "train-ae",
                "--data",
                str(data),
                "--out",
                str(run),
                *TINY,
                "--steps",
                "2",
                "--batch-size",
                "6",
            ]
        )
        == 0
    )
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    skipped = [e for e in events if e.get("event") == "skipped_clip"]
    assert len(skipped) == 1
    assert skipped[0]["path"].endswith("000002.png") and skipped[0]["reason"]
    assert "skipped clip" in (run / "train.log").read_text()
    meta = from_pretrained(run / "checkpoint").meta
    assert meta["steps"] == 2
    assert meta["data"]["skipped_at_scan_count"] == 1
    at_scan = meta["data"]["skipped_at_scan"][0]
    assert at_scan["path"].endswith(second) and "frames" in at_scan["reason"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(phantom_root, tmp_path):
    common = ["--steps", "3", "--batch-size", "4", "--checkpoint-every", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            "-m",
            "lddm_fast",
            "train-ae",
            "--data",
            str(phantom_root),
            "--out",
            str(tmp_path / "ddp"),
            *TINY,
            *common,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert (
        main(
            [
                "train-ae",
                "--data",
                str(phantom_root),
                "--out",
                str(tmp_path / "one"),
                *TINY,
                *common,
            ]
        )
        == 0
    )

    def losses(run):
        lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        return [x["loss"] for x in lines if "loss" in x]

    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    start = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()][0]
    assert start["world_size"] == 2
    a, _ = load_state(latest_state(tmp_path / "ddp"))
    b, _ = load_state(latest_state(tmp_path / "one"))
    keys = [k for k in a if k.startswith("model.")]
    assert keys and keys == [k for k in b if k.startswith("model.")]
    for key in keys:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    meta = from_pretrained(tmp_path / "ddp" / "checkpoint").meta
    assert meta["world_size"] == 2 and meta["command"].startswith("torchrun --nproc-per-node=2")
