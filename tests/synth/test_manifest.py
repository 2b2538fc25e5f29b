"""The books of an output folder: append-only logs, the index, checks, merge, sweep."""

import json
import os

import pytest

from lddm_fast.synth.manifest import (
    FAILED,
    MANIFEST,
    JsonlLog,
    ManifestIndex,
    RunConfigMismatch,
    check_run_config,
    merge_logs,
    output_digest,
    part_path,
    sweep_leftovers,
    verify_record,
    write_run_config,
)

SETTINGS = {"model": "m", "steps": 2, "seed": 0, "fps": 10.0}


def _record(out, rel, k, finished, data=b"video", seed=1):
    """A manifest record for one npz output holding ``data``."""
    rel_out = f"{os.path.splitext(rel)[0]}_k{k}.npz"
    path = out / rel_out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    size, digest = output_digest(str(path))
    return {
        "input": rel,
        "k": k,
        "seed": seed,
        "settings": SETTINGS,
        "outputs": [{"format": "npz", "path": rel_out, "size": size, "sha256": digest}],
        "finished": finished,
    }


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_log_cuts_an_incomplete_last_line_before_appending(tmp_path):
    path = tmp_path / MANIFEST
    path.write_bytes(b'{"input": "a.png", "k": 0}\n{"input": "b.png", "k"')  # crash mid-line
    log = JsonlLog(str(path))
    assert log.repaired
    log.append({"input": "c.png", "k": 0})
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["input"] for line in lines] == ["a.png", "c.png"]


@pytest.fixture
def fsyncs(monkeypatch):
    """The fsyncs the books make, as ``(kind, path)``: "file" or "dir"."""
    import lddm_fast.data.atomic as atomic_module
    import lddm_fast.synth.manifest as manifest_module

    calls = []
    real = os.fsync

    def counting(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(("dir" if os.path.isdir(path) else "file", os.path.basename(path)))
        real(fd)

    monkeypatch.setattr(manifest_module.os, "fsync", counting)
    assert atomic_module.os is manifest_module.os  # one patch covers fsync_dir too
    return calls


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_log_syncs_each_line_by_default_and_groups_them_with_an_interval(tmp_path, fsyncs):
    path = tmp_path / MANIFEST
    log = JsonlLog(str(path))
    assert fsyncs == []  # the new file's folder entry is flushed with its first line
    log.append({"input": "a.png", "k": 0})
    log.append({"input": "b.png", "k": 0})
    assert fsyncs == [("file", MANIFEST), ("dir", tmp_path.name), ("file", MANIFEST)]
    log.close()
    assert len(fsyncs) == 3  # nothing left to flush

    fsyncs.clear()
    grouped = JsonlLog(str(path), sync_interval=3600.0)
    for name in ("c.png", "d.png", "e.png"):
        grouped.append({"input": name, "k": 0})
    # Every line is in the file (a crashed process loses none), none fsynced yet.
    assert [r["input"] for r in _read_jsonl(path)] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert fsyncs == []
    grouped.close()
    assert fsyncs == [("file", MANIFEST)]  # one for the three, at close

    fsyncs.clear()
    JsonlLog(str(tmp_path / FAILED)).close()  # an empty new log costs no fsync
    assert fsyncs == []


def test_index_keeps_the_newest_record_and_ignores_broken_lines(tmp_path):
    old = _record(tmp_path, "a.png", 0, finished=1.0, data=b"old")
    new = _record(tmp_path, "a.png", 0, finished=2.0, data=b"new")
    other = _record(tmp_path, "b.png", 0, finished=1.0)
    with open(tmp_path / MANIFEST, "w") as f:
        f.write(json.dumps(new) + "\nnot json\n" + json.dumps(other) + "\n")
    with open(part_path(str(tmp_path), MANIFEST, 1), "w") as f:
        # An older record in a part (a stale rank file) must not win; nor a line
        # without its newline, which a crash cut off.
        f.write(json.dumps(old) + "\n" + json.dumps(_record(tmp_path, "c.png", 0, 3.0)))
    index = ManifestIndex(str(tmp_path))
    try:
        assert sorted(index.keys()) == [("a.png", 0), ("b.png", 0)]
        assert index.get("a.png", 0) == new and index.get("a.png", 1) is None
        assert index.unreadable == 1
    finally:
        index.close()
    only_b = ManifestIndex(str(tmp_path), keep=lambda rel: rel == "b.png")
    assert only_b.keys() == [("b.png", 0)]
    only_b.close()


def test_verify_record_checks_settings_and_file_size_and_hash(tmp_path):
    record = _record(tmp_path, "a.png", 0, finished=1.0, data=b"0123456789")
    check = dict(settings=SETTINGS, formats=["npz"], seed=1)
    assert verify_record(record, str(tmp_path), **check) is None
    assert "settings" in verify_record(record, str(tmp_path), **{**check, "seed": 2})
    assert "formats" in verify_record(record, str(tmp_path), **{**check, "formats": ["mp4"]})
    changed = {**check, "settings": {**SETTINGS, "steps": 3}}
    assert "settings" in verify_record(record, str(tmp_path), **changed)
    (tmp_path / "a_k0.npz").write_bytes(b"0123456780")  # same size, other bytes
    assert "differs" in verify_record(record, str(tmp_path), **check)
    (tmp_path / "a_k0.npz").unlink()
    assert "missing" in verify_record(record, str(tmp_path), **check)


def test_folder_digest_covers_names_and_bytes(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "000000.png").write_bytes(b"ab")
    (tmp_path / "v" / "000001.png").write_bytes(b"cde")
    size, digest = output_digest(str(tmp_path / "v"))
    assert size == 5
    (tmp_path / "v" / "000001.png").write_bytes(b"cdf")
    assert output_digest(str(tmp_path / "v"))[1] != digest


def test_run_config_mismatch_names_every_changed_argument(tmp_path):
    config = {"steps": 25, "sampler": "ddim", "format": ["mp4"]}
    assert check_run_config(str(tmp_path), config) is True  # new folder
    write_run_config(str(tmp_path), config)
    assert check_run_config(str(tmp_path), config) is False
    with pytest.raises(RunConfigMismatch) as info:
        check_run_config(str(tmp_path), {**config, "steps": 10, "format": ["gif"]})
    assert info.value.differences == [("format", ["mp4"], ["gif"]), ("steps", 25, 10)]
    assert "steps: was 25, now 10" in str(info.value)


def test_merge_sorts_dedupes_drops_done_failures_and_removes_parts(tmp_path):
    out = str(tmp_path)
    b = _record(tmp_path, "b.png", 0, finished=1.0)
    a0 = _record(tmp_path, "a.png", 0, finished=1.0)
    a1 = _record(tmp_path, "a.png", 1, finished=2.0)
    with open(os.path.join(out, MANIFEST), "w") as f:
        f.write(json.dumps(b) + "\n")
    with open(part_path(out, MANIFEST, 0), "w") as f:
        f.write(json.dumps(a1) + "\n" + json.dumps(b) + "\n")
    with open(part_path(out, MANIFEST, 1), "w") as f:
        f.write(json.dumps(a0) + "\n")
    failures = [
        {"input": "a.png", "k": 1, "reason": "NaN", "time": 0.5},  # since redone: dropped
        {"input": "c.png", "k": None, "reason": "corrupt", "time": 1.0},
        {"input": "c.png", "k": None, "reason": "still corrupt", "time": 2.0},
        {"input": "b.png", "k": None, "reason": "was bad", "time": 0.1},  # done now (N=1)
    ]
    with open(part_path(out, FAILED, 1), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in failures))
    assert merge_logs(out, videos_per_image=1) == (3, 1)
    lines = _read_jsonl(os.path.join(out, MANIFEST))
    assert [(r["input"], r["k"]) for r in lines] == [("a.png", 0), ("a.png", 1), ("b.png", 0)]
    failed = _read_jsonl(os.path.join(out, FAILED))
    assert [(r["input"], r["reason"]) for r in failed] == [("c.png", "still corrupt")]
    assert sorted(os.listdir(out)) == ["a_k0.npz", "a_k1.npz", "b_k0.npz", FAILED, MANIFEST]


def test_merge_leaves_an_empty_failure_log_without_parts_alone(tmp_path):
    # A clean single-process run: failed.jsonl is empty and has no parts, so the
    # merge skips its atomic rewrite (and the two fsyncs); with a part it merges.
    out = str(tmp_path)
    path = os.path.join(out, FAILED)
    JsonlLog(path).close()
    inode = os.stat(path).st_ino
    assert merge_logs(out, videos_per_image=1) == (0, 0)
    assert os.stat(path).st_ino == inode and os.path.getsize(path) == 0
    with open(part_path(out, FAILED, 0), "w") as f:
        f.write(json.dumps({"input": "c.png", "k": None, "reason": "corrupt"}) + "\n")
    assert merge_logs(out, videos_per_image=1) == (0, 1)
    assert [r["input"] for r in _read_jsonl(path)] == ["c.png"]
    assert not os.path.exists(part_path(out, FAILED, 0))


def test_merge_keeps_a_single_manifest_that_is_already_merged(tmp_path):
    # A single-process run whose writers finished in input order: the manifest is
    # already what the merge writes, so it is left as it is (no copy, no fsyncs).
    out = str(tmp_path)
    path = os.path.join(out, MANIFEST)
    records = [
        _record(tmp_path, rel, k, finished=1.0)
        for rel, k in [("a.png", 0), ("a.png", 1), ("b.png", 0)]
    ]
    text = "".join(json.dumps(r) + "\n" for r in records)
    with open(path, "w") as f:
        f.write(text)
    inode = os.stat(path).st_ino
    assert merge_logs(out, videos_per_image=2) == (3, 0)
    assert os.stat(path).st_ino == inode


@pytest.mark.parametrize(
    ("order", "tail"),
    [
        ([1, 0, 2], ""),  # writers finished out of order
        ([0, 1, 1, 2], ""),  # a video redone: two lines for it
        ([0, 1, 2], '{"input": "c.png"'),  # cut off by a crash
        ([0, 1, 2], "not json\n"),
    ],
)
def test_merge_rewrites_a_single_manifest_that_is_not_merged(tmp_path, order, tail):
    out = str(tmp_path)
    path = os.path.join(out, MANIFEST)
    records = [
        _record(tmp_path, rel, k, finished=1.0)
        for rel, k in [("a.png", 0), ("a.png", 1), ("b.png", 0)]
    ]
    with open(path, "w") as f:
        f.write("".join(json.dumps(records[i]) + "\n" for i in order) + tail)
    inode = os.stat(path).st_ino
    assert merge_logs(out, videos_per_image=2) == (3, 0)
    assert os.stat(path).st_ino != inode
    assert _read_jsonl(path) == records


def test_sweep_removes_only_atomic_write_temporaries(tmp_path):
    keep = ["v_k0.mp4", ".hidden.mp4", "notes.tmp", ".a.b.tmp"]
    gone = [".v_k0.abcd_123.tmp.mp4", ".manifest.x1y2z3w4.tmp.jsonl"]
    for name in keep + gone:
        (tmp_path / "c" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "c" / name).write_bytes(b"x")
    (tmp_path / "c" / ".v_k0.qwertyui.tmp").mkdir()  # a PNG folder being written
    (tmp_path / "c" / ".v_k0.qwertyui.tmp" / "000000.png").write_bytes(b"x")
    assert sweep_leftovers(str(tmp_path)) == 3
    assert sorted(os.listdir(tmp_path / "c")) == sorted(keep)
