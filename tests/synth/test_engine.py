"""The synthesis engine end to end with a stand-in sampler: layout, books, resuming,
bad inputs, NaN videos, output errors, refused reruns, streaming, determinism."""

import errno
import json

import numpy as np
import pytest
from synth_helpers import (
    BAD,
    GOOD,
    all_verify,
    failed,
    leftovers,
    make_corpus,
    manifest,
    summary,
    synth,
    write_png,
)
from synth_standin import SIZE, StandInSampler

from lddm_fast.synth.engine import SynthEngine, load_image, output_rel
from lddm_fast.synth.inputs import InputItem
from lddm_fast.synth.seeds import input_video_seed


def test_run_writes_layout_books_and_summary(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    status, sampler = synth(corpus, out, "--videos-per-image", "2", "--batch-size", "3")
    assert status == 0
    records = manifest(out)
    keys = [(r["input"], r["k"]) for r in records]
    assert keys == sorted((rel, k) for rel in GOOD for k in range(2))
    for r in records:
        assert r["seed"] == input_video_seed(0, r["input"], r["k"])
        assert r["class"] == (r["input"].split("/")[0] if "extra" not in r["input"] else None)
        assert [o["path"] for o in r["outputs"]] == [output_rel(r["input"], r["k"], "npz")]
        assert r["settings"]["model"] == "standin:v1" and r["settings"]["steps"] == 25
        frames = np.load(out / r["outputs"][0]["path"])["frames"]
        image = load_image(str(corpus / r["input"]), SIZE, 1)
        assert np.array_equal(frames, sampler.video(image, r["seed"])[0].numpy())
    assert all_verify(out, records)
    reasons = {f["input"]: f["reason"] for f in failed(out)}
    assert set(reasons) == set(BAD) and all(f["k"] is None for f in failed(out))
    for rel, reason in BAD.items():
        assert reason in reasons[rel]
    s = summary(out)
    assert (s["inputs"], s["done"], s["skipped"], s["failed"], s["bad_inputs"]) == (8, 10, 0, 6, 3)
    assert 0 < s["busy"] <= 1 and s["videos_per_s"] > 0
    assert sorted(sampler.batches) == [1, 3, 3, 3]
    assert not leftovers(out)
    captured = capsys.readouterr()
    assert "10 done, 0 skipped, 6 failed (3 bad inputs)" in captured.out
    assert "sampler busy" in captured.out
    assert "video/s" in captured.err  # the progress bar


def test_every_format_is_written_and_readable(tmp_path):
    from lddm_fast.data.video_io import read_video

    images = make_corpus(tmp_path / "in", bad=False, good=("benign/b1.png",))
    out = tmp_path / "out"
    status, sampler = synth(images, out, "--format", "mp4,gif,npz,png", "--quiet")
    assert status == 0
    (record,) = manifest(out)
    assert [o["path"] for o in record["outputs"]] == [
        "benign/b1_k0.mp4",
        "benign/b1_k0.gif",
        "benign/b1_k0.npz",
        "benign/b1_k0",  # PNG sequence folder
    ]
    expected = sampler.video(load_image(str(images / "benign/b1.png"), SIZE, 1), record["seed"])
    for output in record["outputs"]:
        frames = read_video(out / output["path"]).frames
        assert frames.shape == (4, SIZE, SIZE)
        error = np.abs(frames.astype(int) - expected[0].numpy()).mean()
        assert error < (20 if output["format"] == "mp4" else 1e-9), output  # mp4 is lossy
    assert all_verify(out, [record], formats=("mp4", "gif", "npz", "png"))


def test_rerun_skips_intact_videos_and_redoes_damaged_ones(corpus, tmp_path):
    out = tmp_path / "out"
    assert synth(corpus, out, "--videos-per-image", "2", "--quiet")[0] == 0
    first = {(r["input"], r["k"]): r for r in manifest(out)}

    status, sampler = synth(corpus, out, "--videos-per-image", "2", "--quiet")
    assert status == 0 and sampler.batches == []  # nothing sampled again
    s = summary(out)
    assert (s["done"], s["skipped"], s["failed"]) == (0, 10, 6)

    damaged = out / "benign" / "b1_k0.npz"
    data = damaged.read_bytes()
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, other bytes
    (out / "malignant" / "m1_k1.npz").unlink()
    status, sampler = synth(corpus, out, "--videos-per-image", "2", "--quiet")
    assert status == 0 and sum(sampler.batches) == 2
    s = summary(out)
    assert (s["done"], s["skipped"], s["redone"]) == (2, 8, 2)
    records = manifest(out)
    assert len(records) == 10 and all_verify(out, records)
    redone = {(r["input"], r["k"]): r for r in records}
    assert redone[("benign/b1.png", 0)]["outputs"] == first[("benign/b1.png", 0)]["outputs"]


def test_videos_do_not_depend_on_batch_size(corpus, tmp_path):
    hashes = []
    for batch in ("1", "4"):
        out = tmp_path / f"out{batch}"
        status, sampler = synth(corpus, out, "--videos-per-image", "3", "--batch-size", batch)
        assert status == 0 and max(sampler.batches) == int(batch)
        hashes.append({(r["input"], r["k"]): r["outputs"] for r in manifest(out)})
    assert hashes[0] == hashes[1] and len(hashes[0]) == 15


def test_nan_video_is_not_written_and_recorded_as_failed(corpus, tmp_path):
    out = tmp_path / "out"
    bad_seed = input_video_seed(0, "benign/b2.png", 1)
    status, _ = synth(
        corpus, out, "--videos-per-image", "2", sampler=StandInSampler(nan_seeds={bad_seed})
    )
    assert status == 0
    assert not (out / "benign" / "b2_k1.npz").exists()
    assert ("benign/b2.png", 1) not in {(r["input"], r["k"]) for r in manifest(out)}
    (nan,) = [f for f in failed(out) if f["k"] is not None]
    assert (nan["input"], nan["k"], nan["stage"]) == ("benign/b2.png", 1, "sample")
    assert "NaN" in nan["reason"]
    assert summary(out)["failed"] == 3 * 2 + 1

    status, sampler = synth(corpus, out, "--videos-per-image", "2")  # the NaN gone: made now
    assert status == 0 and sum(sampler.batches) == 1
    assert all(f["k"] is None for f in failed(out))  # the NaN failure is cleared


def test_disk_full_stops_cleanly_and_a_rerun_finishes(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real = np.savez_compressed
    calls = []

    def fill_disk_after_three(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "savez_compressed", fill_disk_after_three)
    status, _ = synth(corpus, out, "--videos-per-image", "2")
    assert status == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun the same command" in err
    records = manifest(out)
    assert len(records) == 3 and all_verify(out, records)
    assert not leftovers(out)

    monkeypatch.setattr(np, "savez_compressed", real)
    status, sampler = synth(corpus, out, "--videos-per-image", "2")
    assert status == 0 and sum(sampler.batches) == 7
    records = manifest(out)
    assert len({(r["input"], r["k"]) for r in records}) == len(records) == 10
    assert all_verify(out, records) and not leftovers(out)


def test_unwritable_output_stops_with_a_clear_message(corpus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert synth(corpus, blocker, "--quiet")[0] == 3
    assert "cannot write to the output folder" in capsys.readouterr().err

    out = tmp_path / "out"
    out.mkdir()
    (out / "malignant").write_text("blocks the malignant/ output folder")
    status, _ = synth(corpus, out, "--quiet")
    assert status == 3
    assert "malignant" in capsys.readouterr().err
    records = manifest(out)
    assert all_verify(out, records) and not leftovers(out)


def test_sampler_error_writes_what_was_sampled_then_exits_1(corpus, tmp_path, capsys):
    class FailsThirdBatch(StandInSampler):
        def __call__(self, images, seeds):
            if len(self.batches) == 2:
                raise RuntimeError("CUDA out of memory (simulated)")
            return super().__call__(images, seeds)

    out = tmp_path / "out"
    status, _ = synth(corpus, out, "--batch-size", "2", "--quiet", sampler=FailsThirdBatch())
    assert status == 1
    assert "sampling failed" in capsys.readouterr().err
    records = manifest(out)
    assert len(records) == 4 and all_verify(out, records)  # both sampled batches kept
    assert not leftovers(out)


def test_exit_status_when_nothing_can_be_done(tmp_path, capsys):
    images = tmp_path / "in"
    (images / "benign").mkdir(parents=True)
    assert synth(images, tmp_path / "out0", "--quiet")[0] == 2
    assert "no input images" in capsys.readouterr().err
    (images / "benign" / "empty.png").write_bytes(b"")
    assert synth(images, tmp_path / "out1", "--quiet")[0] == 1
    assert summary(tmp_path / "out1")["failed"] == 1


def test_changed_arguments_are_refused_unless_forced(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert synth(corpus, out, "--quiet")[0] == 0
    capsys.readouterr()
    status, sampler = synth(corpus, out, "--quiet", "--steps", "3", "--seed", "1")
    assert status == 2 and sampler.batches == []
    err = capsys.readouterr().err
    assert "--steps: was 25, now 3" in err and "--seed: was 0, now 1" in err
    assert "--force" in err
    # Batch size, threads and device are not part of the run config.
    assert synth(corpus, out, "--quiet", "--batch-size", "2", "--writers", "1")[0] == 0

    status, sampler = synth(corpus, out, "--quiet", "--steps", "3", "--force")
    assert status == 0 and sum(sampler.batches) == 5  # other settings: made again
    assert {r["settings"]["steps"] for r in manifest(out)} == {3}
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["arguments"]["steps"] == 3


def test_colliding_and_repeated_inputs(tmp_path):
    images = tmp_path / "in"
    write_png(images / "a.png", seed=1)
    write_png(images / "a.jpg", seed=2)
    write_png(images / "b.png", seed=3)
    listing = images / "list.txt"
    listing.write_text("a.png\na.jpg\nb.png\nb.png\n")
    out = tmp_path / "out"
    status, sampler = synth(listing, out, "--quiet")
    assert status == 0 and sum(sampler.batches) == 2
    assert [r["input"] for r in manifest(out)] == ["a.png", "b.png"]
    (collision,) = failed(out)
    assert collision["input"] == "a.jpg" and "overwrite those of a.png" in collision["reason"]
    assert summary(out)["duplicates"] == 1


class _CountingInputs:
    """Many inputs (one image file under many names); records how far each pass got."""

    def __init__(self, path, n):
        self.path, self.n, self.yielded = path, n, []

    def __iter__(self):
        self.yielded.append(0)
        for i in range(self.n):
            self.yielded[-1] += 1
            yield InputItem.make(self.path, f"img{i}.png")


def test_input_is_streamed_not_materialised(tmp_path):
    image = write_png(tmp_path / "one.png")
    inputs = _CountingInputs(str(image), 200)
    seen_at_call = []

    class Watching(StandInSampler):
        def __call__(self, images, seeds):
            seen_at_call.append(inputs.yielded[-1])
            return super().__call__(images, seeds)

    engine = SynthEngine(
        Watching(delay_s=0.02),
        tmp_path / "out",
        settings={"model": "standin"},
        formats=["npz"],
        batch_size=2,
        workers=2,
        writers=1,
        progress=False,
    )
    result = engine.run(inputs)
    assert result.done == 200 and inputs.yielded[0] == 200  # the counting pass
    # When batch i is sampled, 2 (i + 1) inputs reached the sampler; beyond those the
    # pipeline holds at most: pending (batch) + image queue (2 x batch) + one per
    # worker + work queue (2 x workers) + the one the feed thread is putting.
    in_flight = 2 + 2 * 2 + 2 + 2 * 2 + 1
    assert all(seen <= 2 * (i + 1) + in_flight for i, seen in enumerate(seen_at_call))
    assert len(seen_at_call) == 100


def test_engine_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="formats"):
        SynthEngine(StandInSampler(), tmp_path, settings={}, formats=["avi"])
    with pytest.raises(ValueError, match="batch_size"):
        SynthEngine(StandInSampler(), tmp_path, settings={}, batch_size=0)
