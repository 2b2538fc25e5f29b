"""Training the warping decoder's displacement field on the phantom's true motion
(`train-ae --flow-weight`): the clips carry the flow the phantom simulated, the run
learns from it, and data that cannot give it is refused with the reason."""

import json
import shutil

import pytest
import torch
from fine_tune_helpers import config_file, fine_tune, train

from lddm_fast.data.errors import BadInputError
from lddm_fast.data.phantom import PhantomConfig, true_flow
from lddm_fast.models import preset
from lddm_fast.models.checkpoint import from_pretrained
from lddm_fast.train.data import PhantomFlowClips, collate, eval_view, model_splits
from lddm_fast.train.export import autoencoder_record


def test_clips_carry_the_flow_the_phantom_simulated(phantom_root):
    splits = model_splits(phantom_root, preset("tiny"))
    clips = PhantomFlowClips(eval_view(splits.train), phantom_root)
    manifest = json.loads((phantom_root / "dataset.json").read_text())
    config = PhantomConfig(**manifest["config"])
    items = {it["path"]: it for it in manifest["busv"]["items"]}
    batch = collate([clips[(i, 7)] for i in range(len(clips))])
    frames = preset("tiny").num_frames
    assert batch["flow"].shape == (len(clips), 2, frames, 32, 32)
    for k, record in enumerate(clips.clips.records):
        item = items[str(record.path).split("rawframes/")[1]]
        expected = torch.from_numpy(true_flow(item["class"], item["seed"], config))
        torch.testing.assert_close(batch["flow"][k], expected[1 : frames + 1].transpose(0, 1))
    assert batch["flow"].abs().amax() > 0.5  # the clips do move


def test_unusable_clips_are_refused_with_the_reason(phantom_root, tmp_path):
    splits = model_splits(phantom_root, preset("tiny"))
    with pytest.raises(BadInputError, match="unaugmented clips"):
        PhantomFlowClips(splits.train, phantom_root)  # cropped and flipped
    bigger = model_splits(
        phantom_root, preset("tiny").__class__.from_dict({**preset("tiny").to_dict(), "size": 16})
    )
    with pytest.raises(BadInputError, match="at the phantom's 32 px, not \\(16, 16\\)"):
        PhantomFlowClips(eval_view(bigger.train), phantom_root)
    copy = tmp_path / "copy"
    shutil.copytree(phantom_root, copy)
    (copy / "dataset.json").unlink()
    with pytest.raises(BadInputError, match="dataset.json: the phantom's dataset.json is needed"):
        PhantomFlowClips(eval_view(model_splits(copy, preset("tiny")).train), copy)


def test_fine_tune_on_the_true_flow_moves_a_fresh_head(phantom_root, tmp_path):
    _, after = fine_tune(
        phantom_root,
        tmp_path,
        config_file(tmp_path, warp=True),
        config_file(tmp_path, warp=True, warp_level=1),
        "--flow-weight",
        "0.5",
        "--steps",
        "3",
    )
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert after.config.autoencoder.flow_level == 1
    assert after.autoencoder.decoder.flow_head[-1].weight.abs().max() > 0
    assert after.meta["losses"]["true_flow_l1"] == 0.5
    logged = [json.loads(line) for line in (tuned / "log.jsonl").read_text().splitlines()]
    flows = [r["flow_l1"] for r in logged if "flow_l1" in r]
    assert len(flows) == 3 and all(f > 0 for f in flows)
    # The record a bundle keeps names the run the fine-tune started from.
    chain = autoencoder_record(tuned / "checkpoint", after)["init_chain"]
    assert [c["checkpoint"] for c in chain] == [str((base / "checkpoint").resolve())]
    assert chain[0]["command"].startswith("lddm-fast train-ae") and chain[0]["steps"] == 1
    assert (
        chain[0]["sha256"]
        == from_pretrained(base / "checkpoint").meta["sha256"]["autoencoder.safetensors"]
    )


def test_flow_weight_needs_a_warping_decoder_and_a_phantom(phantom_root, tmp_path):
    with pytest.raises(SystemExit, match="error: flow_weight needs a warping decoder"):
        train(phantom_root, tmp_path / "a", "--preset", "tiny", "--flow-weight", "1")
    copy = tmp_path / "copy"
    shutil.copytree(phantom_root, copy)
    (copy / "dataset.json").unlink()
    with pytest.raises(SystemExit, match="error: .*dataset.json.*needed for its motion"):
        train(
            copy,
            tmp_path / "b",
            "--config",
            config_file(tmp_path, warp=True),
            "--flow-weight",
            "1",
            "--steps",
            "1",
        )
