"""``python -m lddm_fast.train.bundle``: half-precision weights, the sha256 table it
prints, and the held-out reports it records in meta.json."""

import json

import pytest
import torch

from lddm_fast.data.digest import sha256_file
from lddm_fast.models import build_models, preset, save_pretrained
from lddm_fast.models.checkpoint import from_pretrained
from lddm_fast.train.bundle import main


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    save_pretrained(tmp_path / "ckpt", build_models(preset("tiny")), meta={"steps": 3})
    return tmp_path / "ckpt"


def test_bundle_records_every_report_and_prints_the_hashes(
    checkpoint, phantom_root, tmp_path, capsys
):
    reports = []
    for seed in (0, 4):
        path = tmp_path / f"heldout{seed}.json"
        path.write_text(json.dumps({"sampler": {"seed": seed}, "bars": {"x": seed == 0}}))
        reports.append(path)
    out = tmp_path / "bundled"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--dataset", str(phantom_root)]
    argv += ["--data-command", "lddm-fast phantom ..."]
    assert main(argv + [a for r in reports for a in ("--report", str(r))]) == 0
    hashes = json.loads(capsys.readouterr().out)
    assert hashes == {p.name: sha256_file(p) for p in out.iterdir()}
    loaded = from_pretrained(out)  # checks the recorded sha256 of every file
    assert loaded.meta["stored_dtype"] == "float16" and loaded.meta["steps"] == 3
    assert loaded.meta["heldout_report"]["sampler"]["seed"] == 0
    assert [r["sampler"]["seed"] for r in loaded.meta["heldout_reports_other_seeds"]] == [4]
    assert loaded.meta["dataset"]["command"] == "lddm-fast phantom ..."
    original = from_pretrained(checkpoint)
    for name, p in original.denoiser.state_dict().items():
        want = p.half().float() if p.is_floating_point() else p
        assert torch.equal(loaded.denoiser.state_dict()[name], want), name

    # One report: no list of other seeds.
    assert (
        main(
            ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "one")]
            + ["--report", str(reports[0])]
        )
        == 0
    )
    assert "heldout_reports_other_seeds" not in from_pretrained(tmp_path / "one").meta


@pytest.mark.parametrize("content", [None, "{not json"])
def test_a_bad_report_is_named(checkpoint, tmp_path, capsys, content):
    report = tmp_path / "report.json"
    if content is not None:
        report.write_text(content)
    argv = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "b"), "--report", str(report)]
    with pytest.raises(SystemExit):
        main(argv)
    assert f"--report {report}" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
